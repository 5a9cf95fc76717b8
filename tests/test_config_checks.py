"""Every model family's config refuses bad numbers the same way (config_checks)."""

import math

import numpy as np
import pytest

from tfrec_music.models.config_checks import check_choices
from tfrec_music.models.config_checks import check_ints
from tfrec_music.models.config_checks import check_numbers
from tfrec_music.models.registry import get_family
from tfrec_music.models.two_tower import TwoTowerConfig

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


@pytest.mark.parametrize("field,bad,message", [
    ("features", "some", "`features` should be 'all' or 'ids'. Received: `features` = 'some'."),
    ("optimizer", "rmsprop", "`optimizer` should be one of ('adam', 'adagrad', 'sgd'). "
                             "Received: `optimizer` = 'rmsprop'."),
    ("history_pooling", "last", "`history_pooling` should be 'mean' or 'recency'. "
                                "Received: `history_pooling` = 'last'."),
])
def test_two_tower_choices_are_refused_with_the_allowed_values(field, bad, message):
  with pytest.raises(ValueError) as error:
    TwoTowerConfig(**{field: bad})
  assert str(error.value) == message
  check_choices(TwoTowerConfig(), {field: (getattr(TwoTowerConfig(), field), bad)})
