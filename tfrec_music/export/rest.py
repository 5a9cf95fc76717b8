"""TF Serving's REST request formats, applied in Python.

`instances_to_inputs` turns a `{"instances": [...]}` (row format) or
`{"inputs": {...}}` (columnar format) body into signature inputs the way
TF Serving's REST handler does, so a body can be checked against an export
without running a server, and `predict_rest` answers it from a SavedModel.
"""

import json
from typing import Any, Dict, Mapping, Union

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf


def instances_to_inputs(body: Union[str, Mapping[str, Any]],
                        signature) -> Dict[str, tf.Tensor]:
  """Converts a REST predict body into input tensors of `signature`.

  Row format: every instance is an object with exactly the signature's input
  names (a signature with one input also accepts bare values); values are
  stacked along a new batch axis. Columnar format: `inputs` maps names to
  batched values.

  Args:
    body: JSON text or the parsed object.
    signature: A concrete function from `loaded.signatures[...]`.

  Returns:
    Input name -> tensor, cast to the signature's dtypes.

  Raises:
    ValueError: the body does not fit the signature (names what is wrong,
      like TF Serving's 400 answer).
  """
  if isinstance(body, str):
    body = json.loads(body)
  specs = signature.structured_input_signature[1]
  names = sorted(specs)
  if "instances" in body:
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
      raise ValueError("`instances` must be a non-empty list.")
    if not isinstance(instances[0], dict):
      if len(names) != 1:
        raise ValueError(f"Bare instances need a one-input signature; this one takes {names}.")
      instances = [{names[0]: v} for v in instances]
    columns: Dict[str, list] = {n: [] for n in names}
    for row, instance in enumerate(instances):
      keys = sorted(instance)
      if keys != names:
        raise ValueError(f"instance {row} has inputs {keys}; the signature takes {names}.")
      for name in names:
        columns[name].append(instance[name])
  elif "inputs" in body:
    inputs = body["inputs"]
    if not isinstance(inputs, dict):
      inputs = {names[0]: inputs}
    if sorted(inputs) != names:
      raise ValueError(f"`inputs` has {sorted(inputs)}; the signature takes {names}.")
    columns = dict(inputs)
  else:
    raise ValueError("The body needs `instances` (row format) or `inputs` (columnar format).")
  out = {}
  for name, values in columns.items():
    spec = specs[name]
    try:
      array = np.asarray(values, dtype=object if spec.dtype == tf.string else None)
    except ValueError as e:
      raise ValueError(f"input `{name}`: values of unequal length in one batch ({e}); "
                       "pad lists with \"\" to one length.") from e
    out[name] = tf.constant(array.astype(object) if spec.dtype == tf.string else array,
                            dtype=spec.dtype)
    if not spec.shape.is_compatible_with(out[name].shape):
      raise ValueError(f"input `{name}` has shape {out[name].shape.as_list()}; the "
                       f"signature expects {spec.shape.as_list()}.")
  return out


def predict_rest(export_path: str, body: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
  """Answers a REST predict body from a SavedModel, as `{"predictions": [...]}`.

  The signature is `body["signature_name"]` or `serving_default`.
  """
  if isinstance(body, str):
    body = json.loads(body)
  loaded = tf.saved_model.load(export_path)
  signature = loaded.signatures[body.get("signature_name", "serving_default")]
  outputs = signature(**instances_to_inputs(body, signature))
  arrays = {k: v.numpy() for k, v in outputs.items()}
  n = len(next(iter(arrays.values())))
  predictions = []
  for row in range(n):
    predictions.append({k: _plain(v[row]) for k, v in arrays.items()})
  return {"predictions": predictions}


def _plain(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_plain(v) for v in value.tolist()]
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value
