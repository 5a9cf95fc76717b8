"""tf.data pipelines: seeded shuffles, host lookups, TFRecord shards."""

import numpy as np
import pandas as pd
import pytest

import tfrec_music  # noqa: F401
import tensorflow as tf

from tfrec_music.models.history import causal_history
from tfrec_music.pipeline import build_lookups
from tfrec_music.pipeline import lookup_indices
from tfrec_music.pipeline import frame_to_features
from tfrec_music.pipeline import make_dataset
from tfrec_music.pipeline import read_shards
from tfrec_music.pipeline import string_lookup
from tfrec_music.pipeline import write_shards


def _frame(n=50):
  return pd.DataFrame({"user_id": [f"u{i % 7}" for i in range(n)],
                       "item_id": [f"t{i}" for i in range(n)],
                       "timestamp": np.arange(n, dtype=np.int64),
                       "rating": np.linspace(1, 5, n)})


def _epoch(ds):
  return np.concatenate([b["item_id"].numpy() for b in ds]).astype(str).tolist()


def test_seeded_shuffle_is_reproducible_and_complete():
  features = frame_to_features(_frame(), ["user_id", "item_id", "rating"])
  a = _epoch(make_dataset(features, 8, seed=3))
  b = _epoch(make_dataset(features, 8, seed=3))
  c = _epoch(make_dataset(features, 8, seed=4))
  assert a == b and a != c
  assert sorted(a) == sorted(f"t{i}" for i in range(50))


def test_host_lookup_map_and_oov():
  vocab = ["t1", "t2"]
  lookup = string_lookup(vocab, "item")
  features = {"item_id": np.array(["t1", "zzz", "t2", ""], dtype=object)}
  ds = make_dataset(features, 4, shuffle=False,
                    lookup_fn=lambda x: {"item_id": lookup(x["item_id"])})
  got = next(iter(ds))["item_id"].numpy().tolist()
  assert got == [2, 1, 3, 0]        # known from 2, OOV 1, missing 0
  assert lookup_indices(features["item_id"], vocab).tolist() == got   # host twin agrees
  with pytest.raises(ValueError, match="No vocabulary"):
    build_lookups({"a": ["x"]}, ["b"])


def test_bad_batch_sizes_and_columns():
  features = frame_to_features(_frame(10), ["item_id"])
  with pytest.raises(ValueError, match="`batch_size` should be a positive integer"):
    make_dataset(features, 0)
  with pytest.raises(ValueError, match="larger than the 10 training rows"):
    make_dataset(features, 64, drop_remainder=True)
  assert sum(len(b["item_id"]) for b in make_dataset(features, 64)) == 10
  with pytest.raises(ValueError, match="Column `genre` is not in the data"):
    frame_to_features(_frame(10), ["genre"])


def test_tfrecord_shards_round_trip(tmp_path):
  frame = _frame(50)
  chunks = [frame.iloc[:20], frame.iloc[20:]]
  paths = write_shards(chunks, str(tmp_path), "train", shard_rows=16)
  assert len(paths) == 4                           # 16 + 16 + 16 + 2
  rows = []
  for batch in read_shards(str(tmp_path), "train", 7, shuffle=True, seed=1):
    rows.extend(zip(batch["item_id"].numpy().astype(str), batch["timestamp"].numpy(),
                    batch["rating"].numpy()))
  assert len(rows) == 50
  got = sorted(rows, key=lambda r: r[1])
  assert [r[0] for r in got] == frame["item_id"].tolist()
  np.testing.assert_allclose([r[2] for r in got], frame["rating"], rtol=1e-6)


def test_tfrecord_list_columns_dict_chunks_and_parallel_read(tmp_path):
  history = np.arange(60, dtype=np.int64).reshape(20, 3)
  chunks = [{"user": np.arange(12), "history": history[:12]},
            {"user": np.arange(12, 20), "history": history[12:]}]
  write_shards(chunks, str(tmp_path), "rows", shard_rows=6)
  got = {}
  for batch in read_shards(str(tmp_path), "rows", 4, shuffle=True, seed=3, num_parallel_calls=2,
                           deterministic=False):
    assert batch["history"].shape[1:] == (3,)
    got.update(zip(batch["user"].numpy().tolist(), batch["history"].numpy().tolist()))
  assert got == {u: history[u].tolist() for u in range(20)}
  # batch-then-parse with drop_remainder: 20 rows -> 3 full batches of 6
  assert [len(b["user"]) for b in read_shards(str(tmp_path), "rows", 6, shuffle=False,
                                              drop_remainder=True)] == [6, 6, 6]
  with pytest.raises(ValueError, match=r"Chunk 1 of `bad` has columns .*same columns"):
    write_shards([{"h": np.zeros((2, 3), np.int64)}, {"h": np.zeros((2, 4), np.int64)}],
                 str(tmp_path), "bad")
  with pytest.raises(ValueError, match="No complete shards match"):
    read_shards(str(tmp_path), "bad", 4)


def test_tfrecord_block_reads_keep_every_row_once_and_cut_full_batches(tmp_path):
  history = np.arange(300, dtype=np.int64).reshape(100, 3)
  write_shards([{"user": np.arange(100), "history": history}], str(tmp_path), "rows",
               shard_rows=30)
  def read(**kwargs):
    return list(read_shards(str(tmp_path), "rows", 16, shuffle=True, seed=5, block_rows=8,
                            shuffle_buffer=64, **kwargs))
  batches = read()
  users = np.concatenate([b["user"].numpy() for b in batches])
  assert sorted(users.tolist()) == list(range(100))            # every row exactly once
  assert [len(b["user"]) for b in batches] == [16] * 6 + [4]   # re-cut across blocks
  for b in batches:
    np.testing.assert_array_equal(b["history"].numpy(), history[b["user"].numpy()])
  assert users.tolist() != list(range(100))                    # shuffled
  again = np.concatenate([b["user"].numpy() for b in read()])
  np.testing.assert_array_equal(users, again)                  # seeded: the same order
  assert [len(b["user"]) for b in read(drop_remainder=True)] == [16] * 6


@pytest.mark.parametrize("high", [300, 2**62])
def test_tfrecord_int_encoder_matches_protobuf(high):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfrec_music.pipeline import tfrecord  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  columns = {"user": rng.integers(-high, high, 50), "history": rng.integers(-high, high, (50, 4)),
             "item": np.zeros(50, np.int64)}
  columns["history"][0] = [-1, 0, 127, 128]          # varint edges: 10 bytes, 1, 1, 2
  spec = tfrecord._spec_of(columns)                   # pylint: disable=protected-access
  data, offsets = tfrecord._encode_int_examples(columns, spec)  # pylint: disable=protected-access
  data = data.tobytes()
  for i in range(50):
    expected = tf.train.Example(features=tf.train.Features(feature={
        c: tf.train.Feature(int64_list=tf.train.Int64List(
            value=np.atleast_1d(columns[c][i]).tolist())) for c in columns}))
    assert tf.train.Example.FromString(data[offsets[i]:offsets[i + 1]]) == expected


def test_causal_history_never_contains_the_target():
  frame = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b"],
                        "item_id": ["x", "y", "z", "x", "y"]})
  hist = causal_history(frame, ["x", "y", "z"], length=2)
  # x=2, y=3, z=4; rows: a:x -> [], a:y -> [x], a:z -> [x, y], b:x -> [], b:y -> [x]
  assert hist.tolist() == [[0, 0], [0, 2], [2, 3], [0, 0], [0, 2]]
