"""Implicit-feedback rating network (`--model taste_mlp`): will this user play this track?

The recommender idea: with no explicit ratings and no negative feedback (a
small app only knows what people posted or played), learn a classifier of
(user, track) pairs from content. A track is described by its audio features
and its text vector (lyrics/title through word vectors, see
`tfrec_music.models.track_vectors`); a user by their taste centroid, the
mean of the same description over the tracks they played. A 2-layer MLP
(one hidden ReLU layer with L2 weight decay, one logit) reads
`[track, centroid, track * centroid]` and is trained with sigmoid
cross-entropy (`tfrs.tasks.Ranking`).

- Positives: the user's training tracks. For a positive, the centroid
  leaves that track out (leave-one-out), so the network cannot find the
  track inside its own user description.
- Negatives (`negatives`): tracks of the user's least similar user (the
  farthest taste centroid, the strategy small apps use when they have no
  negative feedback), or uniformly random tracks (the default). Either way a
  user's own tracks are never drawn as negatives. Measured on the default
  synthetic catalogue (seed 0): least-similar negatives are too easy (the
  farthest user's tracks sit in another genre; training loss falls to 0.002)
  and give test AUC 0.864, log loss 3.79, HR@10 0.040; random negatives give
  AUC 0.950, log loss 0.227, HR@10 0.114 (popularity: AUC 0.847, HR@10 0.037).

Evaluation beside the popularity baseline (and the synthetic oracle):
- `auc`, `log_loss`: each validation/test positive (the user's held-out
  next track) against `eval_negatives` random tracks the user never played.
- `hr@10`, `ndcg@10`: full-catalogue ranking of the held-out track through
  the standard protocol, on `eval_users` users (0 = all).
Training and validation loss curves go to TensorBoard (`<job_dir>/logs/taste_mlp`).

Export (`saved_models/taste_mlp/<version>/`): `serving_default(user_id [B],
item_id [B])` -> `probability [B]`, `known [B]` (the catalogue's track features
and the users' centroids are stored; an unknown user or track gives
`known = False` and the probability of an average user/track: the mean
taste centroid of the training users, the mean track description; `""` is
unknown; identical rows give identical outputs; there is no `k`), and
`score_features(track [B, F], taste [B, F])` -> `probability` for raw inputs.

Modules: `config` (hyperparameters, presets, search space, flags), `network`
(`TasteScorer`, `TasteMLPModel`), `serving` (`TasteServingModule`) and
`family` (negatives, fit, evaluate, save).
"""

from tfrec_music.models.taste_mlp.config import NEGATIVE_STRATEGIES
from tfrec_music.models.taste_mlp.config import TASTE_TABLE_KEYS
from tfrec_music.models.taste_mlp.config import TasteMLPConfig
from tfrec_music.models.taste_mlp.family import TasteMLPFamily
from tfrec_music.models.taste_mlp.family import least_similar_users
from tfrec_music.models.taste_mlp.network import TasteMLPModel
from tfrec_music.models.taste_mlp.network import TasteScorer
from tfrec_music.models.taste_mlp.serving import TasteServingModule

__all__ = [
    "NEGATIVE_STRATEGIES",
    "TASTE_TABLE_KEYS",
    "TasteMLPConfig",
    "TasteMLPFamily",
    "TasteMLPModel",
    "TasteScorer",
    "TasteServingModule",
    "least_similar_users",
]
