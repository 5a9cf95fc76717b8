"""Canonical music data: tables, validation, loaders and the synthetic catalogue."""

from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables
