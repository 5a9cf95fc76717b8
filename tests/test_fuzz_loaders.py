"""Property-based tests: every file loader on malformed input.

Each case copies a valid hand-written fixture release, damages one of its
files (truncation, a wrong delimiter, bytes that are not UTF-8, a huge id, an
empty file, an unbalanced quote, a dropped or duplicated line, random
garbage) and loads it through `load_data`, the CLI's entry point. Allowed
outcomes: the data loads (a damage the format tolerates, e.g. a duplicated
line; when the damage removed no line, every row of the clean release is
loaded or counted as dropped in the data report), or a
`DataValidationError` / `FileNotFoundError` whose message names the damaged
file or its folder. Anything else (an unexplained traceback) fails the test.
"""

import os
import shutil
import tempfile

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from tfrec_music.data.registry import load_data
from tfrec_music.data.report import DataReport
from tfrec_music.data.tables import DataValidationError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# --data name -> fixture folder (a valid release) and whether to pass --unknown-items drop.
LOADERS = {
    "csv": "canonical_csv",
    "lastfm-loved": "lastfm_loved",
    "lastfm-hetrec": "lastfm_hetrec",
    "yahoo-music": "yahoo_music/release",
    "mpd": "mpd/slices",
}
CASES_PER_LOADER = 60


def _files(root):
  out = []
  for folder, _, names in os.walk(root):
    for name in names:
      if not name.endswith(".md"):
        out.append(os.path.relpath(os.path.join(folder, name), root))
  return sorted(out)


def _damage(data: bytes, kind: str, position: float, payload: bytes) -> bytes:
  """One kind of damage at a relative position of the file."""
  cut = int(len(data) * position)
  lines = data.split(b"\n")
  line = min(int(len(lines) * position), max(len(lines) - 1, 0))
  if kind == "truncate":
    return data[:cut]
  if kind == "empty":
    return b""
  if kind == "delimiter":
    for sep in (b"\t", b",", b":"):
      if sep in data:
        return data.replace(sep, b";")
    return data
  if kind == "bad_encoding":
    return data[:cut] + b"\xff\xfe\xc3\x28" + data[cut:]
  if kind == "huge_id":
    return data[:cut] + b"9" * 40 + data[cut:]
  if kind == "quote":
    return data[:cut] + b'"' + data[cut:]
  if kind == "drop_line":
    return b"\n".join(lines[:line] + lines[line + 1:])
  if kind == "duplicate_line":
    return b"\n".join(lines[:line + 1] + lines[line:])
  if kind == "garbage":
    return data[:cut] + payload + data[cut:]
  raise AssertionError(kind)


KINDS = ("truncate", "empty", "delimiter", "bad_encoding", "huge_id", "quote", "drop_line",
         "duplicate_line", "garbage")
# Damage that removes no line: every row of the clean release is still in the
# file, so a load must keep it or count it as dropped. (A damaged CSV header
# renames a column; a loader may then leave that optional column unread, but
# must say so in the data report's `ignored_columns`.)
KEEPS_LINES = ("bad_encoding", "huge_id", "quote", "duplicate_line", "garbage")


def _dropped_rows(report: DataReport) -> int:
  """Rows the loaders and validation counted as dropped (`*_dropped` counters)."""
  return sum(int(v) for step in report.as_dict().values() for k, v in step.items()
             if k.endswith("_dropped") and isinstance(v, (int, float)) and not isinstance(v, bool))


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_fixture_loads(name):
  """The undamaged fixture loads (so every failure below comes from the damage)."""
  tables = load_data(name, data_dir=os.path.join(FIXTURES, LOADERS[name]),
                     unknown_items="drop").tables
  assert len(tables.interactions) > 0


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_damaged_input_is_an_error_naming_the_file_or_a_counted_load(name):
  source = os.path.join(FIXTURES, LOADERS[name])
  files = _files(source)
  seen = {"loaded": 0, "error": 0}
  clean_rows = {policy: len(load_data(name, data_dir=source, unknown_items=policy).tables
                            .interactions) for policy in ("error", "drop")}

  @settings(max_examples=CASES_PER_LOADER, deadline=None, derandomize=True,
            suppress_health_check=list(HealthCheck))
  @given(target=st.sampled_from(files), kind=st.sampled_from(KINDS),
         position=st.floats(0.0, 1.0), payload=st.binary(min_size=1, max_size=40),
         policy=st.sampled_from(["error", "drop"]))
  def check(target, kind, position, payload, policy):
    with tempfile.TemporaryDirectory() as tmp:
      root = os.path.join(tmp, "release")
      shutil.copytree(source, root)
      path = os.path.join(root, target)
      with open(path, "rb") as f:
        data = f.read()
      with open(path, "wb") as f:
        f.write(_damage(data, kind, position, payload))
      report = DataReport()
      try:
        loaded = load_data(name, data_dir=root, unknown_items=policy, report=report)
      except (DataValidationError, FileNotFoundError) as e:
        message = str(e)
        assert os.path.basename(target) in message or root in message, \
            f"{kind} in {target}: the error does not name the file: {message}"
        seen["error"] += 1
        return
      damaged_line = data[:int(len(data) * position)].count(b"\n")
      if kind == "duplicate_line":
        damaged_line = min(int(len(data.split(b"\n")) * position), len(data.split(b"\n")) - 1)
      header = target.endswith(".csv") and damaged_line == 0
      reported = bool((report.get("load", "ignored_columns") or {}).get(
          os.path.basename(target)))
      if kind in KEEPS_LINES and not (header and reported):
        # Nothing lost silently: every clean row is loaded or counted as dropped.
        rows, dropped = len(loaded.tables.interactions), _dropped_rows(report)
        assert rows + dropped >= clean_rows[policy], (
            f"{kind} at {position:.3f} in {target} ({policy}): {rows} rows loaded + "
            f"{dropped} counted drops < {clean_rows[policy]} rows of the clean release; "
            f"report {report.as_dict()}")
        seen["counted"] = seen.get("counted", 0) + 1
      seen["loaded"] += 1
      seen.setdefault("loaded_kinds", set()).add((kind, target, policy))

  check()  # pylint: disable=no-value-for-parameter
  assert seen["loaded"] + seen["error"] >= CASES_PER_LOADER
  loaded_kinds = sorted({kind for kind, _, _ in seen.get("loaded_kinds", ())})
  print(f"{name}: {CASES_PER_LOADER} cases, {seen['error']} clear errors, "
        f"{seen['loaded']} loaded (damage kinds that loaded: {loaded_kinds}; "
        f"{seen.get('counted', 0)} checked row for row against the clean release)")
