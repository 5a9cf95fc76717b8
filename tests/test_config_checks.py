"""Every model family's config refuses bad numbers the same way (config_checks)."""

import math
import re

import numpy as np
import pytest

from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.registry import get_family

# Family -> an integer field that must be positive and a number field that must be >= 0.
FIELDS = {
    "two_tower": ("epochs", "learning_rate"),
    "dcn": ("epochs", "l2"),
    "two_tower_dcn": ("epochs", "l2"),
    "playlist_mf": ("epochs", "l2"),
    "taste_mlp": ("epochs", "weight_decay"),
    "als": ("iterations", "alpha"),
    "user_similarity": ("top_k", "epsilon"),
}


@pytest.mark.parametrize("model", sorted(FIELDS))
@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "4"])
def test_integer_fields_refuse_non_positive_bools_and_non_integers(model, bad):
  family = get_family(model)
  name = FIELDS[model][0]
  with pytest.raises(ValueError, match=rf"`{name}` should be a positive integer\. "
                                       rf"Received: `{name}` = {bad!r}\."):
    family.make_config("tiny", {name: bad})


@pytest.mark.parametrize("model", sorted(FIELDS))
@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, False])
def test_number_fields_refuse_negative_and_non_finite(model, bad):
  family = get_family(model)
  name = FIELDS[model][1]
  with pytest.raises(ValueError, match=rf"`{name}` should be a (positive|non-negative) number"):
    family.make_config("tiny", {name: bad})


def test_numpy_scalars_are_accepted_and_minimums_named():
  class Config:  # pylint: disable=too-few-public-methods
    size, zero, rate = np.int64(3), 0, np.float32(0.5)

  check_ints(Config, ("size",))
  check_ints(Config, ("zero",), minimum=0)
  check_numbers(Config, ("rate",), positive=True)
  with pytest.raises(ValueError, match="`zero` should be a positive integer"):
    check_ints(Config, ("zero",))
  with pytest.raises(ValueError, match="`zero` should be a positive number"):
    check_numbers(Config, ("zero",), positive=True)


@pytest.mark.parametrize("model,field,bad,message", [
    ("two_tower", "features", "some", "`features` should be 'all' or 'ids'. "
                                      "Received: `features` = 'some'."),
    ("two_tower", "optimizer", "rmsprop", "`optimizer` should be one of ('adam', 'adagrad', "
                                          "'sgd'). Received: `optimizer` = 'rmsprop'."),
    ("two_tower", "history_pooling", "last", "`history_pooling` should be 'mean' or 'recency'. "
                                             "Received: `history_pooling` = 'last'."),
    ("dcn", "labels", "clicks", "`labels` should be 'explicit' or 'implicit'. "
                                "Received: `labels` = 'clicks'."),
    ("dcn", "structure", "mixed", "`structure` should be 'stacked' or 'parallel'. "
                                  "Received: `structure` = 'mixed'."),
    ("als", "center", "median", "`center` should be one of ('biases', 'mean', 'none'). "
                                "Received: `center` = 'median'."),
    ("als", "recommendations_format", "json", "`recommendations_format` should be 'parquet' or "
                                              "'csv'. Received: `recommendations_format` = 'json'."),
    ("playlist_mf", "negative_sampling", "hard", "`negative_sampling` should be 'uniform' or "
                                                "'popularity'. Received: `negative_sampling` = 'hard'."),
    ("taste_mlp", "negatives", "hard", "`negatives` should be 'least_similar' or 'random'. "
                                       "Received: `negatives` = 'hard'."),
    ("user_similarity", "metric", "manhattan", "`metric` should be 'euclidean' or 'cosine'. "
                                               "Received: `metric` = 'manhattan'."),
    ("user_similarity", "track_vectors", "lyrics", "`track_vectors` should be one of ('two_tower', "
                                                   "'text', 'column'). Received: `track_vectors` = 'lyrics'."),
])
def test_every_family_refuses_choices_with_the_allowed_values(model, field, bad, message):
  """Every family's allowed-value checks go through `check_choices`: one wording, two values
  read "'a' or 'b'", more read "one of (...)"."""
  with pytest.raises(ValueError) as error:
    get_family(model).make_config("tiny", {field: bad})
  assert str(error.value) == message


@pytest.mark.parametrize("model,bad,message", [
    ("two_tower_dcn", 1.5, "`recent_share` should be in [0, 1]. Received: `recent_share` = 1.5."),
    ("two_tower_dcn", -0.1, "`recent_share` should be in [0, 1]. Received: `recent_share` = -0.1."),
    ("two_tower_dcn", "half", "`recent_share` should be in [0, 1]. "
                              "Received: `recent_share` = 'half'."),
    ("user_similarity", 0.0, "`recent_share` should be in (0, 1]. Received: `recent_share` = 0.0."),
    ("user_similarity", 1.2, "`recent_share` should be in (0, 1]. Received: `recent_share` = 1.2."),
])
def test_share_fields_refuse_values_outside_their_interval(model, bad, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    get_family(model).make_config("tiny", {"recent_share": bad})
  get_family(model).make_config("tiny", {"recent_share": 1.0})


def test_an_unknown_preset_is_one_error_for_every_family():
  from tfrec_music.data import synthetic
  from tfrec_music.models.registry import FAMILY_NAMES
  from tfrec_music.models.registry import get_family
  with pytest.raises(ValueError) as data_error:
    synthetic.resolve_config("huge")
  for name in FAMILY_NAMES:
    with pytest.raises(ValueError, match=r"`preset` should be one of .*Received: `preset` = 'huge'"):
      get_family(name).make_config("huge", {})
  assert "Received: `preset` = 'huge'" in str(data_error.value)
  # A catalogue preset without settings of the family's own uses its default settings.
  assert get_family("popularity").make_config("large", {}) == get_family(
      "popularity").make_config("default", {})


def test_the_run_seed_reaches_the_model_config_unless_set():
  from tfrec_music.models.registry import get_family
  from tfrec_music.training import RunConfig
  from tfrec_music.training import model_config_for
  two_tower = get_family("two_tower")
  assert model_config_for(two_tower, RunConfig(seed=3)).seed == 3
  assert model_config_for(two_tower, RunConfig(seed=3, hparams={"seed": 1})).seed == 1
  # A config without a seed field (popularity) is built as before.
  assert model_config_for(get_family("popularity"), RunConfig(seed=3)) == \
      get_family("popularity").make_config("default", {})


def test_logq_exponent_scales_the_correction_and_rejects_negatives():
  import numpy as np
  from tfrec_music.models.registry import get_family
  from tfrec_music.models.two_tower.network import TwoTowerModel
  two_tower = get_family("two_tower")
  with pytest.raises(ValueError, match=r"`logq_exponent` should be a non-negative number"):
    two_tower.make_config("tiny", {"logq_exponent": -1})
  probability = np.array([0.5, 0.25, 0.25])
  for exponent in (1.0, 1.25):
    config = two_tower.make_config("tiny", {"logq_exponent": exponent})
    model = TwoTowerModel(None, None, {}, probability, config)
    # TFRS subtracts log(p) from the logits: p ** e subtracts e x log(p).
    np.testing.assert_allclose(np.log(model.log_q.numpy()), exponent * np.log(probability),
                               rtol=1e-6)
