"""Weighted sampling without replacement, reproducible from a seed (SPEC §5.7.3).

The per-user service does not always return its top-N: it samples ``size``
candidates with probability proportional to their shifted weights, so that less
certain candidates get exposure. The algorithm is fixed (exponential keys of
Efraimidis and Spirakis: ``k_i = ln(u_i) / p_i``, keep the largest) so that a
seed replays exactly: the same uniforms in the same order give the same choice,
whatever numpy's own ``choice`` implementation does in a future version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .base import ascending_order, sort_pairs

EPSILON = float(np.finfo(np.float64).eps)


def selection_probabilities(weights: np.ndarray) -> np.ndarray:
    """``p_i = (w_i - min w + eps) / sum_k (w_k - min w + eps)`` (SPEC §5.7.3)."""
    shifted = weights - weights.min() + EPSILON
    return shifted / shifted.sum()


def weighted_sample(candidates: Sequence[tuple[str, float]], size: int,
                    rng: np.random.Generator) -> list[tuple[str, float]]:
    """Choose ``min(size, n)`` candidates without replacement, weighted (SPEC §5.7.3).

    Parameters
    ----------
    candidates : sequence of (str, float)
        ``(guid, weight)`` pairs with finite weights, in any order. Their order
        matters for reproducibility: uniform ``i`` goes to candidate ``i``.
    size : int
        How many to choose (>= 0).
    rng : numpy.random.Generator
        Source of the ``n`` uniforms (one ``rng.random(n)`` call).

    Returns
    -------
    list of (str, float)
        The chosen pairs sorted by weight descending, ties GUID ascending.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    n = len(candidates)
    size = min(int(size), n)
    if size == 0:
        return []
    weights = np.fromiter((w for _, w in candidates), dtype=np.float64, count=n)
    if not np.isfinite(weights).all():
        raise ValueError("candidates must have finite weights")
    return sort_pairs(candidates[i] for i in sample_positions(weights, size, rng).tolist())


def sample_positions(weights: np.ndarray, size: int, rng: np.random.Generator, *,
                     descending: bool = False) -> np.ndarray:
    """The positions :func:`weighted_sample` chooses for these (finite) weights, best key first.

    Parameters
    ----------
    weights : ndarray of float, shape (n,)
        Finite candidate weights; uniform ``i`` goes to position ``i``.
    size : int
        How many to choose; ``min(size, n)`` are returned.
    rng : numpy.random.Generator
        Source of the ``n`` uniforms (one ``rng.random(n)`` call, none when nothing is chosen).
    descending : bool, default False
        ``weights`` are sorted descending (the ensemble's pool): the last is the minimum.
    """
    n = weights.shape[0]
    size = min(int(size), n)
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    # selection_probabilities with the sign folded in: x / -t is exactly -(x / t) (round to nearest
    # is symmetric), so ln(u) / -p is exactly -(ln(u) / p) = -key, one negation fewer
    shifted = weights - (weights[-1] if descending else weights.min())
    shifted += EPSILON
    negative_p = shifted / -shifted.sum()
    u = rng.random(n)
    with np.errstate(divide="ignore"):
        negative_keys = np.log(u) / negative_p  # u == 0 gives a +inf: never preferred over a real key
    # the `size` largest keys; equal keys (practically impossible) resolve by position (a stable sort)
    return ascending_order(negative_keys, size)


def reference_weighted_sample(candidates, size, rng) -> list[tuple[str, float]]:
    """Readable loop version of :func:`weighted_sample` (same uniforms, same answer)."""
    n = len(candidates)
    if n == 0 or size == 0:
        return []
    low = min(w for _, w in candidates)
    shifted = [w - low + EPSILON for _, w in candidates]
    total = sum(shifted)
    u = rng.random(n)
    keyed = []
    for i in range(n):
        key = math.log(u[i]) / (shifted[i] / total) if u[i] > 0 else -math.inf
        keyed.append((key, i))
    keyed.sort(key=lambda t: (-t[0], t[1]))
    return sort_pairs(candidates[i] for _, i in keyed[:size])
