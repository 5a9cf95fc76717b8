"""Vectors in TensorBoard's embedding projector, labelled by a metadata table.

The recommender idea: looking at where tracks (or users) land in the learned
space, coloured by artist, genre or country, is the quickest check that the
model learned taste rather than noise.
"""

from typing import List

import numpy as np
import pandas as pd

import tfrec_music  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF)
import tensorflow as tf

from tfrec_music import io

__all__ = ["write_projector", "write_item_projector"]


def write_projector(log_dir: str, vectors: np.ndarray, labels: pd.DataFrame,
                    name: str = "vectors") -> str:
  """Writes `vectors` [N, d] and their labels for TensorBoard's projector.

  Args:
    log_dir: Folder to write (`metadata.tsv`, the checkpoint, the config).
    vectors: One row per labelled entry.
    labels: N rows; its columns become the metadata columns (missing values
      are written empty, tabs as spaces). One column is written without a
      header, as the projector expects.
    name: Variable name of the vectors in the checkpoint.

  Returns:
    `log_dir`.
  """
  from tensorboard.plugins import projector  # pylint: disable=g-import-not-at-top
  io.makedirs(log_dir)
  columns = list(labels.columns)
  cells = [labels[c].fillna("").astype(str).str.replace("\t", " ").to_numpy() for c in columns]
  lines: List[str] = ["\t".join(columns)] if len(columns) > 1 else []
  lines += ["\t".join(row) for row in zip(*cells)]
  io.write_text(io.join(log_dir, "metadata.tsv"), "\n".join(lines) + "\n")
  checkpoint = tf.train.Checkpoint(embedding=tf.Variable(vectors, name=name))
  checkpoint.save(io.join(log_dir, "embedding.ckpt"))
  config = projector.ProjectorConfig()
  embedding = config.embeddings.add()
  embedding.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
  embedding.metadata_path = "metadata.tsv"
  projector.visualize_embeddings(log_dir, config)
  return log_dir


def write_item_projector(log_dir: str, vectors: np.ndarray, items: pd.DataFrame) -> str:
  """Track vectors labelled by id, title and artist (the columns the items have)."""
  columns = ["item_id"] + [c for c in ("title", "artist") if c in items.columns]
  return write_projector(log_dir, vectors, items[columns], name="track_vectors")
