"""What is evaluated is what is exported: an export's own answers, scored like the model.

`export_metrics` loads a retrieval export in this process, asks its
`serving_default` for the top-k of every user of a split (by user id alone,
as a client would), and computes HR@k and NDCG@k against the split's held-out
items. For a family whose export serves exactly the scored model, these equal
the `metrics.json` figures of the same split.
"""

from typing import Dict, Sequence

import numpy as np

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music.prepare.prepared import PreparedData


def export_metrics(export_dir: str, prepared: PreparedData, split: str = "test",
                   ks: Sequence[int] = (10,), batch_size: int = 512,
                   signature: str = "serving_default") -> Dict[str, float]:
  """HR@k and NDCG@k of an export queried for every user of `split`.

  Args:
    export_dir: A retrieval version folder (its `serving_default` takes
      `user_id` [B] and returns `item_ids` [B, k]).
    prepared: The prepared data the export was trained on.
    split: `"valid"` or `"test"`.
    ks: Cut-offs (each at most the export's k).
    batch_size: Users per request.
    signature: Signature to query.

  Returns:
    `{"<split>/all/hr@<k>": ..., "<split>/all/ndcg@<k>": ...}`.

  Raises:
    ValueError: a cut-off is larger than the export's result count.
  """
  serve = tf.saved_model.load(export_dir).signatures[signature]
  rows = getattr(prepared, split)
  users = rows["user_id"].astype(str).to_numpy()
  targets = rows["item_id"].astype(str).to_numpy()
  ranks = np.full(len(users), np.inf)
  for start in range(0, len(users), batch_size):
    out = serve(user_id=tf.constant(users[start:start + batch_size].astype(object)))
    ids = out["item_ids"].numpy().astype(str)
    if ids.shape[1] < max(ks):
      raise ValueError(f"`ks` should be at most the export's {ids.shape[1]} results. "
                       f"Received: `ks` = {tuple(ks)}.")
    hit = ids == targets[start:start + batch_size, None]
    found = hit.any(axis=1)
    ranks[start:start + batch_size][found] = hit[found].argmax(axis=1)
  metrics = {}
  for k in ks:
    inside = ranks < k
    metrics[f"{split}/all/hr@{k}"] = float(inside.mean())
    gain = np.where(inside, 1.0 / np.log2(np.where(inside, ranks, 0) + 2.0), 0.0)
    metrics[f"{split}/all/ndcg@{k}"] = float(gain.mean())
  return metrics
