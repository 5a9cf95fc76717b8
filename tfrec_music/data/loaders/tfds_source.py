"""Loader for any tensorflow-datasets (TFDS) data set, e.g. `movielens/100k-ratings`.

TFDS recommendation data sets come as one example per interaction, with the
user's and the item's features repeated on every example. This loader reads
the examples in batches, decodes bytes to `str` and class labels to their
names, renames known features onto canonical columns, and splits the columns
into the canonical tables: user features (`user_*`, `country`, `username`) go
to `users`, item features (`title`, `tags`, `movie_*`, ...) to `items`, the
rest stays on `interactions`. Rows are numbered by example (the first example
of the split is row 1).
"""

from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)

import numpy as np
import pandas as pd

from tfrec_music.data.loaders import canonical
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import AUDIO_FEATURES
from tfrec_music.data.tables import DataValidationError
from tfrec_music.data.tables import ROW_COLUMN
from tfrec_music.data.tables import Tables

# Canonical name -> TFDS feature name, used when the canonical name is absent
# (MovieLens and the synthetic TFDS builder use these).
DEFAULT_COLUMNS: Dict[str, str] = {
    "item_id": "movie_id",
    "rating": "user_rating",
    "title": "movie_title",
    "tags": "movie_genres",
    "country": "user_country",
}

_INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "weight",
                        "playlist_id")
_ITEM_COLUMNS = frozenset(("title", "artist", "album", "tags", "genre", "parent_genre",
                           "genre_level", "text", "mood") + AUDIO_FEATURES)
_ITEM_WORDS = frozenset(("movie", "item", "track", "song", "artist", "album", "genre"))
_USER_COLUMNS = frozenset(("country", "username"))


def _table_of(column: str) -> str:
  if column in _INTERACTION_COLUMNS:
    return "interactions"
  words = set(column.lower().replace("/", "_").split("_"))
  if column in _USER_COLUMNS or "user" in words:
    return "users"
  if column in _ITEM_COLUMNS or words & _ITEM_WORDS:
    return "items"
  return "interactions"  # context features of the event itself


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("`--data tfds:<name>` needs tensorflow-datasets: "
                      "`pip install tensorflow-datasets`.") from e
  return tfds


def _flatten(batch, features, prefix: str = "") -> Iterator[Tuple[str, object, object]]:
  """Yields `(name, feature, values)` of a (possibly nested) batch dict."""
  for key, values in batch.items():
    name = f"{prefix}{key}"
    try:
      feature = features[key] if features is not None else None
    except (KeyError, TypeError):
      feature = None
    if isinstance(values, dict):
      # Nested FeaturesDict (possibly inside a Sequence): flatten as `outer/inner`.
      inner = getattr(feature, "feature", feature)
      yield from _flatten(values, inner if hasattr(inner, "keys") else None,
                          prefix=f"{name}/")
    else:
      yield name, feature, values


def _decode_scalar(value, labels: Optional[np.ndarray]):
  if labels is not None and isinstance(value, (int, np.integer)):
    return str(labels[int(value)])
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.generic):
    return value.item()
  return value


def _object_array(items: List) -> np.ndarray:
  out = np.empty(len(items), dtype=object)
  out[:] = items  # element-wise, so lists stay lists (np.array would stack them)
  return out


def _to_column(values, feature, tfds) -> np.ndarray:
  """Turns one batched feature into a [batch] array of Python-friendly values."""
  labels = None
  inner = feature
  if isinstance(feature, tfds.features.Sequence):
    inner = feature.feature
  if isinstance(inner, tfds.features.ClassLabel):
    labels = np.asarray(inner.names, dtype=object)
  if hasattr(values, "to_list") and not isinstance(values, np.ndarray):
    # A tf.RaggedTensor (variable-length feature, e.g. MovieLens genres).
    return _object_array([[_decode_scalar(v, labels) for v in row]
                          for row in values.to_list()])
  values = np.asarray(values)
  if values.ndim == 1:
    if labels is not None:
      return labels[values.astype(np.int64)]
    if values.dtype == object:
      return _object_array([v.decode("utf-8") if isinstance(v, bytes) else v
                            for v in values])
    return values
  # Fixed-shape vectors: one list per example.
  return _object_array([[_decode_scalar(v, labels) for v in row.ravel()]
                        for row in values])


def _read_examples(ds, features, tfds, batch_size: int) -> pd.DataFrame:
  chunks: Dict[str, List[np.ndarray]] = {}
  for batch in tfds.as_numpy(ds.ragged_batch(batch_size)):
    for name, feature, values in _flatten(batch, features):
      chunks.setdefault(name, []).append(_to_column(values, feature, tfds))
  return pd.DataFrame({name: np.concatenate(parts) for name, parts in chunks.items()})


def load_tfds(name: str, columns: Optional[Mapping[str, str]] = None,
              data_dir: Optional[str] = None, split: str = "train",
              report: Optional[DataReport] = None, max_rows: Optional[int] = None,
              batch_size: int = 8192) -> Tables:
  """Loads a tensorflow-datasets data set into canonical tables.

  For `movielens/100k-ratings` (and the other MovieLens ratings configs) the
  defaults give interactions (`user_id`, `item_id` from `movie_id`,
  `timestamp`, `rating` from `user_rating`), items (`title` from
  `movie_title`, `tags` from the `movie_genres` labels as strings) and users
  (`user_gender`, `user_zip_code`, ... as they are). Items and users take their
  features from their first example.

  Args:
    name: TFDS name, with config, e.g. `"movielens/100k-ratings"`.
    columns: Canonical name -> feature name; overrides `DEFAULT_COLUMNS`.
    data_dir: TFDS data folder (default: TFDS's own, `~/tensorflow_datasets`).
    split: Split to read, e.g. `"train"` or `"train[:10%]"`.
    report: Data report to record load counts in.
    max_rows: Read at most this many examples (for quick runs); default all.
    batch_size: Examples decoded per batch.

  Returns:
    Validated canonical `Tables`.

  Raises:
    ValueError: unknown data set, config or split, a `columns` entry naming no
      feature, or a bad `max_rows`.
    DataValidationError: any check of `validate_tables`, naming the example.
  """
  if max_rows is not None and (isinstance(max_rows, bool)
                               or not isinstance(max_rows, (int, np.integer))
                               or max_rows < 1):
    raise ValueError("`max_rows` should be a positive integer or None. "
                     f"Received: `max_rows` = {max_rows!r}.")
  tfds = _import_tfds()
  report = report if report is not None else DataReport()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError as e:  # DatasetNotFoundError is a ValueError, so is a bad config
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(
        f"`name` should be a tensorflow-datasets name such as "
        f"`movielens/100k-ratings`. Received: `name` = {name!r} ({first}). Fix: "
        "check the name with `tfds.list_builders()` and the configs with "
        "`tfds.builder_cls(name).builder_configs`.") from None
  builder.download_and_prepare()
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except ValueError as e:
    if "split" not in str(e).lower():
      raise
    known = list(builder.info.splits) if builder.info.splits else []
    raise ValueError(f"`split` should be a split of {name} (one of {known}). "
                     f"Received: `split` = {split!r}.") from None
  if max_rows is not None:
    ds = ds.take(int(max_rows))
  frame = _read_examples(ds, builder.info.features, tfds, batch_size)
  n_examples = len(frame)
  where = f"tfds:{name}[{split}]"
  if n_examples == 0:
    raise DataValidationError("the split has no examples.", file=where,
                              fix="choose a split with data, e.g. `train`.")

  mapping = {dst: src for dst, src in DEFAULT_COLUMNS.items()
             if src in frame.columns and dst not in frame.columns}
  for dst, src in (columns or {}).items():
    if src not in frame.columns:
      raise ValueError(
          f"`columns` maps `{dst}` onto `{src}`, which is not a feature of {name}. "
          f"Received features: {sorted(frame.columns)}.")
    mapping = {d: s for d, s in mapping.items() if s != src and d != dst}
    mapping[dst] = src
  frame = frame.rename(columns={src: dst for dst, src in mapping.items()})
  frame[ROW_COLUMN] = np.arange(1, n_examples + 1, dtype=np.int64)

  sources = {"interactions": where, "items": f"{where} items", "users": f"{where} users"}
  groups: Dict[str, List[str]] = {"interactions": [], "items": [], "users": []}
  for column in frame.columns:
    if column != ROW_COLUMN:
      groups[_table_of(column)].append(column)
  # Canonical order first (user_id, item_id, timestamp, ...), then the rest.
  groups["interactions"].sort(key=lambda c: (
      _INTERACTION_COLUMNS.index(c) if c in _INTERACTION_COLUMNS else len(_INTERACTION_COLUMNS)))

  def side_table(key: str, table: str) -> Optional[pd.DataFrame]:
    if key not in frame.columns or not groups[table]:
      return None
    ids = frame[key].astype(str).str.strip()
    # One row per id: the first example that mentions it.
    first = ~ids.duplicated().to_numpy()
    return frame.loc[first, [key] + groups[table] + [ROW_COLUMN]].reset_index(drop=True)

  items = side_table("item_id", "items")
  users = side_table("user_id", "users")
  interactions = frame[groups["interactions"] + [ROW_COLUMN]]
  renamed = {t: {dst: src for dst, src in mapping.items()
                 if dst in groups[t] or dst in ("user_id", "item_id")}
             for t in groups}
  report.record("load", source=f"tfds:{name}", split=split, examples=n_examples)
  tables = Tables(interactions=interactions, items=items, users=users, sources=sources,
                  name=name)
  try:
    return canonical.validate_with_origins(tables, origins={}, renamed=renamed,
                                           report=report)
  except DataValidationError as e:
    if e.row is not None:
      # Rows are example numbers, not file rows: say so.
      raise DataValidationError(f"(example {e.row} of the split) {e.problem}",
                                file=e.file, row=e.row, column=e.column,
                                fix=e.fix) from e
    raise
