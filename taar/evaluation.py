"""Offline ranking metrics, baselines and the model quality gate (SPEC §9).

Binary relevance over a full ranking (SPEC §9.1): for each user the ranked list
is the candidates (catalogue minus the user's training items) ordered by score
descending, ties by item ascending, and ``T_u`` is the held-out set. Users with
an empty ``T_u`` are left out of every mean.

One pass computes every metric for every cut-off ``1..k``
(:func:`ranking_metric_curves`); :func:`ranking_metrics_at_k` and the named
wrappers (:func:`hit_rate_at_k`, :func:`ndcg_at_k`, ...) read from it. For the
common leave-one-out case there is a sort-free path: :func:`target_ranks` counts,
per user, the candidates that beat the single held-out item, and
:func:`rank_metric_curves` turns those ranks into the same metrics.

Everything here is plain numpy (scipy for the co-occurrence baseline) so Spark
jobs use it on collected arrays or inside ``mapPartitions`` and the benchmarks
use it directly. No pyspark import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: Metric names, in report order. ``coverage`` needs the ranked lists, not just ranks.
METRICS = ("hr", "ndcg", "precision", "recall", "coverage")
#: The metrics a sidecar (SPEC §9.3) records per model and baseline.
SIDECAR_METRICS = ("hr", "ndcg", "precision", "coverage")
#: Rows handled at once by the chunked matrix helpers (bounds temporary memory).
CHUNK_ROWS = 4096


class GateRefused(Exception):
    """A model scored below its baseline on the holdout (SPEC §9.2; jobs exit 3)."""

    def __init__(self, metric: str, value: float, baseline: float, what: str = "model",
                 baseline_name: str = "popularity"):
        super().__init__(f"{what} refused by the quality gate: holdout {metric} {value:.6g} "
                         f"< {baseline_name} baseline {baseline:.6g}")
        self.metric = metric
        self.value = value
        self.baseline = baseline


# --------------------------------------------------------------------------- input handling


def _is_index_array(x) -> bool:
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer)


def _padded(rows: Sequence[Sequence[int]]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), max(width, 1)), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _as_arrays(ranked, held_out) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ranked, held)`` as -1-padded int matrices over one item coding.

    Integer ndarrays are used as they are (``-1`` = empty slot; a 1-D ``held_out``
    is one target per user). Anything else is a sequence of sequences of hashable
    items (GUIDs, ids) and is coded through a shared vocabulary.
    """
    if _is_index_array(ranked) and _is_index_array(held_out):
        if ranked.ndim != 2:
            raise ValueError(f"ranked must be a 2-D index matrix, got shape {ranked.shape}")
        held = held_out[:, None] if held_out.ndim == 1 else held_out
        if held.ndim != 2:
            raise ValueError(f"held_out must be a 1-D or 2-D index array, got shape {held_out.shape}")
        return ranked.astype(np.int64, copy=False), held.astype(np.int64, copy=False)
    vocab: dict = {}
    code = vocab.setdefault
    ranked_rows = [[code(item, len(vocab)) for item in row] for row in ranked]
    held_rows = []
    for items in held_out:
        items = [items] if isinstance(items, str) or not isinstance(items, Iterable) else items
        held_rows.append(sorted({code(item, len(vocab)) for item in items}))
    return _padded(ranked_rows), _padded(held_rows)


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return int(k)


def _discounts(k: int) -> np.ndarray:
    """``1 / log2(i + 1)`` for positions i = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


# --------------------------------------------------------------------------- full-list metrics


def ranking_metric_curves(ranked, held_out, max_k: int, catalogue_size: int | None = None) -> dict:
    """Every metric of SPEC §9.1 at every cut-off ``k = 1..max_k``, in one pass.

    Parameters
    ----------
    ranked : int ndarray of shape (n_users, >= 1) or sequence of sequences
        Each user's ranked list, best first (``-1`` pads an index matrix). Lists
        must not repeat an item and must already exclude the user's training items.
    held_out : int ndarray of shape (n_users,) or (n_users, m), or sequence of collections
        Each user's held-out set ``T_u`` (``-1`` pads; a 1-D array is one item each).
    max_k : int
        Largest cut-off.
    catalogue_size : int, optional
        ``|catalogue|`` for coverage; without it coverage is left out.

    Returns
    -------
    dict
        ``{"k": [1..max_k], "n_users": n, "hr": [...], "ndcg": [...], "precision": [...],
        "recall": [...], "coverage": [...]}`` with Python floats.
    """
    max_k = _check_k(max_k)
    ranked, held = _as_arrays(ranked, held_out)
    if ranked.shape[0] != held.shape[0]:
        raise ValueError(f"ranked has {ranked.shape[0]} users but held_out has {held.shape[0]}")
    if ranked.shape[1] < max_k:
        ranked = np.pad(ranked, ((0, 0), (0, max_k - ranked.shape[1])), constant_values=-1)
    top = ranked[:, :max_k]
    held_sorted = np.sort(held, axis=1)
    first_seen = np.ones(held_sorted.shape, dtype=bool)
    first_seen[:, 1:] = held_sorted[:, 1:] != held_sorted[:, :-1]
    n_relevant = ((held_sorted >= 0) & first_seen).sum(axis=1)
    keep = n_relevant > 0
    top, held, n_relevant = top[keep], held[keep], n_relevant[keep]
    if top.shape[0] == 0:
        raise ValueError("no user has a held-out item; metrics are undefined")
    ordered = np.sort(np.where(top >= 0, top, -1 - np.arange(max_k)), axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        raise ValueError("a ranked list repeats an item")
    hits = np.zeros(top.shape, dtype=bool)
    for j in range(held.shape[1]):
        col = held[:, j : j + 1]
        hits |= (top == col) & (col >= 0)
    curves = _curves_from_hits(hits, n_relevant)
    if catalogue_size is not None:
        curves["coverage"] = _coverage_curve(top, catalogue_size)
    return curves


def _curves_from_hits(hits: np.ndarray, n_relevant: np.ndarray) -> dict:
    n_users, max_k = hits.shape
    ks = np.arange(1, max_k + 1)
    n_hit = np.cumsum(hits, axis=1)  # hits within the first k positions, per k
    disc = _discounts(max_k)
    dcg = np.cumsum(hits * disc, axis=1)
    ideal = np.cumsum(disc)  # ideal[j] = IDCG when min(|T_u|, k) = j + 1
    idcg = ideal[np.minimum(n_relevant[:, None], ks[None, :]) - 1]
    return {
        "k": ks.tolist(),
        "n_users": int(n_users),
        "hr": (n_hit > 0).mean(axis=0).tolist(),
        "ndcg": (dcg / idcg).mean(axis=0).tolist(),
        "precision": (n_hit.mean(axis=0) / ks).tolist(),
        "recall": (n_hit / n_relevant[:, None]).mean(axis=0).tolist(),
    }


def _coverage_curve(top: np.ndarray, catalogue_size: int) -> list[float]:
    """``|∪_u top_k(u)| / |catalogue|`` for every k, from each item's first position."""
    if catalogue_size < 1:
        raise ValueError(f"catalogue_size must be >= 1, got {catalogue_size!r}")
    max_k = top.shape[1]
    cols = np.broadcast_to(np.arange(max_k), top.shape)
    valid = top >= 0
    items, positions = top[valid], cols[valid]
    first = np.full(int(items.max()) + 1 if items.size else 0, max_k, dtype=np.int64)
    np.minimum.at(first, items, positions)
    first = first[first < max_k]
    counts = np.cumsum(np.bincount(first, minlength=max_k))
    return (counts / catalogue_size).tolist()


def ranking_metrics_at_k(ranked, held_out, k: int, catalogue_size: int | None = None) -> dict:
    """``{"hr@k", "ndcg@k", "precision@k", "recall@k", ["coverage@k"], "n_users"}`` (SPEC §9.1).

    Arguments as :func:`ranking_metric_curves`.
    """
    curves = ranking_metric_curves(ranked, held_out, k, catalogue_size)
    return at_k(curves, k)


def at_k(curves: Mapping, k: int) -> dict:
    """Pick cut-off ``k`` out of a curves dict: ``{"hr@k": ..., ..., "n_users": n}``."""
    k = _check_k(k)
    if k > len(curves["k"]):
        raise ValueError(f"k={k} is beyond the curves' max_k={len(curves['k'])}")
    out = {f"{name}@{k}": float(curves[name][k - 1]) for name in METRICS if name in curves}
    out["n_users"] = int(curves["n_users"])
    return out


def hit_rate_at_k(ranked, held_out, k: int) -> float:
    """Share of users with at least one held-out item in their top k."""
    return ranking_metrics_at_k(ranked, held_out, k)[f"hr@{k}"]


def ndcg_at_k(ranked, held_out, k: int) -> float:
    """Mean DCG@k / IDCG@k with binary relevance."""
    return ranking_metrics_at_k(ranked, held_out, k)[f"ndcg@{k}"]


def precision_at_k(ranked, held_out, k: int) -> float:
    """Mean share of the top k that is held out (divides by k even for shorter lists)."""
    return ranking_metrics_at_k(ranked, held_out, k)[f"precision@{k}"]


def recall_at_k(ranked, held_out, k: int) -> float:
    """Mean share of each held-out set found in the top k."""
    return ranking_metrics_at_k(ranked, held_out, k)[f"recall@{k}"]


def coverage_at_k(ranked, held_out, k: int, catalogue_size: int) -> float:
    """Distinct items shown in the evaluated users' top k over the catalogue size."""
    return ranking_metrics_at_k(ranked, held_out, k, catalogue_size)[f"coverage@{k}"]


# --------------------------------------------------------------------------- score matrices


def _valid_mask(scores: np.ndarray, valid) -> np.ndarray:
    ok = np.isfinite(scores)
    return ok if valid is None else ok & valid


def _tiebreak_chunk(tiebreak, shape, rows) -> np.ndarray:
    if tiebreak is None:
        return np.broadcast_to(np.arange(shape[1]), shape)
    tb = np.asarray(tiebreak)
    return np.broadcast_to(tb if tb.ndim == 1 else tb[rows], shape)


def top_k(scores: np.ndarray, k: int, valid: np.ndarray | None = None, tiebreak=None) -> np.ndarray:
    """Column indices of each row's best ``k`` entries, -1 where a row has fewer.

    Order: score descending, then ``tiebreak`` ascending (default: column index,
    i.e. item order). Entries are candidates when their score is finite and
    ``valid`` (same shape, optional) is true. ``tiebreak`` is shape (n_items,) or
    the shape of ``scores``. Rows are sorted in chunks, O(n_items log n_items) each.
    """
    k = _check_k(k)
    scores = np.asarray(scores, dtype=np.float64)
    n, m = scores.shape
    out = np.full((n, k), -1, dtype=np.int64)
    width = min(k, m)
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, min(n, start + CHUNK_ROWS))
        s = scores[rows]
        ok = _valid_mask(s, None if valid is None else valid[rows])
        key = np.where(ok, -s, np.inf)
        order = np.lexsort((_tiebreak_chunk(tiebreak, s.shape, rows), key), axis=1)[:, :width]
        out[rows, :width] = np.where(np.take_along_axis(ok, order, axis=1), order, -1)
    return out


def target_ranks(scores: np.ndarray, targets: np.ndarray, valid: np.ndarray | None = None,
                 tiebreak=None) -> np.ndarray:
    """0-based rank of each row's single target column among its candidates.

    ``rank = #{candidates j: s_j > s_t, or s_j == s_t and tiebreak_j < tiebreak_t}``,
    which is the target's position in :func:`top_k` order without sorting. A target
    of -1, or one that is not a candidate itself, gets rank ``n_items`` (never a hit).
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    n, m = scores.shape
    ranks = np.full(n, m, dtype=np.int64)
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, min(n, start + CHUNK_ROWS))
        s = scores[rows]
        ok = _valid_mask(s, None if valid is None else valid[rows])
        tb = _tiebreak_chunk(tiebreak, s.shape, rows)
        t = targets[rows]
        idx = np.arange(s.shape[0])
        tcol = np.clip(t, 0, max(m - 1, 0))
        present = (t >= 0) & (t < m) & ok[idx, tcol]
        st, tbt = s[idx, tcol][:, None], tb[idx, tcol][:, None]
        better = ok & ((s > st) | ((s == st) & (tb < tbt)))
        ranks[rows] = np.where(present, better.sum(axis=1), m)
    return ranks


def rank_metric_curves(ranks: np.ndarray, max_k: int) -> dict:
    """Metric curves for one held-out item per user, from :func:`target_ranks` output.

    With ``|T_u| = 1``: HR = recall = 1[rank < k], precision = HR / k,
    NDCG = 1 / log2(rank + 2) when rank < k. Coverage needs :func:`top_k` lists.
    """
    max_k = _check_k(max_k)
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no user has a held-out item; metrics are undefined")
    hits = ranks[:, None] == np.arange(max_k)[None, :]
    return _curves_from_hits(hits, np.ones(ranks.size, dtype=np.int64))


# --------------------------------------------------------------------------- baselines


def _user_item_matrix(user_items, n_items: int | None):
    """A binary users x items CSR matrix from a sparse matrix or per-user index lists."""
    from scipy import sparse

    if sparse.issparse(user_items):
        x = sparse.csr_matrix(user_items, dtype=np.float64)
        x.data[:] = 1.0
        x.sum_duplicates()
        x.data[:] = 1.0
        return x
    if n_items is None:
        raise ValueError("n_items is required when user_items is a sequence of index lists")
    rows, cols = [], []
    for u, items in enumerate(user_items):
        items = np.unique(np.asarray(list(items), dtype=np.int64))
        if items.size and (items[0] < 0 or items[-1] >= n_items):
            raise ValueError(f"item index out of range [0, {n_items}) for user {u}")
        rows.append(np.full(items.size, u, dtype=np.int64))
        cols.append(items)
    n_users = len(rows)
    rows = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    cols = np.concatenate(cols) if cols else np.empty(0, dtype=np.int64)
    return sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_users, n_items))


def popularity_scores(train_items, n_items: int | None = None) -> np.ndarray:
    """Popularity baseline: score(i) = number of training users having item i (SPEC §9.1).

    ``train_items`` is a users x items sparse matrix or a sequence of per-user item
    index collections (then ``n_items`` is required). Returns float64 (n_items,).
    """
    x = _user_item_matrix(train_items, n_items)
    return np.asarray(x.sum(axis=0), dtype=np.float64).ravel()


def cooccurrence_scores(train_items, n_items: int | None = None, query_items=None) -> np.ndarray:
    """Co-occurrence baseline: score_u(i) = Σ_{j ∈ train_u} n_ij / √(n_i n_j) (SPEC §9.1).

    ``n_ij`` counts training users having both i and j (``n_ii = n_i``).
    ``query_items`` (default: ``train_items``) are the histories ``train_u`` to
    score; returns a dense float64 (n_query, n_items) matrix. Benchmarks only.
    """
    x = _user_item_matrix(train_items, n_items)
    q = x if query_items is None else _user_item_matrix(query_items, x.shape[1])
    co = (x.T @ x).tocsr()
    n_i = co.diagonal()
    inv = np.zeros_like(n_i)
    np.divide(1.0, np.sqrt(n_i), out=inv, where=n_i > 0)
    from scipy import sparse

    norm = sparse.diags(inv) @ co @ sparse.diags(inv)
    return np.asarray((q @ norm).todense(), dtype=np.float64)


# --------------------------------------------------------------------------- gate and sidecar


def passes_gate(model_metric: float, baseline_metric: float) -> bool:
    """SPEC §9.2: the model passes unless its metric is below the baseline's (NaN fails)."""
    if not math.isfinite(baseline_metric):
        raise ValueError(f"baseline metric must be finite, got {baseline_metric!r}")
    return math.isfinite(model_metric) and model_metric >= baseline_metric


def gate(model_metric: float, baseline_metric: float, metric: str = "metric", what: str = "model") -> None:
    """Raise :class:`GateRefused` when ``model_metric`` is below ``baseline_metric``."""
    if not passes_gate(model_metric, baseline_metric):
        raise GateRefused(metric, model_metric, baseline_metric, what=what)


def sidecar_evaluation(k: int, model: Mapping, baselines: Mapping[str, Mapping],
                       protocol: str = "leave-last-out") -> dict:
    """The ``evaluation`` block of a metrics sidecar (SPEC §9.3).

    ``model`` and each baseline are :func:`ranking_metrics_at_k`-style dicts
    (``"hr@k"`` ... plus ``"n_users"``); only the sidecar metrics are kept.
    """
    k = _check_k(k)

    def pick(m):
        return {f"{name}@{k}": float(m[f"{name}@{k}"]) for name in SIDECAR_METRICS if f"{name}@{k}" in m}

    return {
        "protocol": protocol,
        "k": k,
        "n_users": int(model["n_users"]),
        "model": pick(model),
        "baselines": {name: pick(m) for name, m in baselines.items()},
    }
