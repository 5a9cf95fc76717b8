"""Optimizers that keep a moving average of the weights, for every family's fit loop.

Late in training the last steps' noise moves a model's validation figures
(two-tower, 1.9k users: about 0.006 HR@10 from one epoch to the next); an
average of the weights over the last steps moves less and scores higher.
These optimizers keep that average (Keras' `use_ema`, warmed up: see
`AveragingMixin` for what it spans); `tfrec_music.fit_loop` validates it,
keeps it as the best weights and so exports it, while training continues
from the raw weights.
"""

from typing import Any, Dict, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf


def averaging(average_epochs: float, steps_per_epoch: int) -> Dict[str, Any]:
  """Keras optimizer arguments for an average capped at `average_epochs` epochs of steps.

  Returns:
    `{}` when `average_epochs` is 0; else `use_ema` and the momentum 1 - 1 /
    (average_epochs x steps_per_epoch) (at least one step).
  """
  if average_epochs <= 0:
    return {}
  horizon = max(1.0, float(average_epochs) * int(steps_per_epoch))
  return {"use_ema": True, "ema_momentum": 1.0 - 1.0 / horizon}


def moving_average(optimizer: tf.keras.optimizers.Optimizer,
                   variable: tf.Variable) -> Optional[tf.Variable]:
  """The optimizer's moving average of `variable` (None: it keeps none for it)."""
  averages = getattr(optimizer, "_model_variables_moving_average", None)
  if not getattr(optimizer, "use_ema", False) or not averages:
    return None
  index = optimizer._index_dict.get(optimizer._var_key(variable))  # pylint: disable=protected-access
  return None if index is None else averages[index]


class AveragingMixin:
  """Keras' moving average of the weights (`use_ema`), warmed up and in one kernel.

  The average a of each variable w moves by a -= (1 - m_t)(a - w) after each
  step, with m_t = min(m, (1 + t) / (10 + t)) at step t, as
  `tf.train.ExponentialMovingAverage` does with `num_updates`: Keras starts
  the average at the initial weights with the full momentum, so after one
  epoch of an average over one epoch about a third of it would still be the
  random initialization. With the warm-up the average spans about the last
  ninth of the steps taken so far ((10 + t) / 9 steps) until that reaches
  the horizon 1 / (1 - m), after about 9 horizons of steps: an average over
  one epoch covers half an epoch after 5 epochs and one from the 9th on.
  `tfrec_music.fit_loop` validates, keeps and exports the averaged weights;
  training itself continues on the raw ones.
  """

  def _update_model_variables_moving_average(self, var_list):
    if not self.use_ema:
      return
    step = tf.cast(self.iterations, tf.float32)
    momentum = tf.minimum(tf.cast(self.ema_momentum, tf.float32), (1.0 + step) / (10.0 + step))

    def update(average, var):
      return tf.raw_ops.ResourceApplyGradientDescent(
          var=average.handle, alpha=tf.cast(1.0 - momentum, average.dtype),
          delta=tf.convert_to_tensor(average) - var)

    for var in var_list:
      self._distribution_strategy.extended.update(moving_average(self, var), update, args=(var,),
                                                  group=False)


class AveragedAdagrad(AveragingMixin, tf.keras.optimizers.Adagrad):
  """Keras `Adagrad` with the warmed-up weight average of `AveragingMixin`."""


class AveragedSGD(AveragingMixin, tf.keras.optimizers.SGD):
  """Keras `SGD` with the warmed-up weight average of `AveragingMixin`."""


class AveragedAdam(AveragingMixin, tf.keras.optimizers.Adam):
  """Keras `Adam` with the warmed-up weight average of `AveragingMixin`."""
