"""DCN v2 rating (or click) prediction plugged into the training pipeline (`--model dcn`).

- `--labels explicit`: the output is the rating, trained with MSE, evaluated
  with RMSE / MSE / MAE beside the global mean, the biased baseline
  alpha + beta_u + beta_i and biased MF on the same split.
- `--labels implicit`: every interaction is a positive, `--negatives`
  uniformly sampled tracks per positive are negatives; sigmoid
  cross-entropy, evaluated with AUC and log loss.

Split: a seeded 80/10/10 ratio split of the rating rows (`prepare_overrides`),
no users held out: the question is how well held-out ratings of known users
and tracks are predicted. The k-core filter still runs first; the few test
rows whose user or track has no training rating are scored through the
fallback (counted as `test/all/unseen_user_rows` and `unseen_item_rows`).
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io
from tfrec_music.evaluation.rating import binary_metrics
from tfrec_music.evaluation.rating_scorers import baseline_scorers
from tfrec_music.evaluation.rating_scorers import evaluate_rating_scorers
from tfrec_music.fit_callbacks import EpochTimer
from tfrec_music.fit_loop import config_fingerprint
from tfrec_music.fit_loop import fit_with_validation
from tfrec_music.models.dcn import config as config_lib
from tfrec_music.models.dcn.config import DCNConfig
from tfrec_music.models.dcn.config import RATING_TABLE_KEYS
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
from tfrec_music.models.dcn.stream import StreamedDCN
from tfrec_music.models.family import ModelFamily
from tfrec_music.models.rating_baselines import fit_rating_baselines
from tfrec_music.pipeline.epochs import epoch_batches
from tfrec_music.pipeline.epochs import feature_signature
from tfrec_music.pipeline.lookups import lookup_indices
from tfrec_music.prepare.prepared import PreparedData


class DCNFamily(ModelFamily):
  """DCN v2 rating (or click) prediction plugged into the training pipeline."""

  name = "dcn"
  config_class = DCNConfig
  supports_parameter_server = True
  table_keys = RATING_TABLE_KEYS
  # Random 80/10/10 split of rating rows, no held-out users (see the module docstring).
  prepare_overrides = {"split": "ratio", "ratios": (0.8, 0.1, 0.1), "cold_user_share": 0.0}
  # Tuning minimizes the validation RMSE (explicit labels; see `validation_metrics`).
  objective = ("valid/all/rmse", "min")

  @classmethod
  def objective_for(cls, config: DCNConfig) -> Tuple[str, str]:
    """Validation RMSE for ratings; validation AUC for implicit labels."""
    return ("valid/all/auc", "max") if config.labels == "implicit" else cls.objective

  # Presets, CLI flags and the tuning search space live in `config`.
  config_module = config_lib

  def __init__(self, config: DCNConfig, prepared: PreparedData):
    super().__init__(config, prepared)
    if config.labels == "explicit" and "rating" not in prepared.train.columns:
      raise ValueError("`--labels explicit` needs a `rating` column in the interactions; "
                       "this data has none. Use `--labels implicit`.")
    items, users = prepared.items, prepared.users
    self.spec = RankingFeatureSpec.from_tables(items, users)
    self.vocabs = ranking_vocabularies(self.spec, prepared.train, items, users,
                                       prepared.vocabularies)
    train_items = items[items["item_id"].isin(set(self.vocabs["item_id"]))]
    mean, std = numeric_statistics(self.spec, train_items)
    self.encoder = RankingEncoder(self.spec, self.vocabs, mean, std, name="ranking_encoder")
    if config.labels == "explicit":
      ratings = prepared.train["rating"].to_numpy(np.float64)
      self.rating_range = (float(ratings.min()), float(ratings.max()))
      bias = float(ratings.mean())
    else:
      self.rating_range = (0.0, 1.0)
      bias = 0.0
    self.ranker = build_ranker(self.encoder, config, bias)
    self.model = DCNModel(self.ranker, config.labels)
    self.model.compile(optimizer=optimizer(config))
    self.raw_items = raw_item_table(items, self.spec)
    self.encoded_items = self._encode(self.raw_items, self.spec.item_columns)
    self.fit_summary: Dict[str, Any] = {}
    self._baselines = None
    self._fallback: Optional[FallbackBiases] = None

  # ----------------------------------------------------------------- encoding
  def _encode(self, raw: Dict[str, np.ndarray], columns: Sequence[str],
              batch_size: int = 8192) -> Dict[str, np.ndarray]:
    n = len(raw[columns[0]])
    parts: Dict[str, List[np.ndarray]] = {}
    for start in range(0, max(n, 1), batch_size):
      batch = {c: tf.constant(raw[c][start:start + batch_size]) for c in columns}
      for k, v in self.encoder.encode(batch, columns).items():
        parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}

  def pair_features(self, user_ids: Sequence[str], item_index: np.ndarray) -> Dict[str, np.ndarray]:
    """Encoded features of (user, catalogue item) pairs."""
    raw_users = raw_user_table(user_ids, self.prepared.users, self.spec)
    features = {"user_id": lookup_indices(raw_users["user_id"], self.vocabs["user_id"])}
    for column in self.spec.user_categorical:
      features[column] = lookup_indices(raw_users[column], self.vocabs[column])
    for key, values in self.encoded_items.items():
      features[key] = values[item_index]
    return features

  def _rows(self, frame: pd.DataFrame) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    return (self.pair_features(frame["user_id"].to_numpy(),
                               self.prepared.item_index(frame["item_id"])),
            self.prepared.item_index(frame["item_id"]))

  def _implicit_rows(self, frame: pd.DataFrame, seed: int) -> Dict[str, np.ndarray]:
    """Positives of `frame` plus `negatives` sampled tracks per positive (label 0)."""
    rng = np.random.default_rng(seed)
    n_items = self.prepared.n_items
    users = frame["user_id"].to_numpy().astype(str)
    pos = self.prepared.item_index(frame["item_id"])
    k = self.config.negatives
    neg_users = np.repeat(users, k)
    neg = rng.integers(0, n_items, size=len(neg_users))
    # Resample negatives that hit one of the user's known tracks (a few passes).
    known = set(zip(self.prepared.train["user_id"].astype(str),
                    self.prepared.item_index(self.prepared.train["item_id"])))
    known |= set(zip(users, pos))
    for _ in range(3):
      hit = np.fromiter(((u, i) in known for u, i in zip(neg_users, neg)), bool, len(neg))
      if not hit.any():
        break
      neg[hit] = rng.integers(0, n_items, size=int(hit.sum()))
    all_users = np.concatenate([users, neg_users])
    all_items = np.concatenate([pos, neg])
    features = self.pair_features(all_users, all_items)
    features["label"] = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    return features

  def training_features(self, epoch: int = 0) -> Dict[str, np.ndarray]:
    """Encoded training rows with labels (fresh negatives every epoch)."""
    if self.config.labels == "explicit":
      features, _ = self._rows(self.prepared.train)
      features["label"] = self.prepared.train["rating"].to_numpy(np.float32)
      return features
    return self._implicit_rows(self.prepared.train, self.config.seed * 1000 + epoch)

  # ----------------------------------------------------------------- training
  # Backup sub-folder of `fit_with_validation` (the cascade's re-ranker has its own).
  fit_name = "dcn"

  def fit(self, job_dir: str) -> Dict[str, Any]:
    """Trains with early stopping on the validation loss, keeping the best weights.

    Through `tfrec_music.fit_loop.fit_with_validation`: checkpoints every
    `self.checkpoint_every` steps (every epoch when 0) in `self.backup_dir`
    (default `<job_dir>/backup`), so a killed job rerun with the same command
    resumes there; a non-finite loss stops training with advice and keeps the
    last good checkpoint. The validation metric is the negated validation
    loss (MSE for ratings, log loss for implicit labels), since the loop
    keeps the highest value.
    """
    config = self.config
    n_train = len(self.prepared.train)
    if n_train == 0:
      raise ValueError("No training rows after preparation: give more data or lower `--kcore`.")
    valid = self._valid_features()
    first = self.training_features(0)
    n_rows = len(first["label"])
    steps = max(1, -(-n_rows // config.batch_size))
    signature = feature_signature(first)
    if config.labels == "implicit":
      # Fresh negatives every epoch, drawn when the epoch starts; epoch 0's draw is seeded by
      # the epoch, so `first` is handed over for it instead of drawn again (and freed by the
      # first call, whichever epoch a resumed run starts at).
      kept = [first]
      del first

      def draw(epoch: int) -> Dict[str, np.ndarray]:
        handed = kept.pop() if kept else None
        return handed if epoch == 0 and handed is not None else self.training_features(epoch)
    else:
      draw = lambda epoch: first  # noqa: E731  (the same ratings, reshuffled)
    dataset = epoch_batches(draw, steps,
                            lambda: int(self.model.optimizer.iterations.numpy()) // steps,
                            config.seed, signature)
    tensorboard = tf.keras.callbacks.TensorBoard(log_dir=io.join(job_dir, "logs", self.fit_name),
                                                 update_freq="epoch")
    timer = EpochTimer()
    loss_name = "mse" if config.labels == "explicit" else "log_loss"
    summary = fit_with_validation(
        self.model, dataset, epochs=config.epochs,
        validate=lambda epoch: -self._valid_loss(valid),
        patience=config.early_stopping_patience, job_dir=job_dir, name=self.fit_name,
        checkpoint_every=self.checkpoint_every, backup_dir=self.backup_dir,
        fingerprint=config_fingerprint(config, family=type(self).__name__,
                                       data=self.prepared.fingerprint),
        callbacks=[tensorboard, timer],
        nan_advice="Lower the learning rate (`--set learning_rate=...`) or the number of "
                   "cross layers (`--cross-layers`).",
        metric_name=f"neg_valid_{loss_name}")
    metric = f"neg_valid_{loss_name}"
    for entry in summary["history"]:
      entry["valid_loss"] = -entry[metric]
    summary["best_valid_loss"] = -summary.pop(f"best_{metric}")
    summary["valid_loss"] = loss_name
    summary["steps_per_epoch"] = steps
    summary["train_seconds"] = sum(timer.seconds)
    summary["examples_per_second"] = (timer.steps * n_rows / steps
                                      / max(summary["train_seconds"], 1e-9))
    summary["features"] = self.spec.as_dict()
    self.fit_summary = summary
    return self.fit_summary

  def _valid_features(self) -> Optional[Dict[str, np.ndarray]]:
    valid = self.prepared.valid
    if len(valid) == 0:
      return None
    if self.config.labels == "explicit":
      features, _ = self._rows(valid)
      features["label"] = valid["rating"].to_numpy(np.float32)
      return features
    return self._implicit_rows(valid, self.config.seed + 10_007)

  def _valid_loss(self, valid: Optional[Dict[str, np.ndarray]]) -> float:
    if valid is None:
      return float("nan")
    out = self.predict_encoded(valid)
    label = valid["label"]
    if self.config.labels == "explicit":
      return float(np.mean((out - label) ** 2))
    return binary_metrics(label, 1.0 / (1.0 + np.exp(-out)))["log_loss"]

  def predict_encoded(self, features: Dict[str, np.ndarray], batch_size: int = 16384) -> np.ndarray:
    """[N] model outputs (clipped ratings, or logits) of encoded rows."""
    keys = [k for k in features if k != "label"]
    n = len(features[keys[0]])
    outs = []
    for start in range(0, n, batch_size):
      batch = {k: tf.constant(features[k][start:start + batch_size]) for k in keys}
      outs.append(self.ranker(batch).numpy())
    out = np.concatenate(outs) if outs else np.zeros(0, np.float32)
    if n and "user_id" in features and "item_id" in features:
      # As served: unknown ids get the fallback, not the untrained OOV embeddings.
      out = self.fallback_biases().apply(features, out)
    if self.config.labels == "explicit":
      out = np.clip(out, *self.rating_range)
    return out.astype(np.float64)

  def predict(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """[N] predicted ratings (explicit) or probabilities (implicit) of pairs.

    Items outside the catalogue are not supported here (use the export's
    `serving_default`, which takes raw features).
    """
    index = self.prepared.item_index(item_ids)
    if (index < 0).any():
      raise ValueError(f"{int((index < 0).sum())} item ids are not in the catalogue.")
    out = self.predict_encoded(self.pair_features(user_ids, index))
    return out if self.config.labels == "explicit" else 1.0 / (1.0 + np.exp(-out))

  # ----------------------------------------------------------------- evaluation
  def score_fn(self):
    """Scorer factory for the full-ranking protocol: every catalogue track scored."""
    n_items = self.prepared.n_items

    def _scorer(split):
      del split

      def _score(user_ids):
        users = np.repeat(np.asarray(user_ids).astype(str), n_items)
        items = np.tile(np.arange(n_items), len(user_ids))
        return self.predict_encoded(self.pair_features(users, items)).reshape(-1, n_items)
      return _score
    return _scorer

  def baselines(self):
    """The three rating baselines fitted on the same training split (cached)."""
    if self._baselines is None:
      self._baselines = fit_rating_baselines(self.prepared.train, self.prepared.valid,
                                             mf_dim=self.config.baseline_mf_dim,
                                             seed=self.config.seed)
    return self._baselines

  def evaluate(self, context) -> Dict[str, Dict[str, float]]:
    """Explicit: RMSE / MSE / MAE of the model, global mean, biased baseline and
    biased MF on valid and test, overall and by cold / warm tracks.
    Implicit: AUC, log loss and accuracy on held-out positives plus sampled
    negatives."""
    del context
    if self.config.labels == "implicit":
      return {"model": self._evaluate_implicit()}
    fits = self.baselines()
    scorers = {"model": lambda frame: self.predict_encoded(self._rows(frame)[0]),
               **baseline_scorers(fits, self.rating_range)}
    out = evaluate_rating_scorers(self.prepared, scorers)
    for split in ("valid", "test"):
      frame = getattr(self.prepared, split)
      unseen_users = ~frame["user_id"].astype(str).isin(set(self.vocabs["user_id"]))
      unseen_items = ~frame["item_id"].astype(str).isin(set(self.vocabs["item_id"]))
      out["model"][f"{split}/all/unseen_user_rows"] = int(unseen_users.sum())
      out["model"][f"{split}/all/unseen_item_rows"] = int(unseen_items.sum())
    out["biased_mf"]["chosen_reg"] = fits.chosen["biased_mf/reg"]
    out["biased"]["chosen_reg"] = fits.chosen["biased/reg"]
    return out

  def validation_metrics(self) -> Dict[str, float]:
    """Validation-split metrics only: RMSE / MSE / MAE (explicit) or AUC / log loss (implicit).

    No test row is read, so tuning and model selection cannot peek at the test split.
    """
    valid = self.prepared.valid
    if len(valid) == 0:
      raise ValueError("The validation split is empty: tuning needs validation ratings. "
                       "Give more data or change the split ratios.")
    if self.config.labels == "implicit":
      features = self._implicit_rows(valid, self.config.seed + 20_011)
      prob = 1.0 / (1.0 + np.exp(-self.predict_encoded(features)))
      return {f"valid/all/{k}": v for k, v in binary_metrics(features["label"], prob).items()}
    return evaluate_rating_scorers(
        self.prepared, {"model": lambda frame: self.predict_encoded(self._rows(frame)[0])},
        splits=("valid",))["model"]

  def _evaluate_implicit(self) -> Dict[str, float]:
    metrics = {}
    for offset, split in enumerate(("valid", "test")):
      frame = getattr(self.prepared, split)
      if len(frame) == 0:
        continue
      features = self._implicit_rows(frame, self.config.seed + 20_011 + offset)
      prob = 1.0 / (1.0 + np.exp(-self.predict_encoded(features)))
      for key, value in binary_metrics(features["label"], prob).items():
        metrics[f"{split}/all/{key}"] = value
    return metrics

  # ----------------------------------------------------------------- export
  def serving_module(self) -> DCNServingModule:
    """The serving module (raw features in, lookups inside)."""
    known = np.asarray(self.vocabs["user_id"])
    return DCNServingModule(self.encoder, self.ranker, self.config.labels, self.raw_items,
                            raw_user_table(known, self.prepared.users, self.spec),
                            self.rating_range, self.fallback_biases())

  def fallback_biases(self) -> FallbackBiases:
    """The prediction for rows with an unknown (or empty) user or track id.

    Explicit labels: the biased baseline alpha + beta_u + beta_i fitted on the
    same training split (a known user with an unknown track gets alpha +
    beta_u, both unknown alpha). Implicit labels: the training share of
    positives, 1 / (1 + negatives), for every such row.
    """
    if self._fallback is None:
      sizes = self.encoder.vocab_sizes()
      user, item = np.zeros(sizes["user_id"]), np.zeros(sizes["item_id"])
      if self.config.labels == "explicit":
        biased = self.baselines().biased
        users, items = self.vocabs["user_id"], self.vocabs["item_id"]
        user[2:2 + len(users)] = biased.biases(users, [""] * len(users))[0]
        item[2:2 + len(items)] = biased.biases([""] * len(items), items)[1]
        offset = biased.alpha
      else:
        offset = -float(np.log(self.config.negatives))  # logit(1 / (1 + negatives))
      self._fallback = FallbackBiases(float(offset), user, item)
    return self._fallback

  def save(self, directory: str) -> Dict[str, str]:
    """SavedModel with `serving_default` (raw features) and `score_ids` (ids only)."""
    return save_serving_module(self.serving_module(), directory)

  @classmethod
  def stream_train(cls, data_dir: str, config: DCNConfig, job_dir: str, *,
                   checkpoint_every: int = 0, backup_dir: Optional[str] = None,
                   read_rows: int = 65_536
                   ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Any], Callable[[str], Any]]:
    """`--stream`: trains from Parquet shards (`StreamedDCN`); see `ModelFamily.stream_train`.

    The split is the hashed 80/10/10 split of `split_buckets` (no k-core);
    metrics are RMSE / MSE / MAE of the valid and test rows beside the
    training mean (`global_mean`).

    Returns:
      `(metrics, fit_summary, save_fn)`; `save_fn(directory)` writes the
      in-memory DCN's export contract and returns the signature descriptions.
    """
    streamed = StreamedDCN(data_dir, config, read_rows)
    streamed.checkpoint_every, streamed.backup_dir = checkpoint_every, backup_dir
    fit = streamed.fit(job_dir)
    return streamed.evaluate(), fit, streamed.save
