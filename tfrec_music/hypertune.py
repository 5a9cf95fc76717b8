"""Reports the final objective to a Vertex AI hyperparameter-tuning job.

Vertex AI's tuning service runs `python -m trainer.task` with the trial's
hyperparameters as flags and reads the objective that `cloudml-hypertune`
(the optional `cloud` extra) writes. Without the package this is a no-op.
"""

import logging
from typing import Optional


def objective_tag(metric: str) -> str:
  """Tag of a metric key for tuning services (`valid/all/hr@10` -> `valid_all_hr_10`)."""
  return "".join(c if c.isalnum() else "_" for c in metric).strip("_")


def report_objective(metric: str, value: Optional[float], step: int = 1) -> bool:
  """Reports `value` under `objective_tag(metric)` when cloudml-hypertune is installed.

  Returns:
    True when reported.
  """
  if value is None:
    return False
  try:
    import hypertune  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  hypertune.HyperTune().report_hyperparameter_tuning_metric(
      hyperparameter_metric_tag=objective_tag(metric), metric_value=float(value),
      global_step=step)
  logging.info("Reported %s = %.6f to the tuning service.", objective_tag(metric), value)
  return True
