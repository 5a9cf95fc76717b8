"""Preparation: dedup, k-core, splits, cold/warm marks and vocabularies."""

from tfrec_music.prepare.filtering import deduplicate
from tfrec_music.prepare.filtering import kcore
from tfrec_music.prepare.prepared import PrepareConfig
from tfrec_music.prepare.prepared import PreparedData
from tfrec_music.prepare.prepared import mark_warm
from tfrec_music.prepare.prepared import prepare
from tfrec_music.prepare.split import hold_out_users
from tfrec_music.prepare.split import leave_one_out
from tfrec_music.prepare.split import ratio_split
from tfrec_music.prepare.vocabulary import build_vocabularies
from tfrec_music.prepare.vocabulary import load_vocabularies
from tfrec_music.prepare.vocabulary import save_vocabularies
