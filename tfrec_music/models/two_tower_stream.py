"""The streaming two-tower trainer under its old import path.

The code lives in `two_tower.materialize` (TFRecord shards from Parquet) and
`two_tower.stream` (training from them); these names are re-exported so
`two_tower_stream.materialize`, `two_tower_stream.stream_fit` and the rest
keep working.
"""

from tfrec_music.models.two_tower.materialize import DONE
from tfrec_music.models.two_tower.materialize import MANIFEST
from tfrec_music.models.two_tower.materialize import TRAIN
from tfrec_music.models.two_tower.materialize import materialize
from tfrec_music.models.two_tower.materialize import read_manifest
from tfrec_music.models.two_tower.stream import StreamData
from tfrec_music.models.two_tower.stream import id_table_bytes
from tfrec_music.models.two_tower.stream import input_throughput
from tfrec_music.models.two_tower.stream import load_stream_data
from tfrec_music.models.two_tower.stream import stream_export
from tfrec_music.models.two_tower.stream import stream_fit

__all__ = [
    "DONE",
    "MANIFEST",
    "TRAIN",
    "StreamData",
    "id_table_bytes",
    "input_throughput",
    "load_stream_data",
    "materialize",
    "read_manifest",
    "stream_export",
    "stream_fit",
]
