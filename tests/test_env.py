"""Import-time set-up: Keras 2 for TFRS, and a clear error when Keras 3 came first."""

import os
import subprocess
import sys


def _run(code, env_extra=None):
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, env=env)


def test_importing_package_first_gives_keras_2():
  proc = _run("import tfrec_music, os, tensorflow as tf; "
              "print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.Model.__module__)")
  assert proc.returncode == 0, proc.stderr
  flag, module = proc.stdout.split()
  assert flag == "1" and module.startswith("tf_keras")


def test_keras_3_imported_first_raises_with_advice():
  proc = _run("import tensorflow as tf; tf.keras.layers; import tfrec_music")
  assert proc.returncode != 0
  assert "ImportError" in proc.stderr and "TF_USE_LEGACY_KERAS=1" in proc.stderr


def test_tensorflow_cpp_logs_are_quiet_by_default():
  proc = _run("import tfrec_music, os; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])")
  assert proc.stdout.strip() == "3"
