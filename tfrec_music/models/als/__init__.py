"""Alternating least squares matrix factorization (`--model als`).

The recommender idea: a user's rating of a track (explicit feedback) or the
confidence that a user likes a track (implicit feedback: play counts) is the
dot product of a user vector and a track vector. With the track vectors
fixed, each user vector is a small ridge regression, and the other way round,
so ALS alternates the two solves (exact Cholesky or warm-started conjugate
gradient, in XLA-compiled TensorFlow: CPU, GPU and TPU alike).

Modules: `solver` (the alternating solves), `factors` (a fit's factors and
folding new users in), `config` (hyperparameters, presets, flags, search
space), `batch` (top-N for every user and track), `serving` (the export) and
`family` (cross-validation, fit, evaluation, export).
"""

from tfrec_music.models.als.batch import top_n_frames
from tfrec_music.models.als.config import ALSConfig
from tfrec_music.models.als.factors import ALSFit
from tfrec_music.models.als.factors import fit_als
from tfrec_music.models.als.factors import fold_in_numpy
from tfrec_music.models.als.factors import padded_histories
from tfrec_music.models.als.family import ALSFamily
from tfrec_music.models.als.family import kfold_assignment
from tfrec_music.models.als.serving import ALSQueryModel
from tfrec_music.models.als.serving import ALSServingModule
from tfrec_music.models.als.solver import ALSParams
from tfrec_music.models.als.solver import ALSSolver
from tfrec_music.models.als.solver import confidence
from tfrec_music.models.als.solver import edge_coefficients
from tfrec_music.models.als.solver import fold_in

__all__ = [
    "ALSConfig",
    "ALSFamily",
    "ALSFit",
    "ALSParams",
    "ALSQueryModel",
    "ALSServingModule",
    "ALSSolver",
    "confidence",
    "edge_coefficients",
    "fit_als",
    "fold_in",
    "fold_in_numpy",
    "kfold_assignment",
    "padded_histories",
    "top_n_frames",
]
