"""Bootstrap intervals and chance floors on hand-made data where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from headvec.stats import bootstrap_ci, majority_rate


def _width(interval: tuple[float, float, float]) -> float:
    return interval[2] - interval[1]


def test_draws_that_share_items_are_not_independent_values():
    """Three identical draws over 60 items hold no more information than one: the two-level interval
    stays as wide as one draw's, while flattening them shrinks it by about sqrt(3)."""
    rng = np.random.default_rng(0)
    items = (rng.random(60) < 0.7).astype(float)
    draws = np.stack([items, items, items])
    one_draw = bootstrap_ci(items, seed=1)
    flattened = bootstrap_ci(draws.ravel(), seed=1)
    two_level = bootstrap_ci(draws, seed=1)
    assert two_level[0] == pytest.approx(items.mean())
    assert _width(two_level) == pytest.approx(_width(one_draw), rel=0.15)
    assert _width(two_level) > 1.4 * _width(flattened)


def test_draws_that_disagree_widen_the_interval():
    """The draw level counts: draws scoring 0.2 and 0.8 on the same items give a wider interval than
    the same mean from draws that agree."""
    agree = np.full((4, 50), 0.5)
    agree[:, :25] = 1.0
    agree[:, 25:] = 0.0
    disagree = np.zeros((4, 50))
    disagree[:2, :10] = 1.0
    disagree[2:, :40] = 1.0
    assert agree.mean() == disagree.mean() == 0.5
    assert _width(bootstrap_ci(disagree, seed=2)) > _width(bootstrap_ci(agree, seed=2))


def test_bootstrap_rejects_higher_dimensions_and_is_seeded():
    with pytest.raises(ValueError, match="2-D"):
        bootstrap_ci(np.zeros((2, 2, 2)))
    values = [1, 0, 1, 1, 0, 1]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)


def test_majority_rate_is_the_share_of_the_most_frequent_label():
    assert majority_rate(["red", "red", "blue", "green"]) == 0.5
    assert majority_rate(["a"] * 63 + ["b"] * 137) == pytest.approx(0.685)
    assert np.isnan(majority_rate([]))
