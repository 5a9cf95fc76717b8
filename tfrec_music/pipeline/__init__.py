"""tf.data pipelines: feature dicts, host-side lookups and TFRecord shards."""

from tfrec_music.pipeline.dataset import frame_to_features
from tfrec_music.pipeline.dataset import make_dataset
from tfrec_music.pipeline.epochs import epoch_batches
from tfrec_music.pipeline.epochs import feature_signature
from tfrec_music.pipeline.lookups import build_lookups
from tfrec_music.pipeline.lookups import lookup_indices
from tfrec_music.pipeline.lookups import string_lookup
from tfrec_music.pipeline.tfrecord import read_shards
from tfrec_music.pipeline.tfrecord import write_shards
