"""The playlist benchmark's figures and verdict from a hand-made metrics file."""

import pytest

from benchmarks import playlist_quality


def _metrics(model_k5, oracle_k5):
  row = lambda k5, k10: {"test/k5/r_precision": k5, "test/k10/r_precision": k10,
                         "valid/k5/r_precision": k5 / 10, "valid/k5/ndcg": k5 / 2,
                         "valid/k10/r_precision": k10 / 10, "valid/k10/ndcg": k10 / 2}
  model = dict(row(model_k5, 0.3), **{"test/seen/r_precision": 0.5,
                                      "test/unseen/r_precision": 0.4})
  return {"model": model, "same_artist": row(0.2, 0.25), "same_album": row(0.1, 0.3),
          "oracle": row(oracle_k5, 0.4)}


def test_summary_shares_and_verdict_by_hand():
  out = playlist_quality.summarize(_metrics(0.42, 0.5))
  # K=5: best group baseline max(0.2, 0.1) = 0.2; ratio 0.42 / 0.2 = 2.1, the oracle's
  # 0.5 / 0.2 = 2.5; share 2.1 / 2.5 = 0.84 = 0.42 / 0.5.
  assert out["k5_ratio"] == pytest.approx(2.1)
  assert out["k5_oracle_ratio_ceiling"] == pytest.approx(2.5)
  assert out["k5_share_of_oracle"] == pytest.approx(0.84)
  # K=10: baseline max(0.25, 0.3) = 0.3; share 0.3 / 0.4 = 0.75; validation shares alike.
  assert out["k10_share_of_oracle"] == pytest.approx(0.75)
  assert out["valid_k5_r_precision_share_of_oracle"] == pytest.approx(0.84)
  assert out["valid_k10_ndcg_share_of_oracle"] == pytest.approx(0.75)
  assert out["unseen_over_seen"] == pytest.approx(0.8)
  targets, met = playlist_quality.verdict(out)
  assert targets == {"unseen_over_seen": ">= 0.8", "k5_share_of_oracle": ">= 0.85",
                     "k10_share_of_oracle": ">= 0.85"}
  # 0.84 < 0.85 and 0.75 < 0.85: not met; 0.8 >= 0.8: met. Booleans, not numpy bools.
  assert met == {"unseen_over_seen": True, "k5_share_of_oracle": False,
                 "k10_share_of_oracle": False}
  assert playlist_quality.verdict(playlist_quality.summarize(_metrics(0.45, 0.5)))[1][
      "k5_share_of_oracle"] is True                    # 0.45 / 0.5 = 0.9


def test_without_an_oracle_only_the_unseen_target_is_judged():
  metrics = _metrics(0.42, 0.5)
  del metrics["oracle"]
  out = playlist_quality.summarize(metrics)
  assert "k5_share_of_oracle" not in out and out["k5_ratio"] == pytest.approx(2.1)
  assert playlist_quality.verdict(out) == ({"unseen_over_seen": ">= 0.8"},
                                           {"unseen_over_seen": True})
