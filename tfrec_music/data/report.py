"""The data report: what every loading and preparation step kept and dropped.

Nothing is dropped silently in tfrec-music: each step that removes rows records
how many, and the report is written beside the model as `data_report.json`.
"""

import json
from typing import Any, Dict


class DataReport:
  """Ordered record of counts per pipeline step.

  Example:
    >>> report = DataReport()
    >>> report.record("kcore", interactions_in=100, interactions_dropped=7)
    >>> report.as_dict()["kcore"]["interactions_dropped"]
    7
  """

  def __init__(self):
    self._steps: Dict[str, Dict[str, Any]] = {}

  def record(self, step: str, **counts: Any) -> None:
    """Adds (or updates) the counts of one step.

    Args:
      step: Step name, e.g. `"load"`, `"validation"`, `"kcore"`, `"split"`.
      **counts: Values to record; numpy scalars are converted to Python ones.
    """
    entry = self._steps.setdefault(step, {})
    for key, value in counts.items():
      entry[key] = _plain(value)

  def add(self, step: str, key: str, amount: int) -> None:
    """Increments one counter of a step (creating it at zero)."""
    entry = self._steps.setdefault(step, {})
    entry[key] = int(entry.get(key, 0)) + int(amount)

  def get(self, step: str, key: str, default: Any = None) -> Any:
    """Returns one recorded value, or `default`."""
    return self._steps.get(step, {}).get(key, default)

  def as_dict(self) -> Dict[str, Dict[str, Any]]:
    """Returns a JSON-serializable copy of the report."""
    return json.loads(json.dumps(self._steps))

  def write(self, path: str) -> None:
    """Writes the report as pretty JSON to `path` (any `tf.io.gfile` path)."""
    from tfrec_music.io import write_text  # pylint: disable=g-import-not-at-top
    write_text(path, json.dumps(self._steps, indent=2, sort_keys=False) + "\n")

  def __repr__(self) -> str:
    return f"DataReport({self._steps!r})"


def _plain(value: Any) -> Any:
  if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
    return value.item()
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value
