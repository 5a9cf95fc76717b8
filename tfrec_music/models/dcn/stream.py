"""An explicit-rating DCN trained from Parquet shards larger than memory (`--stream`).

Each epoch re-reads the shards through `tf.data`; memory holds the catalogue,
the vocabularies, per-id biases and one read batch. The split is the hashed
80/10/10 split of `tfrec_music.prepare.hashed_split`; the export has the
in-memory DCN's signatures.
"""

import logging
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.data.shards import interaction_shards
from tfrec_music.data.shards import parquet_batches
from tfrec_music.fit_callbacks import EpochTimer
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models.dcn.config import DCNConfig
from tfrec_music.models.dcn.features import RankingFeatureSpec
from tfrec_music.models.dcn.features import numeric_statistics
from tfrec_music.models.dcn.features import ranking_vocabularies
from tfrec_music.models.dcn.features import raw_item_table
from tfrec_music.models.dcn.features import raw_user_table
from tfrec_music.models.dcn.network import DCNModel
from tfrec_music.models.dcn.network import RankingEncoder
from tfrec_music.models.dcn.network import build_ranker
from tfrec_music.models.dcn.network import optimizer
from tfrec_music.models.dcn.serving import DCNServingModule
from tfrec_music.models.dcn.serving import FallbackBiases
from tfrec_music.models.dcn.serving import save_serving_module
from tfrec_music.pipeline.epochs import feature_signature
from tfrec_music.pipeline.lookups import lookup_indices
from tfrec_music.prepare.hashed_split import split_mask


def stream_train(data_dir: str, config: DCNConfig, job_dir: Optional[str] = None,
                 read_rows: int = 65_536) -> Dict[str, Any]:
  """Trains an explicit-rating DCN from canonical Parquet shards (no export).

  The training of `DCNFamily.stream_train` (see `StreamedDCN`) without the
  export; `job_dir` None trains in a temporary folder (no resume).

  Returns:
    `StreamedDCN.fit`'s summary plus the model's valid/test RMSE, MSE, MAE.
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as scratch:
    streamed = StreamedDCN(data_dir, config, read_rows)
    summary = streamed.fit(job_dir or scratch)
    summary.update(streamed.evaluate()["model"])
  return summary


class StreamedDCN:
  """An explicit-rating DCN trained from canonical Parquet shards, one read batch in memory.

  Reads `items.parquet`, optional `users.parquet` and the interaction shards
  `interactions-*.parquet` of `data_dir` (as `synthetic.write_large` or
  `yahoo_music.convert_yahoo_music` write them). Memory holds the catalogue,
  the vocabularies (users and tracks seen in training), per-id bias arrays
  and one read batch, never the ratings: each epoch re-reads the shards
  through `tf.data`. The split is the hashed 80/10/10 split of
  `tfrec_music.prepare.hashed_split`. No k-core filter runs (it needs every row at once).

  Training goes through `tfrec_music.fit_loop.fit_with_validation` like the
  in-memory DCN (step checkpoints and resume, NaN guard, early stopping on
  the validation RMSE keeping the best weights). The export
  (`serving_module`) has the in-memory DCN's signatures; its fallback for
  unknown ids is alpha + beta_u + beta_i with one-step biases
  beta = sum(r - alpha) / (n + 5) of each id's training ratings.

  Args:
    data_dir: Folder of the canonical Parquet shards.
    config: `DCNConfig` (explicit labels).
    read_rows: Rows read from a shard at a time.

  Raises:
    ValueError: implicit labels.
    DataValidationError: no interaction shards, or no training rows.
  """

  checkpoint_every: int = 0
  backup_dir: Optional[str] = None

  def __init__(self, data_dir: str, config: DCNConfig, read_rows: int = 65_536):
    from tfrec_music.data.loaders import canonical  # pylint: disable=g-import-not-at-top
    from tfrec_music.data.tables import DataValidationError  # pylint: disable=g-import-not-at-top
    if config.labels != "explicit":
      raise ValueError("Streaming trains explicit ratings; `labels` should be 'explicit'. "
                       f"Received: `labels` = {config.labels!r}.")
    self.data_dir, self.config, self.read_rows = data_dir, config, read_rows
    names = canonical.list_dir(data_dir)
    self.shards = [io.join(data_dir, n) for n in interaction_shards(names)]
    if not self.shards:
      raise DataValidationError(
          f"no interactions-*.parquet shards in the folder. Found: {names[:20]}.",
          file=io.join(data_dir, "interactions-00000.parquet"),
          fix="write the shards with `python -m tfrec_music.data.synthetic --out DIR` or "
              "`python -m tfrec_music.data.loaders.yahoo_music --out DIR`.")
    items = canonical.read_parquet_file(io.join(data_dir, "items.parquet"))
    users = (canonical.read_parquet_file(io.join(data_dir, "users.parquet"))
             if "users.parquet" in names else None)
    items = items.drop(columns=[c for c in items.columns if c.startswith("_")])
    items["item_id"] = items["item_id"].astype(str)
    # Pass 1: training ids, rating mean and range, two id columns at a time.
    user_set, item_set, total, count = set(), set(), 0.0, 0
    low, high = np.inf, -np.inf
    self.rows = {"train": 0, "valid": 0, "test": 0}
    for frame in self._read(("user_id", "item_id", "rating")):
      train = split_mask(frame, "train")
      valid = split_mask(frame, "valid")
      self.rows["train"] += int(train.sum())
      self.rows["valid"] += int(valid.sum())
      self.rows["test"] += int((~train & ~valid).sum())
      user_set.update(frame["user_id"].astype(str)[train])
      item_set.update(frame["item_id"].astype(str)[train])
      ratings = frame["rating"].to_numpy(np.float64)[train]
      total += float(ratings.sum())
      count += int(train.sum())
      if len(ratings):
        low, high = min(low, float(ratings.min())), max(high, float(ratings.max()))
    if count == 0:
      raise DataValidationError("no training rows in the shards.", file=self.shards[0],
                                fix="check that the shards hold interactions with ratings.")
    self.mean, self.rating_range = total / count, (low, high)
    self.spec = RankingFeatureSpec.from_tables(items, users)
    vocabs = {"user_id": sorted(user_set), "item_id": sorted(item_set)}
    del user_set, item_set
    self.vocabs = ranking_vocabularies(self.spec, pd.DataFrame({"user_id": [], "item_id": []}),
                                       items, users, vocabs)
    train_items = items[items["item_id"].isin(set(self.vocabs["item_id"]))]
    mean, std = numeric_statistics(self.spec, train_items)
    self.encoder = RankingEncoder(self.spec, self.vocabs, mean, std, name="ranking_encoder")
    self.ranker = build_ranker(self.encoder, config, self.mean)
    self.model = DCNModel(self.ranker, "explicit")
    self.model.compile(optimizer=optimizer(config))
    self.items, self.users = items, users
    self.item_rows = pd.Index(items["item_id"])
    self.raw_items = raw_item_table(items, self.spec)
    encoded = {}
    for start in range(0, len(items), 8192):
      batch = {c: tf.constant(self.raw_items[c][start:start + 8192]) for c in self.spec.item_columns}
      for k, v in self.encoder.encode(batch, self.spec.item_columns).items():
        encoded.setdefault(k, []).append(v.numpy())
    self.encoded_items = {k: np.concatenate(v) for k, v in encoded.items()}
    self.user_table = (users.drop_duplicates("user_id").set_index("user_id")
                       if users is not None else None)
    probe = self.encode(pd.DataFrame({"user_id": ["x"], "item_id": ["x"], "rating": [0.0]}))
    self.signature = feature_signature(probe)
    self.fit_summary: Dict[str, Any] = {}
    self._fallback: Optional[FallbackBiases] = None

  def _read(self, columns: Sequence[str], paths: Optional[Sequence[str]] = None):
    return parquet_batches(paths or self.shards, columns, self.read_rows)

  def encode(self, frame: pd.DataFrame) -> Dict[str, np.ndarray]:
    """Encoded features and `label` of rating rows (tracks missing from items: missing)."""
    user_ids = frame["user_id"].astype(str).to_numpy()
    out = {"user_id": lookup_indices(user_ids, self.vocabs["user_id"])}
    for column in self.spec.user_categorical:
      values = self.user_table[column].reindex(user_ids).fillna("").astype(str).to_numpy()
      out[column] = lookup_indices(values, self.vocabs[column])
    row = self.item_rows.get_indexer(frame["item_id"].astype(str))
    known = row >= 0
    for key, values in self.encoded_items.items():
      out[key] = np.where(known.reshape((-1,) + (1,) * (values.ndim - 1)),
                          values[np.maximum(row, 0)], 0).astype(values.dtype)
    out["label"] = frame["rating"].to_numpy(np.float32)
    return out

  def dataset(self, split: str, epoch_of: Callable[[], int] = lambda: 0) -> tf.data.Dataset:
    """Batches of `split`'s rows; training shards in a per-epoch order, rows shuffled."""
    config = self.config

    def batches():
      paths = self.shards
      if split == "train":
        order = np.random.default_rng(config.seed + int(epoch_of())).permutation(len(paths))
        paths = [paths[i] for i in order]
      for frame in self._read(("user_id", "item_id", "rating"), paths):
        frame = frame[split_mask(frame, split)]
        if len(frame):
          yield self.encode(frame)

    ds = tf.data.Dataset.from_generator(batches, output_signature=self.signature).unbatch()
    if split == "train":
      ds = ds.shuffle(16 * config.batch_size, seed=config.seed)
    ds = ds.batch(config.batch_size)
    if split == "train":
      # A known number of steps per epoch lets BackupAndRestore resume mid-epoch.
      steps = -(-self.rows["train"] // config.batch_size)
      ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(2)

  def predict_split(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """([N] true, [N] predicted) ratings of a split, as served (fallback, clip)."""
    truth, pred = [], []
    fallback = self.fallback_biases()
    for batch in self.dataset(split):
      label = batch.pop("label").numpy()
      out = fallback.apply({k: v.numpy() for k, v in batch.items()
                            if k in ("user_id", "item_id")}, self.ranker(batch).numpy())
      truth.append(label)
      pred.append(np.clip(out, *self.rating_range))
    if not truth:
      return np.zeros(0), np.zeros(0)
    return np.concatenate(truth), np.concatenate(pred)

  def split_rmse(self, split: str) -> float:
    """RMSE of a split's predictions (NaN when the split is empty)."""
    truth, pred = self.predict_split(split)
    return float(np.sqrt(np.mean((truth - pred) ** 2))) if len(truth) else float("nan")

  def fallback_biases(self) -> FallbackBiases:
    """alpha + one-step biases of each training user and track (pass 2 over the shards)."""
    if self._fallback is None:
      sizes = self.encoder.vocab_sizes()
      sums = {"user_id": np.zeros(sizes["user_id"]), "item_id": np.zeros(sizes["item_id"])}
      counts = {k: np.zeros_like(v) for k, v in sums.items()}
      for frame in self._read(("user_id", "item_id", "rating")):
        frame = frame[split_mask(frame, "train")]
        residual = frame["rating"].to_numpy(np.float64) - self.mean
        for key in sums:
          index = lookup_indices(frame[key].astype(str).to_numpy(), self.vocabs[key])
          sums[key] += np.bincount(index, residual, minlength=len(sums[key]))
          counts[key] += np.bincount(index, minlength=len(sums[key]))
      bias = {k: sums[k] / (counts[k] + 5.0) for k in sums}
      for values in bias.values():
        values[:2] = 0.0  # "" and OOV
      self._fallback = FallbackBiases(self.mean, bias["user_id"], bias["item_id"])
    return self._fallback

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains with checkpoints, resume and early stopping on the validation RMSE.

    Args:
      job_dir: Logs and the resumable backup (`<job_dir>/backup` unless
        `backup_dir` is set); a killed run rerun with the same folder resumes.

    Returns:
      Summary: `rows` by split, `examples_per_second` (training steps only),
      per-epoch history with `valid_rmse`, best epoch, resume counters.
    """
    config = self.config
    steps = -(-self.rows["train"] // config.batch_size)
    dataset = self.dataset("train",
                           lambda: int(self.model.optimizer.iterations.numpy()) // steps)
    self.fallback_biases()  # before training: validation predicts as served
    timer = EpochTimer()
    summary = fit_with_validation(
        self.model, dataset, epochs=config.epochs,
        validate=lambda epoch: -self.split_rmse("valid"),
        patience=config.early_stopping_patience, job_dir=job_dir, name="dcn_stream",
        checkpoint_every=self.checkpoint_every, backup_dir=self.backup_dir,
        fingerprint=config_fingerprint(config, data=self.data_dir, rows=self.rows),
        callbacks=[tf.keras.callbacks.TensorBoard(log_dir=io.join(job_dir, "logs", "dcn_stream"),
                                                  update_freq="epoch"), timer],
        nan_advice="Lower the learning rate (`--set learning_rate=...`) or the number of "
                   "cross layers (`--cross-layers`).",
        metric_name="neg_valid_rmse")
    for entry in summary["history"]:
      entry["valid_rmse"] = -entry.pop("neg_valid_rmse")
    summary["best_valid_rmse"] = -summary.pop("best_neg_valid_rmse")
    examples = timer.steps * self.rows["train"] / steps
    seconds = sum(timer.seconds)
    summary.update({"rows": self.rows, "users": len(self.vocabs["user_id"]),
                    "items": len(self.items), "steps_per_epoch": steps,
                    "train_seconds": seconds,
                    "examples_per_second": examples / max(seconds, 1e-9)})
    logging.info("dcn stream: %d epochs, best valid RMSE %.4f, %.0f examples/s",
                 summary["epochs_run"], summary["best_valid_rmse"],
                 summary["examples_per_second"])
    self.fit_summary = summary
    return summary

  def evaluate(self) -> Dict[str, Dict[str, float]]:
    """RMSE / MSE / MAE of the valid and test splits (streamed), as served, beside the
    training mean rating (`global_mean`)."""
    from tfrec_music.evaluation.rating import rating_metrics  # pylint: disable=g-import-not-at-top
    out = {"model": {}, "global_mean": {}}
    for split in ("valid", "test"):
      truth, pred = self.predict_split(split)
      if not len(truth):
        continue
      for name, values in (("model", pred), ("global_mean", np.full(len(truth), self.mean))):
        for key, value in rating_metrics(truth, values).items():
          out[name][f"{split}/all/{key}"] = value
    return out

  def serving_module(self) -> DCNServingModule:
    """The serving module: the in-memory DCN's signatures over this model."""
    known = np.asarray(self.vocabs["user_id"])
    return DCNServingModule(self.encoder, self.ranker, "explicit", self.raw_items,
                            raw_user_table(known, self.users, self.spec), self.rating_range,
                            self.fallback_biases())

  def save(self, directory: str) -> Dict[str, str]:
    """Writes the SavedModel (see `save_serving_module`)."""
    return save_serving_module(self.serving_module(), directory)
