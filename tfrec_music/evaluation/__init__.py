"""Evaluation: full-ranking retrieval metrics and rating / binary metrics."""

from tfrec_music.evaluation.rating import binary_metrics
from tfrec_music.evaluation.rating import rating_metrics
from tfrec_music.evaluation.retrieval import evaluate_embeddings
from tfrec_music.evaluation.retrieval import evaluate_retrieval
from tfrec_music.evaluation.retrieval import prefix_metrics
from tfrec_music.evaluation.retrieval import top_k

__all__ = [
    "binary_metrics",
    "evaluate_embeddings",
    "evaluate_retrieval",
    "prefix_metrics",
    "rating_metrics",
    "top_k",
]
