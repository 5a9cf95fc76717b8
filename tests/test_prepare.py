"""Preparation: dedup, k-core, splits, cold users, warm marks, vocabularies."""

import numpy as np
import pandas as pd
import pytest

from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import Tables
from tfrec_music.data.tables import validate_tables
from tfrec_music.prepare import PrepareConfig
from tfrec_music.prepare import PreparedData
from tfrec_music.prepare import deduplicate
from tfrec_music.prepare import kcore
from tfrec_music.prepare import leave_one_out
from tfrec_music.prepare import mark_warm
from tfrec_music.prepare import prepare
from tfrec_music.prepare import ratio_split


def _frame(rows):
  return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_dedup_keeps_first_listen_and_sums_weights():
  frame = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": ["x", "x", "y", "x"],
                        "timestamp": [5, 1, 3, 2], "weight": [1.0, 2.0, 1.0, 4.0]})
  report = DataReport()
  out = deduplicate(frame, report)
  assert report.get("dedup", "duplicate_rows_merged") == 1
  row = out[(out.user_id == "a") & (out.item_id == "x")]
  assert row["timestamp"].item() == 1      # earliest listen kept
  assert row["weight"].item() == 3.0       # 1 + 2 plays
  assert len(out) == 3


def test_kcore_iterates_to_fixed_point():
  # k=2. Pass 1: item w has 1 user -> dropped (z has a and c, c has z and w: kept).
  # Pass 2: c now has only z -> dropped. Pass 3: z now has only a -> dropped.
  rows = [(u, i, 0) for u in "abd" for i in "xy"] + [("c", "z", 0), ("c", "w", 0),
                                                     ("a", "z", 0)]
  report = DataReport()
  out = kcore(_frame(rows), 2, report, items=True)
  assert set(out.item_id) == {"x", "y"}
  assert set(out.user_id) == {"a", "b", "d"}
  assert report.get("kcore", "interactions_dropped") == 3
  assert report.get("kcore", "users_dropped") == 1
  counts_u = out.user_id.value_counts()
  counts_i = out.item_id.value_counts()
  assert counts_u.min() >= 2 and counts_i.min() >= 2
  assert report.get("kcore", "iterations") >= 3


def test_kcore_by_default_filters_users_only():
  # k=2: c has 1 row -> dropped; item w (1 play) stays, its user a has 3 rows.
  rows = [("a", "x", 0), ("a", "y", 0), ("a", "w", 0), ("b", "x", 0), ("b", "y", 0),
          ("c", "x", 0)]
  report = DataReport()
  out = kcore(_frame(rows), 2, report)
  assert set(out.user_id) == {"a", "b"}
  assert set(out.item_id) == {"x", "y", "w"}
  assert report.get("kcore", "interactions_dropped") == 1
  assert report.get("kcore", "items_dropped") == 0


def test_catalogue_keeps_every_item_and_reports_new_ones():
  # u3 has 1 row (dropped by kcore=2) and is the only listener of "rare"; "unplayed"
  # is only in the items table. Both stay candidates, with no training plays (`new`).
  rows = [(u, i, t) for u in ("u1", "u2") for t, i in enumerate(["a", "b", "c", "d"])]
  rows.append(("u3", "rare", 0))
  items = pd.DataFrame({"item_id": ["a", "b", "c", "d", "rare", "unplayed"]})
  report = DataReport()
  prepared = prepare(Tables(_frame(rows), items),
                     PrepareConfig(kcore=2, cold_user_share=0.0), report)
  assert list(prepared.item_ids) == ["a", "b", "c", "d", "rare", "unplayed"]
  new = prepared.item_slices()["new"]
  # Per user: d -> test, c -> valid (time order); a and b train.
  assert list(prepared.item_ids[new]) == ["c", "d", "rare", "unplayed"]
  assert report.get("catalogue", "items_in_table_without_interactions") == 1
  assert report.get("catalogue", "items_without_training_interactions") == 4


def test_dedup_is_causal_play_counts_stop_at_the_split_point():
  # User a: x at t=1, 2 (weight 1 each), y at t=3, z at t=4, then x again at t=5
  # (weight 10) and at t=6 a new rating. Temporal LOO: z -> test, y -> valid, x ->
  # train. x's training weight counts listens before the validation point (t=3):
  # 1 + 1 = 2, not 12; its rating is the last one before t=3 (4.0, not 1.0).
  # y (valid) counts listens before the test point t=4: y at t=3 and t=3.5 -> 2.
  frame = pd.DataFrame({
      "user_id": ["a"] * 7,
      "item_id": ["x", "x", "y", "y", "z", "x", "x"],
      "timestamp": [1, 2, 3, 3.5, 4, 5, 6],
      "weight": [1.0, 1.0, 1.0, 1.0, 1.0, 10.0, 1.0],
      "rating": [3.0, 4.0, 5.0, 5.0, 5.0, 2.0, 1.0]})
  report = DataReport()
  prepared = prepare(Tables(frame), PrepareConfig(kcore=0, cold_user_share=0.0), report)
  assert prepared.train["item_id"].tolist() == ["x"]
  assert prepared.train["weight"].item() == 2.0
  assert prepared.train["rating"].item() == 4.0
  assert prepared.valid["weight"].item() == 2.0
  assert prepared.test["item_id"].item() == "z"
  # t=5 and t=6 (after the validation point) and nothing else are left out of train.
  assert report.get("dedup", "listens_after_split_point") == 2


def test_kcore_nothing_left_says_how_to_fix():
  with pytest.raises(ValueError, match="--kcore"):
    kcore(_frame([("a", "x", 0)]), 5, DataReport())


def test_temporal_leave_one_out_uses_time_not_file_order():
  rows = [("a", "i1", 30), ("a", "i2", 10), ("a", "i3", 20), ("a", "i4", 40),
          ("b", "i1", 1), ("b", "i2", 2)]
  parts = leave_one_out(_frame(rows), seed=0, report=DataReport())
  assert parts["test"].set_index("user_id").loc["a", "item_id"] == "i4"
  assert parts["valid"].set_index("user_id").loc["a", "item_id"] == "i1"
  assert sorted(parts["train"].query("user_id == 'a'").item_id) == ["i2", "i3"]
  # b has only 2 interactions: all kept in train, none lost.
  assert set(parts["train"].query("user_id == 'b'").item_id) == {"i1", "i2"}


def test_random_leave_one_out_is_seeded():
  rows = [(u, f"i{j}", 0) for u in "abcdef" for j in range(6)]
  frame = _frame(rows).drop(columns="timestamp")
  a = leave_one_out(frame, seed=1, report=DataReport())["test"]
  b = leave_one_out(frame, seed=1, report=DataReport())["test"]
  c = leave_one_out(frame, seed=2, report=DataReport())["test"]
  pd.testing.assert_frame_equal(a, b)
  assert not a["item_id"].equals(c["item_id"])


def test_ratio_split_partitions_rows():
  frame = _frame([(f"u{i % 7}", f"i{i}", i) for i in range(100)])
  parts = ratio_split(frame, (0.8, 0.1, 0.1), seed=0, report=DataReport())
  assert [len(parts[k]) for k in ("train", "valid", "test")] == [80, 10, 10]
  all_items = pd.concat(parts.values())["item_id"]
  assert sorted(all_items) == sorted(frame["item_id"])
  with pytest.raises(ValueError, match="ratios"):
    ratio_split(frame, (0.5, 0.1, 0.1), seed=0, report=DataReport())


def test_mark_warm_top_share_by_degree():
  counts = np.array([5, 0, 9, 9, 1, 3, 2, 7, 4, 6])
  warm = mark_warm(counts, 0.2)
  # Two warm items: the two 9s (indices 2 and 3).
  assert np.flatnonzero(warm).tolist() == [2, 3]


def test_prepare_end_to_end_counts_and_vocabularies(toy_tables):
  report = DataReport()
  prepared = prepare(toy_tables, PrepareConfig(cold_user_share=0.1, seed=3), report)
  n_users = toy_tables.interactions.user_id.nunique()
  cold = prepared.cold_user_test.user_id.nunique()
  assert cold == round(0.1 * n_users)
  assert set(prepared.cold_user_test.user_id).isdisjoint(set(prepared.train.user_id))
  assert len(prepared.valid) == len(prepared.test) == n_users - cold
  # Every row is accounted for.
  total = sum(len(getattr(prepared, s)) for s in ("train", "valid", "test", "cold_user_history",
                                                   "cold_user_test"))
  assert total == len(toy_tables.interactions) - report.get("kcore", "interactions_dropped")
  assert prepared.n_items == len(toy_tables.items)  # every item of the table stays
  # Vocabularies come from train only.
  assert set(prepared.vocabularies["user_id"]) == set(prepared.train.user_id)
  assert set(prepared.vocabularies["item_id"]) == set(prepared.train.item_id)
  assert prepared.warm_items.sum() == round(0.2 * prepared.n_items)
  assert "artist" in prepared.vocabularies and "tags" in prepared.vocabularies
  assert report.as_dict()["catalogue"]["items"] == prepared.n_items


def test_prepare_is_deterministic(toy_tables):
  a = prepare(toy_tables, PrepareConfig(seed=5))
  b = prepare(toy_tables, PrepareConfig(seed=5))
  pd.testing.assert_frame_equal(a.test, b.test)
  pd.testing.assert_frame_equal(a.cold_user_test, b.cold_user_test)
  assert a.fingerprint == b.fingerprint


def test_prepared_save_load_round_trip(toy_tables, tmp_path):
  prepared = prepare(toy_tables)
  prepared.save(str(tmp_path))
  loaded = PreparedData.load(str(tmp_path))
  pd.testing.assert_frame_equal(prepared.test.reset_index(drop=True), loaded.test)
  assert loaded.vocabularies == prepared.vocabularies
  np.testing.assert_array_equal(loaded.warm_items, prepared.warm_items)
  assert loaded.items["tags"].iloc[0] == prepared.items["tags"].iloc[0]
  assert loaded.config == prepared.config
  assert (tmp_path / "vocab" / "item_id.txt").read_text().split("\n")[0] == \
      prepared.vocabularies["item_id"][0]


def test_unknown_items_policy_drop_is_counted():
  interactions = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "ghost"]})
  items = pd.DataFrame({"item_id": ["x"]})
  report = DataReport()
  out = validate_tables(Tables(interactions, items), unknown_items="drop", report=report)
  assert len(out.interactions) == 1
  assert report.get("validation", "unknown_item_rows_dropped") == 1
