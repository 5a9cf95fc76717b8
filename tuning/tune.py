"""`python -m tuning.tune`: Keras Tuner search over the trainer's model builders.

Not available yet: the search arrives with the tuning issue. Until then this
entry point says so and exits non-zero instead of pretending to tune.
"""

import sys


def main() -> int:
  """Prints that tuning is not available yet; returns exit code 2."""
  print("tuning.tune is not implemented yet: train with `python -m trainer.task` "
        "and set hyperparameters with `--set NAME=VALUE` or `--hparams FILE`.",
        file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
