"""TAARlite: add-ons related to an add-on, from co-installation counts (SPEC §5.6).

``coinstall[k][g]`` counts clients having both k and g; ``ranking[g]`` counts
clients having g. Rare pairs (below 5 % of the mean install count) are ignored,
the ``truncate`` strongest co-installs of k are kept, and their counts are
normalised by one of five modes so that merely popular add-ons do not appear
everywhere. The default mode's answer is precomputed for every key at build
time, so a request is a dict lookup and an array slice; other modes are computed
on first use and kept in a small bounded memo.

The graph is held as scipy CSR matrices over GUIDs sorted ascending, so a node's
index is also its GUID tie-break rank. :func:`reference_recommend` is a slow,
dict-by-dict transcription of the SPEC kept to test the vectorised path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from itertools import chain

import numpy as np
from scipy import sparse

from .base import check_limit, timer

logger = logging.getLogger(__name__)

MODES = ("rownorm_sum", "row_count", "row_sum", "guidception", "none")
DEFAULT_MODE = "rownorm_sum"
#: Pairs rarer than this fraction of the mean install count are ignored.
MIN_INSTALLS_FRACTION = 0.05
#: Random-walk step weights ((4 - l) / 3)² for l = 1, 2, 3.
WALK_WEIGHTS = (1.0, 4.0 / 9.0, 1.0 / 9.0)
ROUND_DIGITS = 10


def check_mode(mode) -> str:
    """Return ``mode`` or raise ValueError naming the allowed values."""
    if mode not in MODES:
        raise ValueError(f"unknown normalize mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def _segments(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(group, position)`` of every stored entry of ``rows`` in a CSR matrix, row by row."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    group = np.repeat(np.arange(rows.shape[0]), lengths)
    offsets = np.arange(group.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return group, np.repeat(starts, lengths) + offsets


def candidate_order(group: np.ndarray, weights: np.ndarray, installs: np.ndarray,
                    nodes: np.ndarray) -> np.ndarray:
    """Permutation sorting candidates by group, then (round(w, 10) desc, installs desc, GUID asc).

    ``nodes`` are node indices, which are GUID ranks. Rounding makes weights
    that differ only by floating-point noise tie, so installs decide.
    """
    return np.lexsort((nodes, -installs, -np.round(weights, ROUND_DIGITS), group))


def _within_group_rank(group: np.ndarray) -> np.ndarray:
    """0, 1, 2... inside each run of equal values of a sorted ``group`` array."""
    n = group.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    first = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    run = np.repeat(first, np.diff(np.r_[first, n]))
    return np.arange(n) - run


class GuidBasedRecommender:
    """Related add-ons for an add-on GUID (TAARlite).

    Parameters
    ----------
    truncate : int, default 20
        ``T``: co-installed candidates kept per GUID (SPEC §6.1 ``TAARLITE_TRUNCATE``).
    cache_size : int, default 4096
        Maximum number of memoised non-default-mode answers.

    Attributes
    ----------
    guids_ : tuple of str
        Every GUID of the coinstall graph, ascending.
    index_ : dict[str, int]
        GUID -> node index.
    counts_ : scipy.sparse.csr_matrix (n, n)
        Unfiltered counts ``C`` (self pairs and counts < 1 dropped).
    filtered_ : scipy.sparse.csr_matrix (n, n)
        ``F``: entries of ``C`` with count >= ``min_installs_``.
    walk_ : scipy.sparse.csr_matrix (n, n)
        ``Q``: row-normalised ``F`` (the guidception transition matrix).
    count_map_, row_count_, row_norm_sum_ : ndarray (n,)
        Column statistics of ``C`` (SPEC §5.6).
    installs_ : ndarray (n,)
        ``R.get(g, 0)`` per node.
    ranking_ : dict[str, int]
        The ranking artifact.
    min_installs_ : float
        ``m = 0.05 · mean(R)`` (0 when the ranking is unusable).
    ranking_usable_ : bool
        The ranking is non-empty with a finite mean.
    default_indptr_, default_nodes_, default_weights_ : ndarray
        Ordered default-mode answers for every node, CSR-style.
    loaded_ : bool
        A coinstall artifact was given.
    """

    MODES = MODES
    DEFAULT_MODE = DEFAULT_MODE

    def __init__(self, *, truncate: int = 20, cache_size: int = 4096):
        self.truncate = truncate
        self.cache_size = cache_size
        self._memo: dict = {}

    # ------------------------------------------------------------------ build

    def fit(self, coinstall=None, ranking=None) -> GuidBasedRecommender:
        """Build the graph, its statistics and the default-mode answers."""
        if isinstance(self.truncate, bool) or not isinstance(self.truncate, int) or self.truncate < 1:
            raise ValueError(f"truncate must be a positive int, got {self.truncate!r}")
        if isinstance(self.cache_size, bool) or not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int, got {self.cache_size!r}")
        self._memo = {}
        coinstall = coinstall or {}
        self.loaded_ = bool(coinstall)
        self.ranking_ = dict(ranking or {})
        mean = float(np.mean(list(self.ranking_.values()))) if self.ranking_ else math.nan
        self.ranking_usable_ = math.isfinite(mean)
        self.min_installs_ = MIN_INSTALLS_FRACTION * mean if self.ranking_usable_ else 0.0
        if self.ranking_ and not self.ranking_usable_:
            logger.warning("TAARlite ranking has a non-finite mean; min-installs filter disabled")

        # flatten the dict of dicts with C-level iteration (a million entries in well under a second)
        inner = list(chain.from_iterable(coinstall.values()))
        self.guids_ = tuple(sorted(set(coinstall).union(inner)))
        self.index_ = {g: i for i, g in enumerate(self.guids_)}
        n, total = len(self.guids_), len(inner)
        rows = np.repeat(np.fromiter(map(self.index_.__getitem__, coinstall), np.int64, count=len(coinstall)),
                         np.fromiter(map(len, coinstall.values()), np.int64, count=len(coinstall)))
        cols = np.fromiter(map(self.index_.__getitem__, inner), np.int64, count=total)
        vals = np.fromiter(chain.from_iterable(row.values() for row in coinstall.values()), np.float64,
                           count=total)
        valid = (rows != cols) & np.isfinite(vals) & (vals >= 1)  # self pairs and counts < 1 dropped
        counts = sparse.csr_matrix((vals[valid], (rows[valid], cols[valid])), shape=(n, n), dtype=np.float64)
        counts.sum_duplicates()
        counts.sort_indices()
        self.counts_ = counts

        entry_rows = np.repeat(np.arange(n), np.diff(counts.indptr))
        row_sums = np.asarray(counts.sum(axis=1)).ravel()
        self.count_map_ = np.bincount(counts.indices, weights=counts.data, minlength=n)
        self.row_count_ = np.bincount(counts.indices, minlength=n).astype(np.float64)
        self.row_norm_sum_ = np.bincount(counts.indices, weights=counts.data / row_sums[entry_rows]
                                         if n else counts.data, minlength=n)
        self.installs_ = np.array([self.ranking_.get(g, 0) for g in self.guids_], dtype=np.float64)

        keep = counts.data >= self.min_installs_
        filtered = sparse.csr_matrix((counts.data[keep], counts.indices[keep], np.r_[0, np.cumsum(
            np.bincount(entry_rows[keep], minlength=n))]), shape=(n, n))
        self.filtered_ = filtered
        f_sums = np.asarray(filtered.sum(axis=1)).ravel()
        f_rows = np.repeat(np.arange(n), np.diff(filtered.indptr))
        self.walk_ = sparse.csr_matrix((filtered.data / f_sums[f_rows] if n else filtered.data,
                                        filtered.indices, filtered.indptr), shape=(n, n))

        self.default_indptr_, self.default_nodes_, self.default_weights_ = self._ordered_direct(
            np.arange(n), DEFAULT_MODE)
        return self

    def _ordered_direct(self, rows: np.ndarray, mode: str):
        """Ordered answers of a non-walk mode for several keys at once, CSR-style."""
        group, pos = _segments(self.filtered_.indptr, rows)
        nodes = self.filtered_.indices[pos]
        counts = self.filtered_.data[pos]
        # truncation: per key the T largest counts, ties GUID (= node index) ascending
        order = np.lexsort((nodes, -counts, group))
        group, nodes, counts = group[order], nodes[order], counts[order]
        keep = _within_group_rank(group) < self.truncate
        group, nodes, counts = group[keep], nodes[keep], counts[keep]
        if mode == "none":
            weights = counts
        elif mode == "row_count":
            weights = counts / self.row_count_[nodes]
        elif mode == "row_sum":
            weights = counts / self.count_map_[nodes]
        else:  # rownorm_sum
            share = counts / np.bincount(group, weights=counts, minlength=rows.shape[0])[group]
            usable = self.row_norm_sum_[nodes] > 0
            group, nodes = group[usable], nodes[usable]
            weights = share[usable] / self.row_norm_sum_[nodes]
        return self._order(group, nodes, weights, rows.shape[0])

    def _ordered_walk(self, k: int):
        """Ordered guidception answer for key ``k`` (a 3-step walk from k)."""
        n = len(self.guids_)
        group, pos = _segments(self.filtered_.indptr, np.array([k]))
        nodes, counts = self.filtered_.indices[pos], self.filtered_.data[pos]
        top = np.lexsort((nodes, -counts))[: self.truncate]
        p1 = np.zeros(n)
        p1[nodes[top]] = counts[top] / counts[top].sum()
        p2 = self._step(p1)
        p3 = self._step(p2)
        w = WALK_WEIGHTS[0] * p1 + WALK_WEIGHTS[1] * p2 + WALK_WEIGHTS[2] * p3
        w[k] = 0.0
        nodes = np.flatnonzero(w > 0)
        weights = w[nodes] / w[nodes].sum() if nodes.size else w[nodes]
        return self._order(np.zeros(nodes.shape[0], dtype=np.int64), nodes, weights, 1)

    def _step(self, p: np.ndarray) -> np.ndarray:
        """``p · Q``, touching only the rows of Q where ``p`` has mass (mass on row-less nodes drops)."""
        support = np.flatnonzero(p)
        group, pos = _segments(self.walk_.indptr, support)
        mass = self.walk_.data[pos] * p[support][group]
        return np.bincount(self.walk_.indices[pos], weights=mass, minlength=p.shape[0])

    def _order(self, group, nodes, weights, n_groups):
        """Sort each group by (round(w, 10) desc, installs desc, GUID asc); CSR-style output."""
        order = candidate_order(group, weights, self.installs_[nodes], nodes)
        indptr = np.r_[0, np.cumsum(np.bincount(group, minlength=n_groups))]
        return indptr, nodes[order].astype(np.int64), weights[order].astype(np.float64)

    # ------------------------------------------------------------------ queries

    def can_recommend(self, guid: str) -> bool:
        """True when ``guid`` has co-installed add-ons left after the min-installs filter."""
        k = self.index_.get(guid)
        return k is not None and self.filtered_.indptr[k + 1] > self.filtered_.indptr[k]

    def installs(self, guid: str) -> int:
        """``ranking[guid]``, 0 when absent."""
        return int(self.ranking_.get(guid, 0))

    def recommend(self, guid: str, mode: str = DEFAULT_MODE, limit: int = 4,
                  metrics=None) -> list[tuple[str, float]]:
        """Up to ``limit`` ``(guid, weight)`` pairs related to ``guid`` (SPEC §5.6).

        Parameters
        ----------
        guid : str
            The add-on the answer is about.
        mode : str
            One of :data:`MODES`; anything else raises ValueError.
        limit : int
            Maximum number of pairs.
        metrics : markus-like, optional
            Receives the ``guid_recommendation`` timer.
        """
        check_mode(mode)
        limit = check_limit(limit)
        with timer(metrics, "guid_recommendation"):
            k = self.index_.get(guid)
            if k is None or limit == 0:
                return []
            if mode == DEFAULT_MODE:
                start = self.default_indptr_[k]
                stop = min(self.default_indptr_[k + 1], start + limit)
                nodes, weights = self.default_nodes_[start:stop], self.default_weights_[start:stop]
            else:
                nodes, weights = self._memoised(k, mode, limit)
                nodes, weights = nodes[:limit], weights[:limit]
            guids = self.guids_
            return [(guids[i], w) for i, w in zip(nodes.tolist(), weights.tolist(), strict=True)]

    def _memoised(self, k: int, mode: str, limit: int):
        """The ordered answer of a non-default mode; memoised up to ``truncate`` entries per key.

        An entry keeps only the first ``truncate`` (>= the service's result count)
        nodes and weights, copied out of the full answer, so a guidception walk
        that reaches thousands of add-ons costs the memo a few hundred bytes. A
        request for more than that is computed and not memoised.
        """
        key = (mode, k)
        if limit > self.truncate:
            return self._answer(k, mode)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        nodes, weights = self._answer(k, mode)
        answer = (nodes[: self.truncate].copy(), weights[: self.truncate].copy())
        if self.cache_size:
            while len(self._memo) >= self.cache_size:
                try:  # oldest first; another thread may evict the same entry meanwhile
                    self._memo.pop(next(iter(self._memo)), None)
                except (StopIteration, RuntimeError):
                    break
            self._memo[key] = answer
        return answer

    def _answer(self, k: int, mode: str):
        if not self.can_recommend(self.guids_[k]):
            answer = (np.empty(0, dtype=np.int64), np.empty(0))
        elif mode == "guidception":
            _, nodes, weights = self._ordered_walk(k)
            answer = (nodes, weights)
        else:
            _, nodes, weights = self._ordered_direct(np.array([k]), mode)
            answer = (nodes, weights)
        return answer

    # ------------------------------------------------------------------ pickling

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_memo"] = {}  # a cache, not model state
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._memo = {}


def reference_recommend(coinstall: Mapping, ranking: Mapping, guid: str, mode: str = DEFAULT_MODE,
                        limit: int = 4, truncate: int = 20) -> list[tuple[str, float]]:
    """Slow transcription of SPEC §5.6 over plain dicts, for testing the vectorised path."""
    check_mode(mode)
    C = {k: {g: c for g, c in row.items() if g != k} for k, row in coinstall.items()}
    values = list(ranking.values())
    mean = sum(values) / len(values) if values else math.nan
    m = MIN_INSTALLS_FRACTION * mean if math.isfinite(mean) else 0.0
    F = {k: {g: c for g, c in row.items() if c >= m} for k, row in C.items()}
    count_map, row_count, row_norm_sum = {}, {}, {}
    for row in C.values():
        total = sum(row.values())
        for g, c in row.items():
            count_map[g] = count_map.get(g, 0) + c
            row_count[g] = row_count.get(g, 0) + 1
            row_norm_sum[g] = row_norm_sum.get(g, 0.0) + c / total
    if not F.get(guid):
        return []
    D = dict(sorted(F[guid].items(), key=lambda kv: (-kv[1], kv[0]))[:truncate])
    weights = {}
    if mode == "none":
        weights = {g: float(c) for g, c in D.items()}
    elif mode == "row_count":
        weights = {g: c / row_count[g] for g, c in D.items()}
    elif mode == "row_sum":
        weights = {g: c / count_map[g] for g, c in D.items()}
    elif mode == "rownorm_sum":
        total = sum(D.values())
        weights = {g: (c / total) / row_norm_sum[g] for g, c in D.items() if row_norm_sum.get(g)}
    else:  # guidception
        total = sum(D.values())
        step = {g: c / total for g, c in D.items()}
        walked: dict[str, float] = {}
        for weight in WALK_WEIGHTS:
            for g, p in step.items():
                walked[g] = walked.get(g, 0.0) + weight * p
            nxt: dict[str, float] = {}
            for a, p in step.items():
                row = F.get(a) or {}
                row_total = sum(row.values())
                for b, c in row.items():
                    nxt[b] = nxt.get(b, 0.0) + p * c / row_total
            step = nxt
        walked[guid] = 0.0
        positive = {g: w for g, w in walked.items() if w > 0}
        total = sum(positive.values())
        weights = {g: w / total for g, w in positive.items()} if total > 0 else {}
    ordered = sorted(weights.items(), key=lambda kv: (-round(kv[1], ROUND_DIGITS), -ranking.get(kv[0], 0), kv[0]))
    return ordered[:limit]
