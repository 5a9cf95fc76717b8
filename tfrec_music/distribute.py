"""Distribution strategies, the chief rule and cluster conventions.

The recommender idea: a retrieval model trains the same way on a laptop, on
several GPUs or on several machines; only the strategy differs. With `N`
replicas each replica gets the per-replica batch (`batch_size`), the global
batch is `batch_size * N`, each replica's loss is summed over its examples and
divided by the global batch (`tf.nn.compute_average_loss`), and gradients are
summed across replicas, so the update is the mean over the global batch, as on
one device.

`--distribution auto` reads the environment: `TF_CONFIG` (or Vertex AI's
`CLUSTER_SPEC`, converted) with more than one task -> multi-worker mirrored
(or parameter server when the cluster has `ps` tasks); `TPU_NAME` -> TPU;
several visible GPUs -> mirrored; otherwise the default one-device strategy.

Parameter-server clusters: `ps` and `worker` tasks only serve
(`serve_parameter_server_task`); the `chief` coordinates training
(`tfrec_music.fit_loop`), evaluates and exports.

Only the chief writes exports, metrics and logs; other workers write to a
scratch folder of their own (`scratch_dir`), since multi-worker Keras saving
needs every worker to save, but only one copy may land where users look.
"""

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:  # TensorFlow is imported where a strategy is made, so `--help` stays fast.
  import tensorflow as tf

__all__ = ["DISTRIBUTIONS", "cluster_config", "make_strategy", "is_chief", "task_label",
           "scratch_dir", "resolve", "uses_coordinator", "serve_parameter_server_task"]

DISTRIBUTIONS = ("auto", "one_device", "mirrored", "multi_worker", "parameter_server", "tpu")


def cluster_config() -> Optional[Dict[str, Any]]:
  """The cluster as `TF_CONFIG` describes it, or Vertex AI's `CLUSTER_SPEC`; None when alone.

  Vertex AI sets `CLUSTER_SPEC` (`{"cluster": {"workerpool0": [...], ...},
  "task": {"type": "workerpool0", "index": 0}}`) and also `TF_CONFIG` for
  TensorFlow jobs; `TF_CONFIG` wins when both are set.
  """
  text = os.environ.get("TF_CONFIG")
  if text:
    try:
      config = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"`TF_CONFIG` is not valid JSON ({e}). It should look like "
                       '{"cluster": {"worker": ["host:port", ...]}, '
                       '"task": {"type": "worker", "index": 0}}.') from e
    return config if config.get("cluster") else None
  text = os.environ.get("CLUSTER_SPEC")
  if not text:
    return None
  spec = json.loads(text)
  pools = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps",
           "workerpool3": "evaluator"}
  cluster = {pools[k]: v for k, v in spec.get("cluster", {}).items() if k in pools and v}
  task = spec.get("task", {})
  return {"cluster": cluster,
          "task": {"type": pools.get(task.get("type", "workerpool0"), "chief"),
                   "index": int(task.get("index", 0))}}


def _n_tasks(config: Optional[Dict[str, Any]]) -> int:
  if not config:
    return 0
  return sum(len(v) for k, v in config["cluster"].items() if k in ("chief", "worker"))


def _resolve(name: str, config: Optional[Dict[str, Any]]) -> str:
  """`auto` -> the concrete strategy name for this environment."""
  if name != "auto":
    return name
  if config and "ps" in config["cluster"]:
    return "parameter_server"
  if _n_tasks(config) > 1:
    return "multi_worker"
  if os.environ.get("TPU_NAME"):
    return "tpu"
  import tfrec_music  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
  if len(tf.config.list_logical_devices("GPU")) > 1:
    return "mirrored"
  return "one_device"


def resolve(name: str = "auto") -> str:
  """The strategy name `--distribution name` stands for here (`auto` read from the environment)."""
  return _resolve(name, cluster_config())


def make_strategy(name: str = "auto") -> "tf.distribute.Strategy":
  """The `tf.distribute` strategy of `--distribution`.

  Args:
    name: One of `DISTRIBUTIONS`.

  Returns:
    The strategy. `one_device` is TensorFlow's default strategy (no copy of
    variables, the fastest on one device).

  Raises:
    ValueError: unknown name, or a multi-machine strategy without a cluster.
  """
  if name not in DISTRIBUTIONS:
    raise ValueError(f"`--distribution` should be one of {DISTRIBUTIONS}. "
                     f"Received: `--distribution` = {name!r}.")
  import tfrec_music  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
  config = cluster_config()
  if config and not os.environ.get("TF_CONFIG"):
    os.environ["TF_CONFIG"] = json.dumps(config)  # TensorFlow's resolvers read TF_CONFIG
  resolved = _resolve(name, config)
  if resolved in ("multi_worker", "parameter_server") and not config:
    raise ValueError(f"`--distribution {resolved}` needs a cluster: set `TF_CONFIG` "
                     "(or run as a Vertex AI job with several replicas).")
  if resolved == "parameter_server":
    _check_parameter_server_cluster(config)
  if resolved == "one_device":
    strategy = tf.distribute.get_strategy()
  elif resolved == "mirrored":
    strategy = tf.distribute.MirroredStrategy()
  elif resolved == "multi_worker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  elif resolved == "parameter_server":
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.ParameterServerStrategy(resolver)
  else:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=os.environ.get("TPU_NAME", ""))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
  logging.info("Distribution: %s (%s, %d replicas in sync)", resolved,
               type(strategy).__name__, strategy.num_replicas_in_sync)
  return strategy


def task_label() -> str:
  """`<type>_<index>` of this process in the cluster (`chief_0` when alone)."""
  config = cluster_config()
  if not config:
    return "chief_0"
  task = config.get("task", {})
  return f"{task.get('type', 'chief')}_{int(task.get('index', 0))}"


def is_chief() -> bool:
  """Whether this process writes exports, metrics and logs.

  The chief is the `chief` task, or worker 0 of a cluster without one; a
  process outside any cluster is its own chief.
  """
  config = cluster_config()
  if not config:
    return True
  task = config.get("task", {})
  kind, index = task.get("type", "chief"), int(task.get("index", 0))
  if kind == "chief":
    return True
  return kind == "worker" and index == 0 and "chief" not in config["cluster"]


def scratch_dir(path: str) -> str:
  """`path` on the chief; a per-task scratch folder beside it on other workers."""
  if is_chief():
    return path
  return os.path.join(path.rstrip("/") + "_scratch", task_label())


def _check_parameter_server_cluster(config: Dict[str, Any]) -> None:
  """Raises ValueError unless the cluster has a chief, workers and ps tasks."""
  cluster = config["cluster"]
  missing = [kind for kind in ("chief", "worker", "ps") if not cluster.get(kind)]
  if missing:
    raise ValueError(
        "`--distribution parameter_server` needs `chief`, `worker` and `ps` tasks in "
        f"`TF_CONFIG`'s cluster; missing: {missing}. Received: `cluster` = {cluster}.")


def uses_coordinator(strategy: "tf.distribute.Strategy") -> bool:
  """Whether `strategy` trains through a `ClusterCoordinator` (parameter server)."""
  import tfrec_music  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
  return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def serve_parameter_server_task(name: str = "auto") -> bool:
  """Runs this process as a `ps` or `worker` server of a parameter-server cluster.

  In a parameter-server job every task runs the same command; the `ps` and
  `worker` tasks start a `tf.distribute.Server` and serve until they are
  stopped (the chief places variables on the `ps` tasks and schedules steps
  on the workers). A killed worker restarted with the same `TF_CONFIG` comes
  back at its address and the chief sends it steps again.

  Args:
    name: The `--distribution` value.

  Returns:
    False when this process is not a `ps` or `worker` task of a
    parameter-server cluster (it should train or coordinate); otherwise it
    never returns.

  Raises:
    ValueError: the cluster lacks a chief, workers or ps tasks, or this task
      is of another type (e.g. `evaluator`).
  """
  config = cluster_config()
  if not config or _resolve(name, config) != "parameter_server":
    return False
  _check_parameter_server_cluster(config)
  kind = config.get("task", {}).get("type", "chief")
  if kind == "chief":
    return False
  if kind not in ("ps", "worker"):
    raise ValueError("A parameter-server cluster has `chief`, `worker` and `ps` tasks (the "
                     f"chief evaluates). Received: task type {kind!r}.")
  import tfrec_music  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,redefined-outer-name
  if not os.environ.get("TF_CONFIG"):
    os.environ["TF_CONFIG"] = json.dumps(config)
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                task_index=resolver.task_id,
                                protocol=resolver.rpc_layer or "grpc", start=True)
  logging.info("Parameter-server cluster: serving as %s (%s).", task_label(), server.target)
  server.join()
  return True  # join() returns only when the server is stopped
