"""One entry point from a `--data` name to validated canonical tables."""

import dataclasses
import importlib
from typing import Mapping, Optional

import pandas as pd

from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import Tables

# Named file sources: `--data name` -> (module, function). Each function is
# `load(data_dir, *, unknown_items, report) -> Tables` and is imported lazily.
NAMED_LOADERS = {
    "lastfm-loved": ("tfrec_music.data.loaders.lastfm_loved", "load_lastfm_loved"),
    "lastfm-hetrec": ("tfrec_music.data.loaders.lastfm_hetrec", "load_lastfm_hetrec"),
    "yahoo-music": ("tfrec_music.data.loaders.yahoo_music", "load_yahoo_music"),
    "mpd": ("tfrec_music.data.loaders.mpd", "load_mpd"),
}

NAMED_SOURCES = ("synthetic", "csv", "parquet") + tuple(NAMED_LOADERS)
# Sources read as many slice files, whose loader takes `bad_slices`.
SLICED_SOURCES = ("mpd",)


@dataclasses.dataclass
class LoadedData:
  """Tables plus what only some sources have.

  Attributes:
    tables: Validated canonical tables.
    oracle: The generator's true scorer (synthetic data only).
    playlists: Playlist rows (synthetic data only).
    data_card: Summary printed and saved by the synthetic generator.
  """

  tables: Tables
  oracle: Optional[object] = None
  playlists: Optional[pd.DataFrame] = None
  data_card: Optional[dict] = None


def load_data(data: str = "synthetic", *, data_dir: Optional[str] = None,
              preset: str = "default", seed: int = 0,
              columns: Optional[Mapping[str, str]] = None,
              unknown_items: str = "error",
              report: Optional[DataReport] = None,
              bad_slices: str = "error") -> LoadedData:
  """Loads a data source by name.

  Args:
    data: `synthetic` (the embedded catalogue), `csv` / `parquet` (a
      canonical folder in `data_dir`), `lastfm-loved` (a Last.fm loved-tracks
      export in `data_dir`), or `tfds:<name>` (any tensorflow-datasets set).
    data_dir: Folder of the files (for file sources), or TFDS's data dir.
    preset: Synthetic preset (`tiny`, `default`).
    seed: Synthetic generator seed.
    columns: Canonical name -> source column name.
    unknown_items: `error` or `drop` for interactions with unknown items.
    report: Data report to record load counts in.
    bad_slices: `error` or `drop` for unreadable slice files of sources read
      as many files (`mpd`): `drop` skips such a file whole and counts it in
      the report (`load/bad_slices_dropped`, `load/bad_slice_files`).

  Returns:
    The loaded data.

  Raises:
    ValueError: unknown source name, a file source without `data_dir`, or
      `bad_slices="drop"` for a source that is not read as slices.
  """
  if bad_slices not in ("error", "drop"):
    raise ValueError("`bad_slices` should be 'error' or 'drop'. "
                     f"Received: `bad_slices` = {bad_slices!r}.")
  if bad_slices == "drop" and data not in SLICED_SOURCES:
    raise ValueError(f"`--bad-slices drop` applies to sources read as slice files "
                     f"({', '.join(SLICED_SOURCES)}), not to `--data {data}`. Remove the flag.")
  report = report if report is not None else DataReport()
  if data == "synthetic":
    from tfrec_music.data import synthetic  # pylint: disable=g-import-not-at-top
    catalogue = synthetic.generate(preset, seed=seed)
    report.record("load", source=f"synthetic:{preset}", seed=seed,
                  **{f"{k}_rows": v for k, v in catalogue.tables.summary().items()})
    return LoadedData(tables=catalogue.tables, oracle=catalogue.oracle,
                      playlists=catalogue.playlists, data_card=catalogue.data_card())
  if data.startswith("tfds:"):
    from tfrec_music.data.loaders import tfds_source  # pylint: disable=g-import-not-at-top
    tables = tfds_source.load_tfds(data[len("tfds:"):], columns=columns, data_dir=data_dir,
                                   report=report)
    return LoadedData(tables=tables)
  if data in NAMED_SOURCES:
    if not data_dir:
      raise ValueError(f"`--data {data}` reads files: pass the folder with `--data-dir`.")
    if data in NAMED_LOADERS:
      module, function = NAMED_LOADERS[data]
      loader = getattr(importlib.import_module(module), function)
      extra = {"bad_slices": bad_slices} if data in SLICED_SOURCES else {}
      tables = loader(data_dir, unknown_items=unknown_items, report=report, **extra)
    else:
      from tfrec_music.data.loaders import canonical  # pylint: disable=g-import-not-at-top
      tables = canonical.load_canonical(data_dir, fmt=data, columns=columns,
                                        unknown_items=unknown_items, report=report)
    return LoadedData(tables=tables)
  raise ValueError(f"`--data` should be one of {NAMED_SOURCES} or `tfds:<name>`. "
                   f"Received: `--data` = {data!r}.")
