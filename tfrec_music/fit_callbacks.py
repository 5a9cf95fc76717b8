"""Keras callbacks that measure a `fit`: training time per epoch and the steps it ran."""

import time
from typing import List, Optional

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf


class EpochTimer(tf.keras.callbacks.Callback):
  """Training seconds per epoch and the training steps this `fit` ran.

  An epoch is timed from its start to the end of its last batch, so the
  validation that runs in `on_epoch_end` callbacks is not counted. `steps` is
  read from the optimizer when training ends: a resumed run counts only the
  steps it ran itself.

  Attributes:
    seconds: Training seconds of each epoch run, in order.
    steps: Optimizer steps taken by this `fit` (set when it ends).
  """

  def __init__(self):
    super().__init__()
    self.seconds: List[float] = []
    self.steps = 0
    self._start_step = 0
    self._start: Optional[float] = None
    self._end: Optional[float] = None

  def on_train_begin(self, logs=None):
    self._start_step = int(self.model.optimizer.iterations.numpy())

  def on_epoch_begin(self, epoch, logs=None):
    self._start = self._end = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self._end = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(self._end - self._start)

  def on_train_end(self, logs=None):
    self.steps = int(self.model.optimizer.iterations.numpy()) - self._start_step
