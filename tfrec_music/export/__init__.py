"""Versioned, atomic SavedModel exports."""

from tfrec_music.export.saved_model import export_versioned
from tfrec_music.export.saved_model import latest_version_path
from tfrec_music.export.saved_model import list_versions
from tfrec_music.export.saved_model import package_versions
from tfrec_music.export.rest import instances_to_inputs
from tfrec_music.export.rest import predict_rest
