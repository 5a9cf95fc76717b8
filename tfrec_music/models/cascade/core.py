"""`CascadeCore`: the cascade's two stages and how they score a user's candidates.

Everything `CascadeFamily` does besides the pipeline's fit / evaluate / score
/ save: the two-tower stage and the re-rankers, the candidates (a user's
tracks before a split excluded), the stages' checkpoints (a finished stage
is restored by a rerun), the re-rankers' pair inputs and the final score.
"""

import dataclasses
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.models.cascade.config import CascadeConfig
from tfrec_music.models.cascade.ranker import HardNegativeDCN
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.rerank_features import HistoryFeatures
from tfrec_music.models.two_tower import TwoTowerFamily
from tfrec_music.prepare.prepared import PreparedData


class CascadeCore(ModelFamily):
  """The two-tower retrieval and its hard-negative DCN re-rankers (see `CascadeFamily`)."""

  def __init__(self, config: CascadeConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    retrieval_config = TwoTowerFamily.make_config(
        config.retrieval_preset,
        {**dict(config.retrieval_overrides), "top_k": config.candidates, "seed": config.seed})
    if retrieval_config.history_length == 0:
      raise ValueError("The cascade's re-ranker reads the user's recent tracks, but its "
                       "retrieval overrides set `history_length` = 0 (history off). Leave "
                       "the retrieval's `history_length` at 1 or more.")
    self.retrieval = TwoTowerFamily(retrieval_config, prepared)
    self.temperature = float(retrieval_config.temperature)
    self.ranker: Optional[HardNegativeDCN] = None  # the first of `rankers`
    self.rankers: List[HardNegativeDCN] = []
    self.blend = config.blend_weights[0]
    self.fit_summary: Dict[str, Any] = {}
    self._exclusions: Dict[str, Dict[str, np.ndarray]] = {}

  # ------------------------------------------------------------- candidates
  def _history_of(self, split: str) -> pd.DataFrame:
    prepared = self.prepared
    if split == "valid":
      return prepared.train
    if split == "test":
      return pd.concat([prepared.train, prepared.valid])
    if split == "cold_user":
      return prepared.cold_user_history
    raise ValueError("`split` should be one of ('valid', 'test', 'cold_user'). "
                     f"Received: `split` = {split!r}.")

  def exclusions(self, split: str) -> Dict[str, np.ndarray]:
    """user id -> catalogue indices of the tracks the user had before `split`."""
    if split not in self._exclusions:
      history = self._history_of(split)
      index = self.prepared.item_index(history["item_id"])
      frame = pd.DataFrame({"u": history["user_id"].astype(str).to_numpy(), "i": index})
      self._exclusions[split] = {u: g.to_numpy() for u, g in frame.groupby("u")["i"]}
    return self._exclusions[split]

  def retrieve(self, user_ids: Sequence[str], split: str, n: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """([B, n] catalogue indices, [B, n] retrieval scores) of each user's top tracks.

    Tracks the user had before `split` are excluded, as in serving.
    """
    scores = self.retrieval.scorer(split)(np.asarray(user_ids)).astype(np.float64)
    return self._top_candidates(user_ids, scores, split, n)

  def _top_candidates(self, user_ids: Sequence[str], scores: np.ndarray, split: str,
                      n: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    n = min(n or self.config.candidates, self.prepared.n_items)
    scores = scores.copy()
    excluded = self.exclusions(split)
    for row, user in enumerate(np.asarray(user_ids).astype(str)):
      seen = excluded.get(user)
      if seen is not None and len(seen):
        scores[row, seen] = -np.inf
    top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return top, np.take_along_axis(top_scores, order, axis=1)

  def _training_candidates(self) -> Callable[[np.ndarray], np.ndarray]:
    """user id -> [C] retrieved tracks with the training history (for hard negatives)."""
    users = np.unique(self.prepared.train["user_id"].astype(str).to_numpy())
    pools = np.zeros((len(users), min(self.config.candidates, self.prepared.n_items)), np.int64)
    for start in range(0, len(users), 512):
      pools[start:start + 512] = self.retrieve(users[start:start + 512], "valid")[0]
    where = pd.Index(users)

    def _of(user_ids: np.ndarray) -> np.ndarray:
      rows = where.get_indexer(np.asarray(user_ids).astype(str))
      # Users without training rows (none in practice) draw from row 0.
      return pools[np.maximum(rows, 0)]
    return _of

  # ----------------------------------------------------------------- stages
  def _new_ranker(self, index: int, candidates: Callable[[np.ndarray], np.ndarray]
                  ) -> HardNegativeDCN:
    """Re-ranker `index` of the ensemble, untrained, with hard negatives from `candidates`
    (`_training_candidates`)."""
    config = self.config
    return HardNegativeDCN(config.ranker_config(index), self.prepared, candidates,
                           config.hard_negatives, config.random_negatives,
                           config.recent_positives, self.history_features(),
                           config.history_pooling, config.user_id_embedding,
                           history_of=lambda users: self.history_rows(users, "valid"),
                           recent_share=config.recent_share)

  def _fit_or_restore(self, stage: ModelFamily, name: str, job_dir: str,
                      backup: str) -> Dict[str, Any]:
    """Fits one stage (the two-tower model or a re-ranker), or restores it when a killed
    run already had.

    A finished stage is checkpointed (weights and summary, tagged with its
    configuration: a re-ranker's with the whole cascade's) under
    `<backup>/two_tower_dcn_<name>`, so a rerun of a run killed in a later
    stage restores it instead of training it again (the re-rankers' hard
    negatives come from the retrieval stage, so it must be the same one). A
    re-ranker's network creates its variables on its first call, so it is
    called once before the read: the weights are restored at once, not
    deferred to a first call that may come after the finished stages'
    folders are removed.
    """
    folder = io.join(backup, f"two_tower_dcn_{name}")
    fingerprint = self._stage_fingerprint(stage)
    summary_path = io.join(folder, "summary.json")
    checkpoint = tf.train.Checkpoint(model=stage.model)
    if tf.io.gfile.exists(summary_path):
      with tf.io.gfile.GFile(summary_path) as f:
        saved = json.load(f)
      if saved.get("fingerprint") == fingerprint:
        if isinstance(stage, HardNegativeDCN):
          self._build_ranker(stage)
        checkpoint.read(io.join(folder, "weights")).assert_existing_objects_matched()
        logging.info("two_tower_dcn: restored the finished %s stage from %s.", name, folder)
        stage.fit_summary = {**saved["summary"], "restored": True}
        return stage.fit_summary
      logging.warning("The %s stage in %s was written by a run with another "
                      "configuration; training it afresh.", name, folder)
    summary = stage.fit(io.join(job_dir, name))
    _write_stage(stage, folder, fingerprint, summary)
    return summary

  def _stage_fingerprint(self, stage: ModelFamily) -> str:
    """What a finished stage's checkpoint is tagged with: its config and data (a re-ranker's
    also the cascade's config)."""
    tag = {"config": dataclasses.asdict(stage.config), "data": self.prepared.fingerprint}
    if isinstance(stage, HardNegativeDCN):
      # A re-ranker also depends on what its DCN config does not hold: its
      # positives and negatives, its features, and the retrieval stage behind
      # its hard negatives (all in the cascade's config).
      tag["cascade"] = dataclasses.asdict(self.config)
    return json.dumps(tag, sort_keys=True, default=str)

  def leave_retrieval(self, fitted: TwoTowerFamily, job_dir: str) -> bool:
    """Leaves an already fitted two-tower model where `fit(job_dir)` restores it as the
    finished retrieval stage (as after a killed run), if it is the one this cascade trains.

    For side-by-side benchmarks that fit the same two-tower model for themselves
    (`benchmarks.two_tower_quality --cascade-job-dir`).

    Args:
      fitted: A fitted `TwoTowerFamily`.
      job_dir: The job folder the cascade will be fitted with (its default backup folder).

    Returns:
      Whether it was left: False when its config (`top_k` aside, which only the
      export reads) or its prepared data differ from this cascade's retrieval stage.
    """
    mine = self.retrieval.config
    if (dataclasses.replace(fitted.config, top_k=mine.top_k) != mine
        or fitted.prepared.fingerprint != self.prepared.fingerprint):
      return False
    stage = self.retrieval
    folder = io.join(self.backup_dir or io.join(job_dir, "backup"), "two_tower_dcn_retrieval")
    _write_stage(fitted, folder, self._stage_fingerprint(stage), fitted.fit_summary)
    return True

  def _build_ranker(self, ranker: HardNegativeDCN) -> None:
    """Creates a re-ranker's variables by scoring one (user, track) pair."""
    users = self.prepared.train["user_id"].astype(str).to_numpy()[:1]
    items = self.prepared.item_index(self.prepared.train["item_id"].to_numpy()[:1])
    features = self._pair_inputs(ranker, users, items[:, None], "valid")
    ranker.ranker({k: tf.constant(np.asarray(v)) for k, v in features.items()})

  def _share_checkpointing(self, stage: ModelFamily, name: str) -> None:
    """Gives a stage this family's checkpoint frequency and a backup folder of its own."""
    stage.checkpoint_every = self.checkpoint_every
    stage.backup_dir = io.join(self.backup_dir, name) if self.backup_dir else None

  # ----------------------------------------------------------- pair scoring
  def history_features(self) -> Optional[HistoryFeatures]:
    """The re-ranker's pair features over the retrieval's history length (None: none)."""
    if not (self.config.history_features or self.config.history_pooling):
      return None
    return HistoryFeatures(self.prepared.items, self.prepared.item_train_counts,
                           self.config.history_features, self.retrieval.config.history_length)

  def history_rows(self, user_ids: Sequence[str], split: str) -> np.ndarray:
    """[B, H] catalogue rows of each user's history before `split` (-1: padding)."""
    history = self.retrieval.raw_query_features(np.asarray(user_ids).astype(str),
                                                split)["history"]
    return self.prepared.item_index(history.reshape(-1)).reshape(history.shape).astype(np.int64)

  def _candidate_logits(self, user_ids: np.ndarray, candidates: np.ndarray,
                        split: str) -> np.ndarray:
    """[B, C] re-ranker logits of each user's candidates (history before `split`).

    With an ensemble, the mean of the re-rankers' logits (`_ranker_logits`).
    """
    return np.mean(self._ranker_logits(user_ids, candidates, split), axis=0)

  def _ranker_logits(self, user_ids: np.ndarray, candidates: np.ndarray,
                     split: str) -> np.ndarray:
    """[R, B, C] each re-ranker's logits of each user's candidates.

    The re-rankers share one vocabulary and history featurization (the same
    prepared data), so the encoded features are computed once.
    """
    b, c = candidates.shape
    features = self._pair_inputs(self.ranker, user_ids, candidates, split)
    rankers = self.rankers or [self.ranker]
    return np.stack([r.predict_encoded(features).reshape(b, c) for r in rankers])

  def _pair_inputs(self, ranker: HardNegativeDCN, user_ids: np.ndarray, candidates: np.ndarray,
                   split: str) -> Dict[str, np.ndarray]:
    """`ranker`'s encoded inputs of the [B, C] (user, candidate) pairs, row-major."""
    c = candidates.shape[1]
    features = ranker.pair_features(np.repeat(np.asarray(user_ids).astype(str), c),
                                    candidates.reshape(-1))
    if ranker.history_features is not None:
      # Each user's history is shared by the user's c candidates.
      ranker.with_history(features, self.history_rows(user_ids, split), candidates.reshape(-1),
                          rows=np.repeat(np.arange(len(candidates)), c))
    return features

  def _final(self, logits: np.ndarray, retrieval_scores: np.ndarray, blend: float,
             user_ids: Optional[Sequence[str]] = None) -> np.ndarray:
    """[B, C] final scores; users the re-ranker never trained on keep the retrieval order.

    Such users (cold users served from their history, unknown ids) would be
    scored through the re-ranker's fallback, one constant for every track, so
    their candidates are ranked by the retrieval score alone.
    """
    final = logits + blend * retrieval_scores / self.temperature
    if user_ids is not None:
      known = np.isin(np.asarray(user_ids).astype(str), self.ranker.vocabs["user_id"])
      final = np.where(known[:, None], final, retrieval_scores / self.temperature)
    # Excluded tracks (score -inf: the user had them) stay last, whatever the blend.
    return np.where(np.isneginf(retrieval_scores), -np.inf, final)

  def _choose_blend(self) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Validation HR@10 of each blend weight; keeps the best (first on ties).

    Returns:
      (HR@10 by blend weight with every re-ranker, the best blend's HR@10 by
      number of re-rankers: "0" is the retrieval order, "n" the mean of the
      first n re-rankers' logits, each at its own best blend). The second
      tells what each further re-ranker fit bought (see `rankers`).
    """
    valid = self.prepared.valid
    if len(valid) == 0:
      return {}, {}
    users = valid["user_id"].astype(str).to_numpy()
    targets = self.prepared.item_index(valid["item_id"])
    candidates, scores = self.retrieve(users, "valid")
    logits = self._ranker_logits(users, candidates, "valid")
    k = min(10, candidates.shape[1])

    def hr(final: np.ndarray) -> float:
      top = np.take_along_axis(candidates, np.argsort(-final, axis=1, kind="stable")[:, :k],
                               axis=1)
      return float(np.mean((top == targets[:, None]).any(axis=1)))

    by_rankers = {"0": hr(scores)}
    for n in range(1, len(logits) + 1):
      mean = logits[:n].mean(axis=0)
      by_blend = {str(w): hr(self._final(mean, scores, w, users))
                  for w in self.config.blend_weights}
      by_rankers[str(n)] = max(by_blend.values())
    self.blend = float(max(self.config.blend_weights, key=lambda w: by_blend[str(w)]))
    return by_blend, by_rankers


def _write_stage(stage: ModelFamily, folder: str, fingerprint: str,
                 summary: Dict[str, Any]) -> None:
  """Writes a finished stage's checkpoint (weights, then its tagged summary) for
  `CascadeCore._fit_or_restore`."""
  tf.io.gfile.makedirs(folder)
  tf.train.Checkpoint(model=stage.model).write(io.join(folder, "weights"))
  summary_path = io.join(folder, "summary.json")
  with tf.io.gfile.GFile(summary_path + ".tmp", "w") as f:
    json.dump({"fingerprint": fingerprint, "summary": summary}, f, default=str)
  tf.io.gfile.rename(summary_path + ".tmp", summary_path, overwrite=True)
