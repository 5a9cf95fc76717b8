"""Retrieve then rank (`--model two_tower_dcn`): two-tower top-C re-ranked by a DCN.

The recommender idea: a two-tower model is cheap enough to score the whole
catalogue but sees a (user, track) pair only through one dot product; a
Deep & Cross Network sees the pair's features crossed (user x genre, user x
artist, ...) but is too costly to score every track. So the two-tower model
proposes its top `candidates` (default 100) tracks and the DCN re-orders
them; the top `top_k` (default 10) are served.

The re-ranker is trained for this job (`--labels implicit`): each user's
most recent training interactions are positives (tastes drift: the last
`recent_positives`, or the last `recent_share` of a heavier listener's);
each positive's negatives are `hard_negatives` tracks drawn from the
retrieval model's own top candidates for that user (the mistakes the
re-ranker must fix) and `random_negatives` uniform tracks (so it still
knows the rest of the catalogue). A drawn track that is in the user's
training rows, or among the positives being labelled (a validation row's
own track), is dropped; nothing else is, so a user's later validation or
test track may be drawn as a training negative, as it would be in
production, where the future is unknown.

History-aware pair features: a user id embedding learnt from ~20 positives
knows a user's taste poorly, while the query tower reads the recent
history. So the re-ranker reads the same history (the retrieval's last
`history_length` tracks) for every (user, candidate) pair:

- `history_features` (`HistoryFeatures`, the classic music re-ranking
  features): the share of the history's tracks by the candidate's artist,
  on its album, in its genre, parent genre and mood; how full the history
  is; the candidate's log popularity among other listeners;
- `history_pooling` (`HistoryDCNRanker`): the mean of the network's own
  embeddings of the history's track ids, artists and genres joins x0, so the
  cross layers learn candidate x history interactions.

They are computed causally: a training positive's history is the tracks
its user played strictly before it (never the positive itself), and its
negatives share that history; a positive's own play is left out of its
popularity, so it is measured like a held-out track's. Validation uses the
last training tracks, test the last training + validation tracks, as the
retrieval does. No retrieval output is a feature (the two-tower model saw
the training positives, so their scores and embedding similarities are
inflated against held-out tracks'). One TensorFlow implementation computes
them in training, evaluation and the export.

The final score of a candidate is

  dcn_logit + blend * retrieval_score / temperature

where the retrieval term keeps what the two-tower model knows that the
ranker does not; `blend` is chosen from `blend_weights` by validation
HR@10 (never the test split). `dcn_logit` is the mean logit of `rankers`
re-rankers trained alike with their own seeds (initialization and
negatives): one re-ranker overfits its ~20 positives per user within two
epochs, and the fits' errors partly cancel.

Export (`saved_models/two_tower_dcn/<version>/`), one SavedModel:
`serving_default(user_id)` (stored history of known users; unknown users get
the popularity fallback) and `recommend(user_id, history, <user features>,
exclude)` (all raw) -> `item_ids` [B, top_k], `scores` [B, top_k],
`fallback` [B]. The history features are computed inside the graph: history
ids -> catalogue rows -> artist / album / genre codes, pooled lookup indices
and play counts stored in the model (the stored history for
`serving_default`, the request's `history` for `recommend`). Serving
fallbacks: an unknown (or empty) user id with no catalogue track in its
history gets the popularity top-k in popularity order (`fallback` true); a
user id the re-ranker never trained on but with a history (`recommend`)
gets the retrieval order of its candidates; an empty country maps to the
missing-value index; duplicate rows get identical answers. `k` is fixed
at export: min(`top_k`, `candidates`, catalogue size), so a `top_k` or
`candidates` above the catalogue serves the whole catalogue (ranked), never
an error; the user's own (excluded) tracks are never served: the slots they
would take come last as empty results (id "", score `EMPTY_SCORE`). `top_k`
above `candidates` is refused by the config. Evaluation: the cascade, the
two-tower retrieval alone, the popularity baseline and (synthetic data) the
oracle, through the same full-ranking protocol on the same users.

Modules: `config` (hyperparameters and presets), `ranker` (`HardNegativeDCN`,
the re-ranker and its training rows), `core` (the two stages, the
candidates, the stages' checkpoints, the final score), `serving` (the
export) and `family` (fit, evaluate, score, save). Imports go one way:
`family` -> `core`, `serving`; `core` -> `ranker`, `config`.
"""

from tfrec_music.export.retrieval import EMPTY_SCORE
from tfrec_music.models.cascade.config import CascadeConfig
from tfrec_music.models.cascade.core import CascadeCore
from tfrec_music.models.cascade.family import CascadeFamily
from tfrec_music.models.cascade.ranker import HardNegativeDCN
from tfrec_music.models.cascade.serving import CascadeServingModule

__all__ = [
    "CascadeConfig",
    "CascadeCore",
    "CascadeFamily",
    "CascadeServingModule",
    "EMPTY_SCORE",
    "HardNegativeDCN",
]
