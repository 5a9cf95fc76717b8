"""Track vectors: one dense vector per catalogue track, from one of three sources.

The recommender idea: "people with your taste" and taste-aware ranking need a
space where similar tracks sit close. Three ways to get one, chosen by a flag
(`source`):

- `two_tower`: the track tower of a trained two-tower model (trained here on
  the same split, or read from a two-tower export's `candidates/`).
- `text`: the track's text (lyrics, lyric summary, title) through word
  vectors, averaged over its tokens with stop words removed. Word vectors are
  learned from co-listening (`word_vectors="colisten"`: words that the same
  listeners' tracks use get close vectors: a truncated SVD of the positive
  PMI of a word x user count matrix), learned from the text alone
  (`"cooccurrence"`: SVD of the PPMI of words appearing in the same track),
  or read from a pretrained file in GloVe's text format (`word v1 v2 ...`,
  one word per line) that the user supplies (pass its path).
- `column`: a precomputed vector column of the items table (a list/array
  per row, or a `|`-separated string of numbers).

Tokenization (`tokenize`) is Unicode-aware: NFKC normalization, case folding
(so `Straße` and `STRASSE` meet), words split at punctuation and whitespace
(`\\w+` in Unicode mode: `café`, `naïve`, `東京` stay whole), stop words removed.
Tracks without any known token get a zero vector and `has_vector = False`.
"""

import dataclasses
import logging
import re
import unicodedata
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from tfrec_music import io

SOURCES = ("two_tower", "text", "column")
LEARNED_WORD_VECTORS = ("colisten", "cooccurrence")
DEFAULT_TEXT_COLUMNS = ("title", "text")

# A compact English stop-word list (NLTK's core list, folded): function words
# that every lyric uses and that say nothing about taste.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in
into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up
very was we were what when where which while who whom why will with would you your yours
yourself yourselves oh yeah ooh la na got get like one way time s t d ll m re ve
""".split())

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def tokenize(text: Optional[str], stop_words: Iterable[str] = STOP_WORDS) -> List[str]:
  """Lowercased (case-folded) word tokens of `text`, punctuation split off, stop words out.

  Example:
    >>> tokenize("Don't STOP the Café-Music, naïve!")
    ['don', 'stop', 'café', 'music', 'naïve']

  Args:
    text: Any string (None or NaN give no tokens).
    stop_words: Tokens to drop (already folded).

  Returns:
    Tokens in order. Underscores and digits stay inside words (`\\w`).
  """
  if text is None or (isinstance(text, float) and text != text):
    return []
  folded = unicodedata.normalize("NFKC", str(text)).casefold()
  stop = stop_words if isinstance(stop_words, (set, frozenset)) else set(stop_words)
  return [t for t in _TOKEN_RE.findall(folded) if t not in stop]


@dataclasses.dataclass
class TrackVectors:
  """Vectors of the catalogue tracks.

  Attributes:
    item_ids: [n_items] ids, in the prepared catalogue order.
    vectors: [n_items, d] float32.
    has_vector: [n_items] bool; False where the source had nothing (no known
      token, missing column value): the row is zeros.
    source: How they were made (`two_tower`, `text:colisten`, ...).
  """

  item_ids: np.ndarray
  vectors: np.ndarray
  has_vector: np.ndarray
  source: str

  @property
  def dim(self) -> int:
    """Vector size d."""
    return int(self.vectors.shape[1])

  def save(self, directory: str) -> None:
    """Writes `item_ids.txt`, `vectors.npy` and `has_vector.npy` (no pickles)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    io.makedirs(directory)
    io.write_text(io.join(directory, "item_ids.txt"),
                  "".join(str(i) + "\n" for i in self.item_ids))
    io.write_text(io.join(directory, "source.txt"), self.source + "\n")
    for name, array in (("vectors", self.vectors.astype(np.float32)),
                        ("has_vector", self.has_vector.astype(bool))):
      with tf.io.gfile.GFile(io.join(directory, f"{name}.npy"), "wb") as f:
        np.save(f, array, allow_pickle=False)

  @classmethod
  def load(cls, directory: str) -> "TrackVectors":
    """Reads what `save` wrote."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    ids = np.asarray(io.read_text(io.join(directory, "item_ids.txt")).split("\n")[:-1])
    arrays = {}
    for name in ("vectors", "has_vector"):
      with tf.io.gfile.GFile(io.join(directory, f"{name}.npy"), "rb") as f:
        arrays[name] = np.load(f, allow_pickle=False)
    return cls(ids, arrays["vectors"], arrays["has_vector"],
               io.read_text(io.join(directory, "source.txt")).strip())


# --------------------------------------------------------------------------
# Word vectors.
# --------------------------------------------------------------------------


class WordVectors:
  """A word -> vector table.

  Args:
    words: [W] distinct (folded) words.
    matrix: [W, d] their vectors.
    name: Where they came from (for logs and model cards).
  """

  def __init__(self, words: Sequence[str], matrix: np.ndarray, name: str = "words"):
    matrix = np.asarray(matrix, np.float32)
    if matrix.ndim != 2 or len(words) != len(matrix):
      raise ValueError("`matrix` should be [len(words), d]. Received: "
                       f"{len(words)} words and matrix shape {matrix.shape}.")
    self.words = list(words)
    self.matrix = matrix
    self.name = name
    self.index = {w: i for i, w in enumerate(self.words)}

  @property
  def dim(self) -> int:
    """Vector size d."""
    return int(self.matrix.shape[1])

  @classmethod
  def from_glove(cls, path: str, max_words: int = 0) -> "WordVectors":
    """Reads a GloVe-format text file: one `word v1 v2 ... vd` per line.

    Words are case-folded and NFKC-normalized like the tokens; when two
    lines fold to the same word, the first (GloVe files are frequency
    sorted) wins. A header line `<count> <dim>` (word2vec text format) is
    skipped.

    Args:
      path: Local or `tf.io.gfile` path.
      max_words: Keep only the first lines (0 = all).

    Raises:
      ValueError: naming the file, the line and the fix, for a line with a
        different number of values or a value that is not a number.
    """
    text = io.read_text(path)
    words: List[str] = []
    rows: List[np.ndarray] = []
    seen = set()
    dim = None
    for number, line in enumerate(text.splitlines(), start=1):
      parts = line.rstrip().split(" ")
      if not line.strip():
        continue
      if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
        continue  # word2vec header
      if len(parts) < 2:
        raise ValueError(f"{path}, line {number}: expected `word v1 v2 ...` (GloVe text "
                         f"format). Received: {line[:80]!r}. Remove the line or add its values.")
      try:
        values = np.asarray(parts[1:], dtype=np.float32)
      except ValueError as e:
        raise ValueError(f"{path}, line {number}: the values after the word must be numbers "
                         f"({e}). Words with spaces are not supported: join them with '_'.") from e
      if dim is None:
        dim = len(values)
      elif len(values) != dim:
        raise ValueError(f"{path}, line {number}: {len(values)} values, but earlier lines have "
                         f"{dim}. Every line needs the same number of values; fix or remove it.")
      if not np.all(np.isfinite(values)):
        raise ValueError(f"{path}, line {number}: non-finite value. Replace NaN/inf values.")
      word = unicodedata.normalize("NFKC", parts[0]).casefold()
      if word in seen:
        continue
      seen.add(word)
      words.append(word)
      rows.append(values)
      if max_words and len(words) >= max_words:
        break
    if not words:
      raise ValueError(f"{path}: no word vectors found. Expected GloVe text format "
                       "`word v1 v2 ...`, one word per line.")
    return cls(words, np.stack(rows), name=f"glove:{path}")

  def embed(self, token_lists: Sequence[Sequence[str]]) -> Tuple[np.ndarray, np.ndarray]:
    """Mean word vector of each token list.

    Args:
      token_lists: [N] lists of tokens (unknown tokens are skipped).

    Returns:
      ([N, d] float32 means (zeros where no token is known), [N] known-token counts).
    """
    out = np.zeros((len(token_lists), self.dim), np.float32)
    counts = np.zeros(len(token_lists), np.int64)
    for row, tokens in enumerate(token_lists):
      ids = [self.index[t] for t in tokens if t in self.index]
      if ids:
        out[row] = self.matrix[ids].mean(axis=0)
        counts[row] = len(ids)
    return out, counts


def _ppmi_svd(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, n_rows: int,
              n_cols: int, dim: int, seed: int) -> np.ndarray:
  """Row vectors of the positive-PMI matrix of (row, col) counts, by truncated SVD.

  Returns [n_rows, dim'] with dim' = min(dim, n_rows, n_cols): U_k sqrt(S_k).
  """
  m = np.zeros((n_rows, n_cols), np.float64)
  np.add.at(m, (rows, cols), counts)
  total = m.sum()
  if total <= 0:
    raise ValueError("No co-occurrence counts to learn word vectors from.")
  row_sum = m.sum(1, keepdims=True)
  # Context smoothing (alpha = 0.75, as in word2vec) keeps rare users/words
  # from dominating the PMI.
  col = m.sum(0, keepdims=True) ** 0.75
  col = col / max(col.sum(), 1e-12)
  with np.errstate(divide="ignore", invalid="ignore"):
    pmi = np.log((m / total) / np.maximum(row_sum / total, 1e-300) / np.maximum(col, 1e-300))
  ppmi = np.where((m > 0) & np.isfinite(pmi), np.maximum(pmi, 0.0), 0.0)
  k = max(1, min(dim, n_rows, n_cols))
  rng = np.random.default_rng(seed)
  if k < min(n_rows, n_cols) // 2:
    # Randomized range finder (Halko et al.), 2 power iterations.
    q = np.linalg.qr(ppmi @ rng.normal(size=(n_cols, k + 10)))[0]
    for _ in range(2):
      q = np.linalg.qr(ppmi @ (ppmi.T @ q))[0]
    u_small, s, _ = np.linalg.svd(q.T @ ppmi, full_matrices=False)
    u = q @ u_small
  else:
    u, s, _ = np.linalg.svd(ppmi, full_matrices=False)
  return (u[:, :k] * np.sqrt(s[:k])).astype(np.float32)


def _vocabulary(token_lists: Sequence[Sequence[str]], min_count: int,
                max_words: int) -> List[str]:
  counts = pd.Series([t for tokens in token_lists for t in tokens], dtype=object).value_counts()
  counts = counts[counts >= min_count]
  words = counts.index[:max_words].tolist() if max_words else counts.index.tolist()
  if not words:
    raise ValueError("The catalogue text has no token that occurs at least `min_count` = "
                     f"{min_count} times after stop-word removal; no word vectors can be "
                     "learned. Use `track_vectors=two_tower` or `column`, or a GloVe file.")
  return words


def learn_colistening_word_vectors(token_lists: Sequence[Sequence[str]],
                                   interactions: pd.DataFrame, item_index: np.ndarray,
                                   dim: int = 32, min_count: int = 2,
                                   max_words: int = 5000, max_users: int = 20_000,
                                   seed: int = 0) -> WordVectors:
  """Word vectors from co-listening: PPMI(word, listener) factorized by SVD.

  Each training interaction adds the track's tokens to its listener's
  column, so two words get close vectors when the same listeners play
  tracks that use them; averaging them then places a never-played track by
  its text among the tracks its likely listeners play.

  Args:
    token_lists: [n_items] token lists in catalogue order.
    interactions: Training rows (`user_id`, `item_id`).
    item_index: [len(interactions)] catalogue index of each row's item.
    dim: Vector size.
    min_count: Least token count (over the catalogue) to get a vector.
    max_words: Most frequent words kept (0 = all).
    max_users: Most active listeners used as contexts (bounds memory).
    seed: Seed of the randomized SVD.
  """
  words = _vocabulary(token_lists, min_count, max_words)
  word_index = {w: i for i, w in enumerate(words)}
  item_tokens = [np.asarray([word_index[t] for t in tokens if t in word_index], np.int64)
                 for tokens in token_lists]
  users = interactions["user_id"].astype(str).to_numpy()
  top_users = pd.Series(users).value_counts().index[:max_users]
  user_col = pd.Index(top_users).get_indexer(users)
  keep = (user_col >= 0) & (np.asarray(item_index) >= 0)
  lengths = np.asarray([len(item_tokens[i]) for i in np.asarray(item_index)[keep]], np.int64)
  rows = (np.concatenate([item_tokens[i] for i in np.asarray(item_index)[keep]])
          if keep.any() else np.zeros(0, np.int64))
  cols = np.repeat(user_col[keep], lengths)
  matrix = _ppmi_svd(rows, cols, np.ones(len(rows)), len(words), len(top_users), dim, seed)
  return WordVectors(words, matrix, name="colisten")


def learn_cooccurrence_word_vectors(token_lists: Sequence[Sequence[str]], dim: int = 32,
                                    min_count: int = 2, max_words: int = 5000,
                                    seed: int = 0) -> WordVectors:
  """Word vectors from the text alone: PPMI(word, word in the same track) by SVD."""
  words = _vocabulary(token_lists, min_count, max_words)
  word_index = {w: i for i, w in enumerate(words)}
  rows, cols = [], []
  for tokens in token_lists:
    ids = np.unique([word_index[t] for t in tokens if t in word_index]).astype(np.int64)
    if len(ids) > 1:
      rows.append(np.repeat(ids, len(ids)))
      cols.append(np.tile(ids, len(ids)))
  rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
  cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
  off_diagonal = rows != cols
  matrix = _ppmi_svd(rows[off_diagonal], cols[off_diagonal], np.ones(int(off_diagonal.sum())),
                     len(words), len(words), dim, seed)
  return WordVectors(words, matrix, name="cooccurrence")


def item_token_lists(items: pd.DataFrame,
                     text_columns: Sequence[str] = DEFAULT_TEXT_COLUMNS) -> List[List[str]]:
  """Tokens of each item's text columns joined (columns the table lacks are skipped).

  Raises:
    ValueError: none of `text_columns` is in the items table.
  """
  present = [c for c in text_columns if c in items.columns]
  if not present:
    raise ValueError(f"`track_vectors=text` needs a text column {list(text_columns)} in the "
                     f"items table; it has {sorted(items.columns)}. Add `text` or `title`, set "
                     "`text_columns`, or choose `track_vectors=two_tower`.")
  out = [[] for _ in range(len(items))]
  for column in present:
    for row, value in enumerate(items[column].to_numpy()):
      out[row].extend(tokenize(value))
  return out


# --------------------------------------------------------------------------
# The three sources.
# --------------------------------------------------------------------------


def text_track_vectors(prepared, word_vectors: str = "colisten", dim: int = 32,
                       text_columns: Sequence[str] = DEFAULT_TEXT_COLUMNS,
                       min_count: int = 2, seed: int = 0) -> TrackVectors:
  """Track vectors from text through word vectors (see the module docstring).

  Args:
    prepared: `PreparedData` (catalogue; training split for co-listening).
    word_vectors: `colisten`, `cooccurrence` or the path of a GloVe file.
    dim: Size of learned word vectors (a file sets its own).
    text_columns: Item columns whose text is used, joined.
    min_count: Least catalogue count of a learned word.
    seed: SVD seed.
  """
  tokens = item_token_lists(prepared.items, text_columns)
  if word_vectors == "colisten":
    words = learn_colistening_word_vectors(
        tokens, prepared.train, prepared.item_index(prepared.train["item_id"]), dim=dim,
        min_count=min_count, seed=seed)
  elif word_vectors == "cooccurrence":
    words = learn_cooccurrence_word_vectors(tokens, dim=dim, min_count=min_count, seed=seed)
  else:
    if not io.exists(word_vectors):
      raise ValueError(f"`word_vectors` should be one of {LEARNED_WORD_VECTORS} or the path of "
                       f"a GloVe-format file. Received: `word_vectors` = {word_vectors!r} "
                       "(no such file).")
    words = WordVectors.from_glove(word_vectors)
  vectors, counts = words.embed(tokens)
  has = counts > 0
  logging.info("Text track vectors (%s, d=%d): %d of %d tracks have known tokens.",
               words.name, words.dim, int(has.sum()), len(has))
  return TrackVectors(prepared.item_ids, vectors, has, f"text:{words.name}")


def parse_vector_cell(value, row: int, column: str) -> Optional[np.ndarray]:
  """One cell of a precomputed vector column: list/array or `|`/space-separated numbers.

  Returns None for a missing value.

  Raises:
    ValueError: naming the row and column, for text that is not numbers.
  """
  if value is None or (isinstance(value, float) and value != value):
    return None
  if isinstance(value, str):
    text = value.strip()
    if not text:
      return None
    parts = [p for p in re.split(r"[|,\s]+", text.strip("[]")) if p]
    try:
      return np.asarray(parts, np.float32)
    except ValueError as e:
      raise ValueError(f"items, row {row + 1}, column `{column}`: expected numbers separated by "
                       f"'|' (e.g. 0.1|0.2|0.3). Received: {value[:60]!r}.") from e
  return np.asarray(value, np.float32).ravel()


def column_track_vectors(prepared, column: str = "text_vector") -> TrackVectors:
  """Track vectors read from a precomputed column of the items table.

  Raises:
    ValueError: the column is missing, or rows have different lengths or
      non-finite values (naming the row).
  """
  items = prepared.items
  if column not in items.columns:
    raise ValueError(f"`track_vectors=column` needs the items column `{column}`; the items "
                     f"table has {sorted(items.columns)}. Set `vector_column` to the right "
                     "name, or choose `track_vectors=text` or `two_tower`.")
  cells = [parse_vector_cell(v, row, column) for row, v in enumerate(items[column].to_numpy())]
  dims = {len(c) for c in cells if c is not None}
  if not dims:
    raise ValueError(f"items column `{column}` has no values.")
  if len(dims) > 1:
    first = next(c for c in cells if c is not None)
    row = next(r for r, c in enumerate(cells) if c is not None and len(c) != len(first))
    raise ValueError(f"items, row {row + 1} (item {items['item_id'].iloc[row]!r}), column "
                     f"`{column}`: {len(cells[row])} values, but earlier rows have "
                     f"{len(first)}. Every vector needs the same length.")
  dim = dims.pop()
  vectors = np.zeros((len(items), dim), np.float32)
  has = np.zeros(len(items), bool)
  for row, cell in enumerate(cells):
    if cell is not None:
      if not np.all(np.isfinite(cell)):
        raise ValueError(f"items, row {row + 1}, column `{column}`: non-finite value. "
                         "Replace NaN/inf, or leave the cell empty for a missing vector.")
      vectors[row] = cell
      has[row] = True
  return TrackVectors(prepared.item_ids, vectors, has, f"column:{column}")


def two_tower_track_vectors(prepared, job_dir: str = "", preset: str = "default",
                            overrides: Optional[Dict] = None,
                            export_dir: str = "") -> TrackVectors:
  """Track vectors from a two-tower track tower.

  Args:
    prepared: `PreparedData`.
    job_dir: Where the two-tower trains (logs); `<job_dir>/two_tower`.
    preset: Two-tower preset (`tiny`, `default`).
    overrides: Two-tower config overrides.
    export_dir: If set, a two-tower version folder (or its `candidates/`) to
      read the vectors from instead of training; catalogue tracks the export
      lacks get `has_vector = False`.
  """
  if export_dir:
    from tfrec_music.export.retrieval import load_candidates  # pylint: disable=g-import-not-at-top
    folder = export_dir if io.exists(io.join(export_dir, "item_ids.txt")) else io.join(
        export_dir, "candidates")
    if not io.exists(io.join(folder, "item_ids.txt")):
      raise ValueError(f"`two_tower_export` = {export_dir!r} holds no `candidates/item_ids.txt`; "
                       "pass a two-tower version folder, e.g. saved_models/two_tower/1.")
    ids, embeddings = load_candidates(folder)
    pos = pd.Index(ids).get_indexer(pd.Series(prepared.item_ids).astype(str))
    vectors = np.zeros((prepared.n_items, embeddings.shape[1]), np.float32)
    has = pos >= 0
    vectors[has] = embeddings[pos[has]]
    return TrackVectors(prepared.item_ids, vectors, has, f"two_tower:{export_dir}")
  from tfrec_music.models.two_tower import TwoTowerFamily  # pylint: disable=g-import-not-at-top
  config = TwoTowerFamily.make_config(preset, dict(overrides or {}))
  family = TwoTowerFamily(config, prepared)
  family.fit(io.join(job_dir or "jobs", "two_tower"))
  vectors = family.item_embeddings().astype(np.float32)
  out = TrackVectors(prepared.item_ids, vectors, np.ones(prepared.n_items, bool), "two_tower")
  out.family = family  # kept so callers can export or inspect it
  return out


def track_vectors(prepared, source: str, *, job_dir: str = "", word_vectors: str = "colisten",
                  word_dim: int = 32, text_columns: Sequence[str] = DEFAULT_TEXT_COLUMNS,
                  vector_column: str = "text_vector", two_tower_preset: str = "default",
                  two_tower_overrides: Optional[Dict] = None, two_tower_export: str = "",
                  seed: int = 0) -> TrackVectors:
  """Track vectors from the source the flag names (`two_tower`, `text`, `column`).

  Raises:
    ValueError: unknown source, or the source's own input errors.
  """
  if source == "two_tower":
    return two_tower_track_vectors(prepared, job_dir, two_tower_preset, two_tower_overrides,
                                   two_tower_export)
  if source == "text":
    return text_track_vectors(prepared, word_vectors, word_dim, text_columns, seed=seed)
  if source == "column":
    return column_track_vectors(prepared, vector_column)
  raise ValueError(f"`track_vectors` should be one of {SOURCES}. "
                   f"Received: `track_vectors` = {source!r}.")
