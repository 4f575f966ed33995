"""The recommender contract and the ranking helpers every recommender shares (SPEC §5.1).

A recommender is built in two steps, as scikit-learn estimators are: ``__init__``
stores keyword hyperparameters unchanged, ``fit(...)`` validates the loaded
artifacts and computes every derived array once (attributes ending in ``_``).
After that, ``can_recommend`` and ``recommend`` only read state. State is numpy
arrays, dicts, tuples and scalars, so every recommender pickles.

Rankings everywhere break ties by GUID ascending (SPEC §0). Recommenders keep a
precomputed integer rank per GUID so that ``np.lexsort`` can order by
(score descending, GUID ascending) without comparing strings at request time.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Mapping, Sequence
from operator import itemgetter

import numpy as np

from taar.artifacts import ENSEMBLE_MEMBERS  # noqa: F401  (re-exported: the recommenders' one list)


class Recommender(abc.ABC):
    """Per-user recommender interface (SPEC §5.1).

    Subclasses store hyperparameters in ``__init__`` and build derived state in
    ``fit``. ``profile`` is the normalised dict of SPEC §3.4; ``extra`` carries
    request options such as ``{"locale": "de", "platform": "win"}``. Neither is
    ever mutated.
    """

    @abc.abstractmethod
    def fit(self, **artifacts) -> Recommender:
        """Build derived state from loaded artifacts.

        Parameters
        ----------
        **artifacts
            Normalised artifacts by catalogue key (SPEC §2.7); a missing or
            ``None`` artifact leaves the recommender unable to recommend.

        Returns
        -------
        Recommender
            ``self``.
        """

    @abc.abstractmethod
    def can_recommend(self, profile: Mapping, extra: Mapping | None = None) -> bool:
        """Whether this recommender has the models and profile fields it needs.

        Parameters
        ----------
        profile : Mapping
            Normalised client profile (SPEC §3.4).
        extra : Mapping, optional
            Request options (``locale``, ``platform``).

        Returns
        -------
        bool
        """

    @abc.abstractmethod
    def recommend(self, profile: Mapping, limit: int, extra: Mapping | None = None) -> list[tuple[str, float]]:
        """Return at most ``limit`` ``(guid, weight)`` pairs.

        Parameters
        ----------
        profile : Mapping
            Normalised client profile (SPEC §3.4).
        limit : int
            Maximum number of results (>= 0).
        extra : Mapping, optional
            Request options (``locale``, ``platform``).

        Returns
        -------
        list of (str, float)
            Sorted by weight descending, ties by GUID ascending; ``[]`` when the
            recommender cannot recommend for this profile.
        """


#: What :meth:`RowRecommender.recommend_rows` returns when it cannot recommend.
NO_ROWS = (np.empty(0, dtype=np.int64), np.empty(0))


class RowRecommender(Recommender):
    """A recommender that scores rows of its own GUID tuple ``guids_`` (set by ``fit``).

    Subclasses implement :meth:`recommend_rows`; :meth:`recommend` turns its rows
    into ``(guid, score)`` pairs, and the ensemble's dense path reads the rows
    directly, indexed through ``candidate_guids_``.
    """

    @property
    def candidate_guids_(self) -> tuple[str, ...]:
        """The GUID of each row: what :meth:`recommend_rows` indexes (``guids_``)."""
        return self.guids_

    @abc.abstractmethod
    def recommend_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend` as ``(rows, scores)`` arrays; :data:`NO_ROWS` when it cannot recommend."""

    def candidate_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """The rows and scores of :meth:`recommend_rows` in any order: all an ensemble sum needs.

        :data:`NO_ROWS` when it cannot recommend (so the caller need not ask
        ``can_recommend`` first). Subclasses skip the final sort.
        """
        return self.recommend_rows(profile, limit, extra)

    def recommend(self, profile: Mapping, limit: int, extra: Mapping | None = None) -> list[tuple[str, float]]:
        best, scores = self.recommend_rows(profile, limit, extra)
        return list(zip(map(self.guids_.__getitem__, best.tolist()), scores.tolist(), strict=True))


def check_limit(limit) -> int:
    """Return ``limit`` as an int, or raise ValueError naming the argument."""
    if type(limit) is int and limit >= 0:  # the per-request case, without four isinstance calls
        return limit
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0:
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")
    return int(limit)


def guid_ranks(guids: Sequence[str]) -> np.ndarray:
    """Rank of each GUID in ascending string order (0 = smallest); the tie-breaker array."""
    order = sorted(range(len(guids)), key=guids.__getitem__)
    ranks = np.empty(len(guids), dtype=np.int64)
    ranks[order] = np.arange(len(guids), dtype=np.int64)
    return ranks


def _kth_smallest(scores: np.ndarray, k: int):
    """``np.partition(scores, k)[k]``: the same copy and in-place partition, without the wrapper."""
    work = scores.copy()
    work.partition(k)
    return work[k]


def top_indices(scores: np.ndarray, tiebreak: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` best entries: score descending, then ``tiebreak`` ascending.

    Only the entries scoring at least the ``limit``-th best score are sorted, so
    the cost is a partition plus a small lexsort. ``scores`` must be finite.
    """
    n = scores.shape[0]
    if limit <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    if limit >= n:  # every entry: sort them all, no gathers through an identity index
        return np.lexsort((tiebreak, -scores))[:limit]
    kth = _kth_smallest(scores, n - limit)
    idx = (scores >= kth).nonzero()[0]  # ndarray.nonzero: np.flatnonzero without its wrappers
    order = np.lexsort((tiebreak[idx], -scores[idx]))
    return idx[order[:limit]]


def ascending_order(keys: np.ndarray, count: int, order: np.ndarray | None = None) -> np.ndarray:
    """``keys.argsort(kind="stable")[:count]``: the ``count`` smallest keys, equal keys by position.

    A stable sort is the definition; numpy's default (unstable) sort is several times
    faster and orders equal keys arbitrarily, so its answer is kept only when the first
    ``count + 1`` sorted keys are pairwise different and not NaN. Then each of the first
    ``count`` keys occurs once in ``keys`` (the sorted sequence is the same for any
    algorithm, and the key after them is larger), so both sorts put the same position
    at each of those places. Otherwise (ties, practically only for coarse scores) the
    stable sort is made. ``order``: ``keys.argsort()`` when the caller has it already.
    """
    if order is None:
        order = keys.argsort()
    if count < SMALL_HEAD:  # a few keys (the sampled ones): checked as Python floats
        head = keys[order[: count + 1]].tolist()
        distinct = not head or (head[-1] == head[-1] and len(set(head)) == len(head))  # -0.0 == 0.0
    else:
        head = keys[order[: count + 1]]
        distinct = not head.shape[0] or (head[-1] == head[-1] and not (head[1:] == head[:-1]).any())
    # NaN sorts last, so a NaN among the head makes its last key NaN
    return order[:count] if distinct else keys.argsort(kind="stable")[:count]


#: Below this many keys, :func:`ascending_order` checks the head in Python (fewer numpy calls).
SMALL_HEAD = 32


def top_rows(scores: np.ndarray, tiebreak: np.ndarray, limit: int) -> np.ndarray:
    """The entries :func:`top_indices` picks, in no particular order; ``limit < len(scores)``.

    A partition and one comparison; the sort is only needed when entries tie
    with the ``limit``-th best score (then the smallest tiebreaks among them stay).
    """
    n = scores.shape[0]
    if limit <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    kth = _kth_smallest(scores, n - limit)
    idx = (scores >= kth).nonzero()[0]
    if idx.shape[0] > limit:
        idx = idx[np.lexsort((tiebreak[idx], -scores[idx]))[:limit]]
    return idx


_GUID = itemgetter(0)
_WEIGHT = itemgetter(1)


def sort_pairs(pairs) -> list[tuple[str, float]]:
    """Sort ``(guid, weight)`` pairs by weight descending, ties GUID ascending.

    Two stable C-level sorts (GUID, then weight with ``reverse=True``, which keeps
    equal weights in GUID order) instead of one sort with a Python key tuple.
    """
    ordered = sorted(pairs, key=_GUID)
    ordered.sort(key=_WEIGHT, reverse=True)
    return ordered


_NO_TIMER = contextlib.nullcontext()  # stateless and reentrant: one for every untimed block


def timer(metrics, name: str):
    """A context manager timing ``name`` on a markus-like ``metrics`` object (or nothing).

    Uses ``metrics.timer(name)`` when available, else measures and calls
    ``metrics.timing(name, ms)``; ``metrics=None`` times nothing.
    """
    if metrics is None:
        return _NO_TIMER
    if hasattr(metrics, "timer"):
        return metrics.timer(name)
    if hasattr(metrics, "timing"):
        return _timing(metrics, name)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _timing(metrics, name):
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.timing(name, (time.perf_counter() - started) * 1000.0)


def incr(metrics, name: str, tags=None) -> None:
    """Increment counter ``name`` on a markus-like ``metrics`` object, if any."""
    if metrics is not None and hasattr(metrics, "incr"):
        metrics.incr(name, value=1, tags=tags)
