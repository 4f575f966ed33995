"""Weighted sampling without replacement with exponential keys (SPEC §5.7.3)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taar.recommenders import weighted_sample
from taar.recommenders.randomizer import reference_weighted_sample, sample_positions, selection_probabilities

pytestmark = pytest.mark.unit


class FixedUniforms:
    """An rng whose ``random(n)`` returns given uniforms."""

    def __init__(self, u):
        self.u = np.array(u)

    def random(self, n):
        assert n == len(self.u)
        return self.u


CANDIDATES = [("a", 2.0), ("b", 3.0), ("c", 4.0)]


def test_probabilities_shift_by_the_minimum():
    # shifted = [eps, 1 + eps, 2 + eps] -> p ≈ [0, 1/3, 2/3]
    p = selection_probabilities(np.array([2.0, 3.0, 4.0]))
    assert p == pytest.approx([0.0, 1 / 3, 2 / 3], abs=1e-15)
    assert p[0] > 0


def test_keys_choose_the_largest_ln_u_over_p():
    # u = [0.9, 0.5, 0.1]: keys a = ln .9 / ~2e-16 ≈ -5e14; b = ln .5 · 3 = -2.079; c = ln .1 · 1.5 = -3.454
    rng = FixedUniforms([0.9, 0.5, 0.1])
    assert weighted_sample(CANDIDATES, 1, rng) == [("b", 3.0)]
    # size 2 -> b and c, returned by weight descending
    assert weighted_sample(CANDIDATES, 2, rng) == [("c", 4.0), ("b", 3.0)]


def test_size_larger_than_pool_returns_everything_sorted():
    rng = np.random.Generator(np.random.PCG64(3))
    assert weighted_sample([("b", 1.0), ("a", 1.0), ("c", 5.0)], 10, rng) == [("c", 5.0), ("a", 1.0), ("b", 1.0)]


def test_empty_and_zero():
    rng = np.random.Generator(np.random.PCG64(3))
    assert weighted_sample([], 3, rng) == []
    assert weighted_sample(CANDIDATES, 0, rng) == []


def test_bad_arguments():
    rng = np.random.Generator(np.random.PCG64(3))
    with pytest.raises(ValueError, match="size"):
        weighted_sample(CANDIDATES, -1, rng)
    with pytest.raises(ValueError, match="finite"):
        weighted_sample([("a", math.nan), ("b", 1.0)], 1, rng)


@settings(max_examples=50, deadline=None)
@given(weights=st.lists(st.floats(-10, 10), min_size=1, max_size=12), size=st.integers(0, 12),
       seed=st.integers(0, 2**63 - 1))
def test_matches_the_reference_loop(weights, size, seed):
    candidates = [(f"g{i:02d}", w) for i, w in enumerate(weights)]
    got = weighted_sample(candidates, size, np.random.Generator(np.random.PCG64(seed)))
    expected = reference_weighted_sample(candidates, size, np.random.Generator(np.random.PCG64(seed)))
    assert got == expected


def test_sample_positions_are_the_chosen_candidates_best_key_first():
    # weights 2, 3, 4: shifted 0+eps, 1+eps, 2+eps -> p ~ (0, 1/3, 2/3); keys ln(u)/p with u = .5, .5, .25:
    # b: ln(.5)*3 = -2.08, c: ln(.25)*1.5 = -2.08 (equal: the earlier position wins), a: -huge
    positions = sample_positions(np.array([2.0, 3.0, 4.0]), 2, FixedUniforms([0.5, 0.5, 0.25]))
    assert positions.tolist() == [1, 2]
    assert sample_positions(np.array([1.0]), 0, FixedUniforms([])).tolist() == []


@settings(max_examples=50, deadline=None)
@given(weights=st.lists(st.floats(-10, 10), min_size=1, max_size=40), size=st.integers(0, 40),
       seed=st.integers(0, 2**63 - 1))
def test_sorted_pool_positions_equal_the_general_ones(weights, size, seed):
    """descending=True (the minimum read as the last weight) chooses what the general path chooses."""
    pool = np.array(sorted(weights, reverse=True))
    got = sample_positions(pool, size, np.random.Generator(np.random.PCG64(seed)), descending=True)
    expected = sample_positions(pool, size, np.random.Generator(np.random.PCG64(seed)))
    assert got.tolist() == expected.tolist()
    # and both are the reference loop's choice, position by position
    reference = reference_weighted_sample([(f"g{i:02d}", w) for i, w in enumerate(pool.tolist())], size,
                                          np.random.Generator(np.random.PCG64(seed)))
    assert sorted(f"g{i:02d}" for i in got.tolist()) == sorted(g for g, _ in reference)
