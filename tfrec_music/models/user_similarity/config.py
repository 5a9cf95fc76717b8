"""User-similarity settings: the config dataclass, presets and CLI flags."""

import argparse
import dataclasses
from typing import Any, Dict, Tuple

from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.config_checks import check_shares
from tfrec_music.models.track_vectors import DEFAULT_TEXT_COLUMNS
from tfrec_music.models.track_vectors import SOURCES
from tfrec_music.models.user_similarity.index import METRICS

# The representations a user vector can be made of (`UserSimilarityConfig.parts`).
PARTS = ("lsa", "als", "centroid")
SIMILARITY_TABLE_KEYS = ("test/all/friend_auc", "test/all/friend_in_top10",
                         "test/all/oracle_spearman")


@dataclasses.dataclass(frozen=True)
class UserSimilarityConfig:
  """User-similarity settings.

  Attributes:
    parts: What a user vector is made of, one or more of `lsa` (truncated SVD
      of the user's tf-idf profile: log(1 + plays) x idf over the tracks),
      `als` (implicit ALS user factors) and `centroid` (mean of the user's
      track vectors). With several parts the score is the mean of the parts'
      cosines, each part weighted by one over the spread of its cosines over
      random user pairs (so no part drowns the others).
    lsa_dim: Size of the `lsa` vectors.
    als_rank: Factor size of the `als` part.
    als_reg: Its L2 weight lambda.
    als_alpha: Its confidence slope, c = 1 + alpha * log(1 + plays).
    track_vectors: Source of track vectors for `centroid`: `two_tower`,
      `text` or `column`.
    word_vectors: For `text`: `colisten`, `cooccurrence` or a GloVe file path.
    word_dim: Size of learned word vectors.
    text_columns: Item text columns used by `text`.
    vector_column: Items column read by `column`.
    two_tower_preset: Preset of the two-tower trained for `two_tower`.
    two_tower_export: A two-tower version folder to read track vectors from
      instead of training one.
    two_tower_features: `all` (content features) or `ids` for that two-tower.
    recent_share: Share of each user's most recent tracks (by timestamp) the
      centroid is taken over; 1.0 = every track. Tastes drift, and
      friendships follow the current taste. Data without timestamps has no
      recency: every track is used. `lsa` and `als` always use every row.
    metric: `cosine` or `euclidean` (score 1 / (distance + epsilon)) between
      user vectors.
    epsilon: Added to the distance so identical tastes get a finite score.
    top_k: Similar users per request in the export.
    heatmap_size: Users and artists in the heatmaps written at fit time.
    seed: Seed of evaluation draws, the SVD, ALS and the part weights.
  """

  parts: Tuple[str, ...] = PARTS
  lsa_dim: int = 64
  als_rank: int = 32
  als_reg: float = 10.0
  als_alpha: float = 10.0
  track_vectors: str = "two_tower"
  word_vectors: str = "colisten"
  word_dim: int = 32
  text_columns: Tuple[str, ...] = DEFAULT_TEXT_COLUMNS
  vector_column: str = "text_vector"
  two_tower_preset: str = "default"
  two_tower_export: str = ""
  two_tower_features: str = "all"
  recent_share: float = 0.5
  metric: str = "cosine"
  epsilon: float = 1e-6
  top_k: int = 10
  heatmap_size: int = 20
  seed: int = 0

  def __post_init__(self):
    parts = (self.parts,) if isinstance(self.parts, str) else tuple(self.parts)
    if (not parts or len(set(parts)) != len(parts)
        or any(not isinstance(p, str) or p not in PARTS for p in parts)):
      raise ValueError(f"`parts` should be distinct values of {PARTS} (at least one). "
                       f"Received: `parts` = {self.parts!r}.")
    object.__setattr__(self, "parts", parts)
    check_choices(self, {"track_vectors": SOURCES, "metric": METRICS})
    check_shares(self, ("recent_share",), zero=False)
    check_numbers(self, ("epsilon", "als_reg", "als_alpha"), positive=True)
    check_ints(self, ("top_k", "word_dim", "lsa_dim", "als_rank"))
    object.__setattr__(self, "text_columns", tuple(self.text_columns))


def presets() -> Dict[str, Dict[str, Any]]:
  """`tiny` trains a tiny two-tower in seconds; `default` is the measured setting.

  The default (the mean of the `lsa`, `als` and `centroid` cosines, the
  centroid over each user's recent half) was chosen on the validation half of
  the friend pairs of the synthetic catalogue and of Last.fm HetRec.
  """
  return {"tiny": {"two_tower_preset": "tiny", "heatmap_size": 8, "lsa_dim": 16,
                   "als_rank": 8},
          "default": {}}


def _parts(text: str) -> Tuple[str, ...]:
  return tuple(p.strip() for p in str(text).split(",") if p.strip())


def add_arguments(group: argparse._ArgumentGroup) -> None:
  """User-similarity flags; each `dest` is a `UserSimilarityConfig` field."""
  group.add_argument("--parts", type=_parts, default=None,
                     help=f"Comma-separated parts of a user vector, of {','.join(PARTS)}: "
                          "tf-idf profile SVD, ALS factors, centroid of track vectors.")
  group.add_argument("--lsa-dim", dest="lsa_dim", type=int, default=None,
                     help="Size of the lsa part's vectors.")
  group.add_argument("--als-rank", dest="als_rank", type=int, default=None,
                     help="Factor size of the als part.")
  group.add_argument("--track-vectors", dest="track_vectors", choices=SOURCES, default=None,
                     help="Centroid part: track vectors from the two-tower track tower, from "
                          "text through word vectors, or from a precomputed items column.")
  group.add_argument("--word-vectors", dest="word_vectors", default=None,
                     help="For --track-vectors text: colisten (learned from co-listening), "
                          "cooccurrence (from the text alone) or a GloVe-format file path.")
  group.add_argument("--vector-column", dest="vector_column", default=None,
                     help="For --track-vectors column: the items column holding vectors.")
  group.add_argument("--two-tower-export", dest="two_tower_export", default=None,
                     help="For --track-vectors two_tower: read the vectors from this "
                          "two-tower version folder instead of training one.")
  group.add_argument("--recent-share", dest="recent_share", type=float, default=None,
                     help="Centroid over each user's most recent share of tracks (1: all).")
  group.add_argument("--metric", choices=METRICS, default=None,
                     help="cosine, or euclidean: score 1/(distance + epsilon).")
