"""Retrieval exports: a query model in front of an exact or ScaNN top-k index.

Reused by every retrieval family (two-tower, ALS, user similarity). A version
folder holds:

- the exact-index SavedModel itself (what stock TF Serving loads),
- `scann/`: the same signatures over a ScaNN index (needs ScaNN's ops: a
  ScaNN-enabled server or Python with `scann` imported),
- `query_tower/`, `candidate_tower/`: the towers alone, raw features in,
- `candidates/`: `item_ids.txt`, `embeddings.npy` and `metadata.tsv`, for an
  external vector index.

Signatures of the index models:
- `serving_default(user_id)`: known users use the features stored for them
  at export (e.g. recent history); their stored history is excluded.
- `recommend(user_id, <query features>, exclude)`: everything raw, for new
  users; `exclude` holds track ids (padded with "").
Users the model cannot place (unknown id, and no history track that is in
the catalogue) get the popularity fallback, never an error. Unknown ids in
`exclude` are ignored; `k` is fixed at export and clamped to the catalogue.
"""

from typing import Callable, Dict, Optional

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_music import io
from tfrec_music.export.saved_model import save_module

# Score of a result slot no track is left for (k at the catalogue size, minus
# the excluded tracks): the lowest float32, with item id "".
EMPTY_SCORE = float(np.finfo(np.float32).min)

# Default ScaNN search breadth: the share of leaves each query searches, and
# the tracks those leaves should at least hold (see `default_scann_options`).
SCANN_SEARCH_SHARE = 0.05
SCANN_MIN_SEARCHED = 5000
# Fewer candidates than ScaNN's quantizer has centres per block (16).
SCANN_MIN_CANDIDATES = 16


def make_scann_index(candidates: np.ndarray, identifiers: np.ndarray, k: int,
                     scann_options: Optional[Dict[str, int]] = None
                     ) -> tfrs.layers.factorized_top_k.TopK:
  """A ScaNN top-k index over candidate vectors (dot product).

  ScaNN's 4-bit quantization trains 16 centres per block, so it needs at
  least 16 candidates: smaller catalogues get an exact (brute-force) index
  with the same call signature.

  Args:
    candidates: [n_items, d] float32 vectors.
    identifiers: [n_items] item ids.
    k: Number of results the index returns per query.
    scann_options: Overrides of `default_scann_options` (`num_leaves`,
      `num_leaves_to_search`, `num_reordering_candidates`,
      `dimensions_per_block`, ...: keyword arguments of
      `tfrs.layers.factorized_top_k.ScaNN`).

  Returns:
    The indexed TFRS ScaNN layer (`BruteForce` under 16 candidates).
  """
  n = int(len(candidates))
  ids = tf.constant(np.asarray(identifiers).astype(str).astype(object), tf.string)
  if n < SCANN_MIN_CANDIDATES:
    return tfrs.layers.factorized_top_k.BruteForce(k=k).index(
        tf.constant(candidates, tf.float32), ids)
  options = default_scann_options(n, k)
  options.update(scann_options or {})
  index = tfrs.layers.factorized_top_k.ScaNN(k=k, distance_measure="dot_product", **options)
  index.index(tf.constant(candidates, tf.float32), ids)
  return index


def default_scann_options(n_items: int, k: int) -> Dict[str, int]:
  """Tree + quantization + reordering settings, scaled with the catalogue.

  About sqrt(n) leaves (at most 2,000); each query searches 5% of them, but
  at least enough leaves to cover ~5,000 tracks, so small catalogues are
  searched almost exhaustively (cheap) and large ones stay fast. Scores are
  4-bit asymmetric-hashing approximations (2 dimensions per block); the best
  1,000 (at least `k`, at most the catalogue) are re-scored exactly.

  Chosen with `benchmarks.scann_recall --sweep` on the vectors of a trained
  two-tower (its track tower over 1 M synthetic tracks, its user tower's
  queries; tuning half of the users): recall@10 against the exact index 0.997
  at 1 M, as with 10% of the leaves searched, at about 20% less CPU per query;
  on the other half of the users 0.997 at 1 M and 0.998 at 100 k. A second
  two-tower (other hyperparameters) gives 0.996 at 1 M and 0.999 at 100 k.
  On unstructured (random Gaussian) vectors, the worst case, recall@10 is far
  lower (0.46 at 1 M; 0.62 searching 10%): measure recall on your own
  catalogue, and pass `scann_options` where it falls short.

  Args:
    n_items: Catalogue size.
    k: Results the index returns per query.

  Returns:
    `num_leaves`, `num_leaves_to_search`, `num_reordering_candidates` and
    `dimensions_per_block`, as `tfrs.layers.factorized_top_k.ScaNN` takes them.
  """
  n_items = max(1, int(n_items))
  num_leaves = max(2, min(2000, int(np.sqrt(n_items))))
  leaf_size = max(1.0, n_items / num_leaves)
  to_search = max(int(np.ceil(SCANN_SEARCH_SHARE * num_leaves)),
                  int(np.ceil(SCANN_MIN_SEARCHED / leaf_size)))
  return {"num_leaves": num_leaves,
          "num_leaves_to_search": max(1, min(num_leaves, to_search)),
          "num_reordering_candidates": max(int(k), min(n_items, 1000)),
          "dimensions_per_block": 2}


class RetrievalServingModule(tf.Module):
  """Raw user features -> top-k track ids and scores, with fallbacks.

  Args:
    query_model: Callable raw feature dict -> [B, d] query vectors (encoders
      inside).
    query_signature: Raw query inputs other than `user_id` (name -> TensorSpec).
    candidates: [n_items, d] candidate vectors (None for an exact index whose
      `_scores` computes the scores without them).
    item_ids: [n_items] their ids.
    index_kind: `"exact"` (brute force over all candidates; exclusions are
      exact) or `"scann"` (approximate; the top `k + max_exclusions` are
      fetched, then exclusions are removed).
    known_users: [U] user ids whose features are stored.
    stored_features: name -> [U, ...] raw values of those users (the padded
      `history` among them), used by `serving_default`.
    fallback_ids: [k] item ids of the popularity fallback.
    fallback_scores: [k] their scores.
    k: Results per request (clamped to the catalogue size).
    max_exclusions: Exclusions honoured by the ScaNN variant.
    scann_options: ScaNN settings (see `make_scann_index`).
    stored_exclude: Optional [U, E] item ids (padded with "") that
      `serving_default` excludes for the known users: everything each user
      played up to the export, which can be more than the stored history.
      None: the stored `history` is excluded.
  """

  def __init__(self, query_model: Callable, query_signature: Dict[str, tf.TensorSpec],
               candidates: np.ndarray, item_ids: np.ndarray, index_kind: str,
               known_users: np.ndarray, stored_features: Dict[str, np.ndarray],
               fallback_ids: np.ndarray, fallback_scores: np.ndarray, k: int,
               max_exclusions: int = 200, scann_options: Optional[Dict[str, int]] = None,
               stored_exclude: Optional[np.ndarray] = None):
    super().__init__()
    if index_kind not in ("exact", "scann"):
      raise ValueError("`index_kind` should be 'exact' or 'scann'. "
                       f"Received: `index_kind` = {index_kind!r}.")
    n_items = len(item_ids)
    self.query_model = query_model
    self.index_kind = index_kind
    self.k = max(1, min(int(k), n_items))
    self.n_items = n_items
    ids = np.asarray(item_ids).astype(str).astype(object)
    self.item_ids = tf.Variable(ids, dtype=tf.string, trainable=False, name="item_ids")
    self.item_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string),
                                            tf.range(n_items, dtype=tf.int64)),
        default_value=-1)
    if index_kind == "exact":
      if candidates is not None:
        self.candidates = tf.Variable(np.asarray(candidates, np.float32), trainable=False,
                                      name="candidates")
    else:
      self.fetch_k = min(n_items, self.k + int(max_exclusions))
      self.index = make_scann_index(np.asarray(candidates, np.float32), ids, self.fetch_k,
                                    scann_options)
    self.feature_names = sorted(query_signature)
    self.user_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(known_users).astype(str).astype(object), tf.string),
            tf.range(len(known_users), dtype=tf.int64)), default_value=-1)
    self.stored = {name: tf.Variable(_as_tensor(values), trainable=False, name=f"stored_{name}")
                   for name, values in stored_features.items()}
    self.stored_exclude = (tf.Variable(_as_tensor(stored_exclude), trainable=False,
                                       name="stored_exclude")
                           if stored_exclude is not None else None)
    self.fallback_ids = tf.Variable(np.asarray(fallback_ids).astype(str).astype(object),
                                    dtype=tf.string, trainable=False)
    self.fallback_scores = tf.Variable(np.asarray(fallback_scores, np.float32), trainable=False)

    recommend_spec = dict(query_signature)
    recommend_spec["user_id"] = tf.TensorSpec([None], tf.string, name="user_id")
    recommend_spec["exclude"] = tf.TensorSpec([None, None], tf.string, name="exclude")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def serve(user_id):
      rows = self.user_table.lookup(user_id)
      safe = tf.maximum(rows, 0)
      known = rows >= 0
      features = {"user_id": user_id}
      for name in self.feature_names:
        values = tf.gather(self.stored[name], safe)
        # Unknown users get empty (missing) features.
        empty = tf.zeros_like(values) if values.dtype != tf.string else tf.fill(tf.shape(values), "")
        mask = tf.reshape(known, [-1] + [1] * (len(values.shape) - 1))
        features[name] = tf.where(mask, values, empty)
      exclude = features.get("history", tf.fill([tf.shape(user_id)[0], 1], ""))
      if self.stored_exclude is not None:
        seen = tf.gather(self.stored_exclude, safe)
        exclude = tf.where(known[:, tf.newaxis], seen, tf.fill(tf.shape(seen), ""))
      return self._recommend(features, exclude, known)

    @tf.function(input_signature=[recommend_spec])
    def recommend(inputs):
      inputs = dict(inputs)
      exclude = inputs.pop("exclude")
      known = self.user_table.lookup(inputs["user_id"]) >= 0
      return self._recommend(inputs, exclude, known)

    self.serve = serve
    self.recommend = recommend

  def _scores(self, queries):
    """[B, n_items] exact scores (a subclass whose query model scores itself overrides this)."""
    return tf.matmul(queries, self.candidates, transpose_b=True)

  def _top_k(self, queries, exclude):
    if self.index_kind == "exact":
      scores = self._scores(queries)
      excluded = self.item_table.lookup(exclude)
      rows = tf.broadcast_to(tf.range(tf.shape(excluded)[0], dtype=tf.int64)[:, tf.newaxis],
                             tf.shape(excluded))
      valid = excluded >= 0
      where = tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(excluded, valid)], axis=1)
      scores = tf.tensor_scatter_nd_update(
          scores, where, tf.fill([tf.shape(where)[0]], tf.constant(-np.inf, tf.float32)))
      top_scores, top = tf.math.top_k(scores, k=self.k)
      return top_scores, tf.gather(self.item_ids, top)
    scores, ids = self.index(queries, k=self.fetch_k)
    # ScaNN answers an empty batch with [0, 0]; give it the columns top_k needs.
    scores = tf.reshape(scores, [-1, self.fetch_k])
    ids = tf.reshape(ids, [-1, self.fetch_k])
    hit = tf.reduce_any(tf.equal(ids[:, :, tf.newaxis], exclude[:, tf.newaxis, :]), axis=2)
    scores = tf.where(hit, tf.constant(-np.inf, scores.dtype), scores)
    top_scores, top = tf.math.top_k(scores, k=self.k)
    return top_scores, tf.gather(ids, top, batch_dims=1)

  def _recommend(self, features, exclude, known):
    queries = self.query_model(features)
    scores, ids = self._top_k(queries, exclude)
    has_history = known
    if "history" in features:
      # Only history tracks of the catalogue count: a history of unknown ids
      # alone is no better than none and gets the popularity fallback.
      in_catalogue = self.item_table.lookup(features["history"]) >= 0
      has_history = known | tf.reduce_any(in_catalogue, axis=1)
    batch = tf.shape(queries)[0]
    fb_ids = tf.tile(self.fallback_ids[tf.newaxis, :self.k], [batch, 1])
    fb_scores = tf.tile(self.fallback_scores[tf.newaxis, :self.k], [batch, 1])
    use = has_history[:, tf.newaxis]
    ids, scores = tf.where(use, ids, fb_ids), tf.where(use, scores, fb_scores)
    # With k near the catalogue size fewer than k tracks remain once the
    # excluded ones are removed: those slots come back as "" / EMPTY_SCORE,
    # after the real results, never as an excluded track at -inf.
    empty = tf.equal(scores, tf.constant(-np.inf, scores.dtype))
    return {"item_ids": tf.where(empty, tf.constant("", tf.string), ids),
            "scores": tf.where(empty, tf.constant(EMPTY_SCORE, scores.dtype), scores),
            "fallback": tf.logical_not(has_history)}

  def signatures(self) -> Dict[str, Callable]:
    """Signatures for `tf.saved_model.save`."""
    return {"serving_default": self.serve, "recommend": self.recommend}


def _as_tensor(values: np.ndarray) -> tf.Tensor:
  values = np.asarray(values)
  if values.dtype.kind in "OUS":
    return tf.constant(values.astype(str).astype(object), tf.string)
  return tf.constant(values)


def save_retrieval_module(module: RetrievalServingModule, directory: str) -> None:
  """Saves a serving module; ScaNN ones need the `Scann` op namespace whitelisted."""
  save_module(module, directory, signatures=module.signatures(),
              scann_ops=module.index_kind == "scann")


def save_candidates(directory: str, item_ids: np.ndarray, embeddings: np.ndarray,
                    metadata: Optional[Dict[str, np.ndarray]] = None) -> None:
  """Writes `item_ids.txt`, `embeddings.npy` (no pickle) and `metadata.tsv`."""
  io.makedirs(directory)
  ids = np.asarray(item_ids).astype(str)
  io.write_text(io.join(directory, "item_ids.txt"), "".join(i + "\n" for i in ids))
  with tf.io.gfile.GFile(io.join(directory, "embeddings.npy"), "wb") as f:
    np.save(f, np.asarray(embeddings, np.float32), allow_pickle=False)
  if metadata:
    names = list(metadata)
    lines = ["item_id\t" + "\t".join(names)]
    for row, item in enumerate(ids):
      cells = [str(metadata[n][row]).replace("\t", " ").replace("\n", " ") for n in names]
      lines.append(item + "\t" + "\t".join(cells))
    io.write_text(io.join(directory, "metadata.tsv"), "\n".join(lines) + "\n")


def load_candidates(directory: str):
  """Reads `save_candidates` output: (item_ids [n], embeddings [n, d])."""
  ids = io.read_text(io.join(directory, "item_ids.txt")).split("\n")[:-1]
  with tf.io.gfile.GFile(io.join(directory, "embeddings.npy"), "rb") as f:
    embeddings = np.load(f, allow_pickle=False)
  return np.asarray(ids), embeddings
