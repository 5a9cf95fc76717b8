"""`CascadeFamily`: the retrieve-then-rank cascade in the training pipeline.

Fit (the two-tower stage, the re-rankers, the blend), full-catalogue scores,
evaluation beside the retrieval alone, and the export; the stages and the
candidates' scoring are `CascadeCore`'s.
"""

import logging
import time
from typing import Any, Callable, Dict, Sequence

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.models.cascade import config as config_lib
from tfrec_music.models.cascade import serving
from tfrec_music.models.cascade.config import CascadeConfig
from tfrec_music.models.cascade.core import CascadeCore


class CascadeFamily(CascadeCore):
  """Two-tower retrieval re-ranked by a hard-negative DCN, plugged into the pipeline."""

  name = "two_tower_dcn"
  config_class = CascadeConfig
  config_module = config_lib

  @classmethod
  def make_config(cls, preset: str, overrides: Dict[str, Any]) -> CascadeConfig:
    """The preset's config; the two-tower part follows the same preset name."""
    return super().make_config(preset, config_lib.with_retrieval_preset(preset, overrides))

  # ----------------------------------------------------------------- training
  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Fits the two-tower model, then the hard-negative DCN(s), then picks the blend.

    Every Keras fit goes through the shared fit loop with this family's
    `checkpoint_every`, each under its own backup folder
    (`<backup_dir>/retrieval/two_tower`, `<backup_dir>/ranker/two_tower_dcn_ranker`,
    `<backup_dir>/ranker_1/...` for the ensemble's others), so a killed run
    rerun with the same command resumes the stage it was in; finished stages
    are restored (`_fit_or_restore`).
    """
    self._share_checkpointing(self.retrieval, "retrieval")
    backup = self.backup_dir or io.join(job_dir, "backup")
    start = time.perf_counter()
    retrieval_summary = self._fit_or_restore(self.retrieval, "retrieval", job_dir, backup)
    config = self.config
    candidates = self._training_candidates()
    seconds = {"retrieval": time.perf_counter() - start}
    self.rankers, ranker_summaries, stages = [], [], ["retrieval"]
    for index in range(config.rankers):
      start = time.perf_counter()
      ranker = self._new_ranker(index, candidates)
      name = "ranker" if index == 0 else f"ranker_{index}"
      stages.append(name)
      self._share_checkpointing(ranker, name)
      ranker_summaries.append(self._fit_or_restore(ranker, name, job_dir, backup))
      self.rankers.append(ranker)
      seconds[name] = time.perf_counter() - start
    self.ranker = self.rankers[0]
    for name in stages:
      folder = io.join(backup, f"two_tower_dcn_{name}")
      if tf.io.gfile.isdir(folder):
        tf.io.gfile.rmtree(folder)  # finished: the stage backups are no longer needed
    if tf.io.gfile.isdir(backup) and not tf.io.gfile.listdir(backup):
      tf.io.gfile.rmtree(backup)
    valid_hr, by_rankers = self._choose_blend()
    logging.info("two_tower_dcn: blend %.2f (validation HR@10 by blend: %s; by number of "
                 "re-rankers: %s; stage seconds: %s)", self.blend, valid_hr, by_rankers,
                 seconds)
    self.fit_summary = {"retrieval": retrieval_summary, "ranker": ranker_summaries[0],
                        "blend": self.blend, "valid_hr@10_by_blend": valid_hr,
                        "valid_hr@10_by_rankers": by_rankers, "stage_seconds": seconds}
    if config.rankers > 1:
      self.fit_summary["rankers"] = ranker_summaries
    return self.fit_summary

  # ----------------------------------------------------------------- scoring
  def scorer(self, split: str) -> Callable[[Sequence[str]], np.ndarray]:
    """Full-catalogue scores: re-ranked candidates first, the rest in retrieval order."""

    def _score(user_ids):
      user_ids = np.asarray(user_ids).astype(str)
      all_scores = self.retrieval.scorer(split)(user_ids).astype(np.float64)
      candidates, scores = self._top_candidates(user_ids, all_scores, split)
      final = self._final(self._candidate_logits(user_ids, candidates, split), scores,
                          self.blend, user_ids)
      # Non-candidates keep their retrieval order, strictly below every candidate.
      out = all_scores - (np.abs(all_scores).max() + 1.0) * 2.0
      floor = out.max(axis=1, keepdims=True)
      # Excluded candidates (-inf, when `candidates` nears the catalogue) stay at -inf.
      lowest = np.where(np.isfinite(final), final, np.inf).min(axis=1, keepdims=True)
      final = final - np.where(np.isfinite(lowest), lowest, 0.0) + floor + 1.0
      np.put_along_axis(out, candidates, final, axis=1)
      return out
    return _score

  def score_fn(self):
    """Scorer factory (split -> scorer)."""
    return self.scorer

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """The cascade, retrieval alone, popularity and the oracle on the same users and splits."""
    metrics = super().evaluate(context)
    from tfrec_music.evaluation.protocol import evaluate_scorer  # pylint: disable=g-import-not-at-top
    metrics["two_tower"] = evaluate_scorer(self.retrieval.score_fn(), self.prepared)
    metrics["model"]["blend"] = self.blend
    return {"model": metrics.pop("model"), "two_tower": metrics.pop("two_tower"), **metrics}

  # ----------------------------------------------------------------- export
  def serving_module(self) -> serving.CascadeServingModule:
    """The serving module (raw user features in, ranked track ids out)."""
    rankers = self.rankers or [self.ranker]
    return serving.build_serving_module(
        self.retrieval, rankers, self.prepared, self.config.candidates, self.config.top_k,
        self.blend, self.temperature, self.ranker.history_features)

  def save(self, directory: str) -> Dict[str, str]:
    """One SavedModel: retrieval, candidate features and the re-ranker inside."""
    return serving.save_serving_module(self.serving_module(), directory,
                                       self.retrieval.user_features)
