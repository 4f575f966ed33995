"""Leave-last-out evaluation core of the ensemble job (SPEC §8.10 steps 2-7).

The Spark driver (``jobs/taar_ensemble.py``) selects clients; this module does
the rest, in two halves:

* Executor side, :func:`score_partition`: each client row becomes a profile
  (SPEC §3.5 transform, §3.4 normalisation) whose newest eligible curated add-on
  (by ``install_day``, ties GUID) is held out, and every recommender that can
  recommend is asked for ``candidates + len(installed)`` results. A partition
  yields one compact block of numpy arrays (GUIDs coded by a shared vocabulary
  sorted ascending, so a code is also the GUID tie-break rank).
* Driver side: blocks are merged in a fixed client order (:func:`merge_blocks`),
  packed into per-client candidate matrices (:func:`candidate_matrices`), scaled
  by ``σ_r`` (:func:`scales`), and the non-negative weights are searched on the
  simplex (:func:`search_weights`): a grid in steps of 0.05 (1771 points for the
  four members), then pairwise refinement.
  Weights are integers in units of 1/160 (0.05 = 8 units, refinement steps 4, 2,
  1 = 0.025, 0.0125, 0.00625), so comparisons and ties are exact.

Nothing here imports pyspark: the executor function receives plain rows.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from taar.eligibility import is_eligible
from taar.evaluation import rank_metric_curves, ranking_metric_curves, target_ranks, top_k
from taar.profile import normalise_profile, row_to_payload
from taar.recommenders import ENSEMBLE_MEMBERS

logger = logging.getLogger(__name__)

UNITS = 160  # one weight unit = 1/160 = 0.00625
GRID_STEP = 8  # 0.05 -> 231 grid points for 3 members, 1771 for 4
REFINE_STEPS = (4, 2, 1)  # 0.025, 0.0125, 0.00625
NDCG_DECIMALS = 12  # NDCG values equal to this precision count as tied


# --------------------------------------------------------------------------- executor side


def pick_target(addons, whitelist) -> str | None:
    """Newest eligible curated add-on by ``install_day`` (null = oldest), ties GUID ascending."""
    best_key, best = None, None
    for a in addons or ():
        a = a.asDict() if hasattr(a, "asDict") else a
        if not is_eligible(a, whitelist=whitelist):
            continue
        day = a.get("install_day")
        key = (math.inf if day is None else -day, a["addon_id"])  # smallest key wins
        if best_key is None or key < best_key:
            best_key, best = key, a["addon_id"]
    return best


def client_example(row: Mapping, whitelist) -> tuple[dict, str, list[str]] | None:
    """``(profile without the target, target, eligible curated history without the target)``."""
    payload = row_to_payload(row)
    target = pick_target(payload["active_addons"], whitelist)
    if target is None:
        return None
    profile = normalise_profile(payload, client_id=payload["client_id"])
    profile["installed_addons"] = [g for g in profile["installed_addons"] if g != target]
    history = [a["addon_id"] for a in payload["active_addons"]
               if a["addon_id"] != target and is_eligible(a, whitelist=whitelist)]
    return profile, target, list(dict.fromkeys(history))


def score_partition(rows: Iterable, engine, vocab: Mapping[str, int], whitelist, candidates: int):
    """Executor function: score one partition of client rows, yield one block (dict of arrays).

    Each row carries the source columns of ``row_to_payload`` plus ``sort_key``
    (int) and ``is_validation`` (bool). GUIDs outside ``vocab`` are dropped
    (counted in ``unknown_guids``).
    """
    sort_key, client, validation, target = [], [], [], []
    csr = {name: ([0], [], []) for name in ("installed", "history", *ENSEMBLE_MEMBERS)}
    can = {name: [] for name in ENSEMBLE_MEMBERS}
    unknown = 0
    for row in rows:
        row = row.asDict(recursive=True) if hasattr(row, "asDict") else row
        example = client_example(row, whitelist)
        if example is None or example[1] not in vocab:
            continue
        profile, held_out, history = example
        installed = profile["installed_addons"]
        sort_key.append(int(row["sort_key"]))
        client.append(profile["client_id"])
        validation.append(bool(row["is_validation"]))
        target.append(vocab[held_out])
        for name, guids in (("installed", installed), ("history", history)):
            ptr, idx, _ = csr[name]
            idx.extend(vocab[g] for g in guids if g in vocab)
            ptr.append(len(idx))
        skip = set(installed)
        for name in ENSEMBLE_MEMBERS:
            rec = getattr(engine, name)
            ok = bool(rec.can_recommend(profile, None))
            recs = rec.recommend(profile, candidates + len(installed), None) if ok else []
            ptr, idx, score = csr[name]
            for guid, s in recs:
                if guid in skip:
                    continue
                code = vocab.get(guid)
                if code is None:
                    unknown += 1
                    continue
                idx.append(code)
                score.append(s)
            ptr.append(len(idx))
            can[name].append(ok)
    block = {"sort_key": np.array(sort_key, dtype=np.int64), "client_id": client,
             "is_validation": np.array(validation, dtype=bool), "target": np.array(target, dtype=np.int64),
             "unknown_guids": unknown}
    for name, (ptr, idx, score) in csr.items():
        block[f"{name}_ptr"] = np.array(ptr, dtype=np.int64)
        block[f"{name}_idx"] = np.array(idx, dtype=np.int64)
        if name in ENSEMBLE_MEMBERS:
            block[f"{name}_score"] = np.array(score, dtype=np.float64)
            block[f"{name}_can"] = np.array(can[name], dtype=bool)
    yield block


def score_partition_shared(rows: Iterable, shared, candidates: int):
    """:func:`score_partition` with ``(engine, vocab, whitelist)`` taken from a Spark broadcast."""
    engine, vocab, whitelist = shared.value
    yield from score_partition(rows, engine, vocab, whitelist, candidates)


# --------------------------------------------------------------------------- driver: data


@dataclass
class Lists:
    """Per-client variable-length lists in CSR form (row i = ``idx[ptr[i]:ptr[i+1]]``)."""

    ptr: np.ndarray
    idx: np.ndarray
    score: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> Lists:
        """The lists of ``rows``, in that order."""
        starts = self.ptr[rows]
        lengths = self.ptr[rows + 1] - starts
        ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        pos = np.repeat(starts - ptr[:-1], lengths) + np.arange(ptr[-1], dtype=np.int64)
        return Lists(ptr, self.idx[pos], None if self.score is None else self.score[pos])

    def row_of_entries(self) -> np.ndarray:
        return np.repeat(np.arange(self.ptr.size - 1), np.diff(self.ptr))


@dataclass
class EvalData:
    """Every evaluated client, in (sort_key, hashed id) order."""

    client_id: list
    is_validation: np.ndarray
    target: np.ndarray
    installed: Lists
    history: Lists
    recs: dict  # name -> Lists with scores
    can: dict  # name -> bool array
    unknown_guids: int

    @property
    def n(self) -> int:
        return self.target.size

    def subset(self, rows: np.ndarray) -> EvalData:
        return EvalData([self.client_id[i] for i in rows], self.is_validation[rows], self.target[rows],
                        self.installed.take(rows), self.history.take(rows),
                        {k: v.take(rows) for k, v in self.recs.items()},
                        {k: v[rows] for k, v in self.can.items()}, self.unknown_guids)


def _cat(parts, dtype):
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)


def _concat_lists(blocks, name, with_score):
    ptrs, idxs, scores, offset = [np.zeros(1, dtype=np.int64)], [], [], 0
    for b in blocks:
        ptrs.append(b[f"{name}_ptr"][1:] + offset)
        offset += b[f"{name}_idx"].size
        idxs.append(b[f"{name}_idx"])
        if with_score:
            scores.append(b[f"{name}_score"])
    return Lists(np.concatenate(ptrs), _cat(idxs, np.int64), _cat(scores, np.float64) if with_score else None)


def merge_blocks(blocks: Sequence[Mapping]) -> EvalData:
    """Concatenate executor blocks and order clients by (sort_key, hashed id): partition-independent."""
    blocks = [b for b in blocks if b["target"].size]
    clients = [c for b in blocks for c in b["client_id"]]
    sort_key = _cat([b["sort_key"] for b in blocks], np.int64)
    data = EvalData(
        clients,
        _cat([b["is_validation"] for b in blocks], bool),
        _cat([b["target"] for b in blocks], np.int64),
        _concat_lists(blocks, "installed", False),
        _concat_lists(blocks, "history", False),
        {name: _concat_lists(blocks, name, True) for name in ENSEMBLE_MEMBERS},
        {name: _cat([b[f"{name}_can"] for b in blocks], bool) for name in ENSEMBLE_MEMBERS},
        sum(int(b["unknown_guids"]) for b in blocks),
    )
    order = np.array(sorted(range(len(clients)), key=lambda i: (int(sort_key[i]), clients[i])), dtype=np.int64)
    return data.subset(order)


@dataclass
class Candidates:
    """Per-client candidate matrices: column j of row i is GUID code ``guid[i, j]`` (-1 = padding).

    Columns are in GUID order within a row, so the column index is the tie-break.
    ``scores[r]`` holds recommender r's raw score (0 where r did not list the GUID),
    ``present[r]`` whether it did; ``target_col`` is -1 when no recommender listed
    the held-out GUID, whose code is ``target``; ``top1[r]`` is r's best score per
    client (NaN for an empty list).
    """

    guid: np.ndarray
    valid: np.ndarray
    scores: np.ndarray
    present: np.ndarray
    target_col: np.ndarray
    target: np.ndarray
    top1: np.ndarray


def candidate_matrices(data: EvalData, n_vocab: int) -> Candidates:
    """Pack the union of every recommender's list per client into padded matrices."""
    n = data.n
    members = [data.recs[name] for name in ENSEMBLE_MEMBERS]
    keys = np.concatenate([lst.row_of_entries() * n_vocab + lst.idx for lst in members])
    unique, inverse = np.unique(keys, return_inverse=True)
    row_of = unique // n_vocab
    starts = np.searchsorted(row_of, np.arange(n))
    col = np.arange(unique.size) - starts[row_of]
    width = int(col.max()) + 1 if col.size else 1
    guid = np.full((n, width), -1, dtype=np.int64)
    guid[row_of, col] = unique % n_vocab
    scores = np.zeros((len(members), n, width), dtype=np.float64)
    present = np.zeros((len(members), n, width), dtype=bool)
    top1 = np.full((len(members), n), np.nan)
    offset = 0
    for r, lst in enumerate(members):
        pos = inverse[offset: offset + lst.idx.size]
        offset += lst.idx.size
        scores[r, row_of[pos], col[pos]] = lst.score
        present[r, row_of[pos], col[pos]] = True
        non_empty = np.diff(lst.ptr) > 0
        top1[r, non_empty] = lst.score[lst.ptr[:-1][non_empty]]
    target_key = np.arange(n) * n_vocab + data.target
    target_col = np.full(n, -1, dtype=np.int64)
    if unique.size:
        at = np.minimum(np.searchsorted(unique, target_key), unique.size - 1)
        target_col = np.where(unique[at] == target_key, col[at], -1)
    return Candidates(guid, guid >= 0, scores, present, target_col, data.target.copy(), top1)


def scales(top1: np.ndarray) -> np.ndarray:
    """σ_r = median over clients of |top-1 score of r|; 1 when undefined or 0 (SPEC §8.10 step 5)."""
    out = np.ones(top1.shape[0])
    for r in range(top1.shape[0]):
        values = np.abs(top1[r][np.isfinite(top1[r])])
        if values.size:
            med = float(np.median(values))
            if math.isfinite(med) and med > 0:
                out[r] = med
    return out


# --------------------------------------------------------------------------- driver: weight search


@dataclass(frozen=True)
class SearchResult:
    """Best simplex weights (in units of 1/UNITS), their training HR/NDCG, and the search size."""

    units: tuple[int, ...]
    hr: float
    ndcg: float
    evaluations: int

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(u / UNITS for u in self.units)


def simplex_grid(n: int = len(ENSEMBLE_MEMBERS), step: int = GRID_STEP, total: int = UNITS) -> list[tuple[int, ...]]:
    """Every non-negative ``n``-vector of multiples of ``step`` summing to ``total``, ascending."""
    levels = range(0, total + 1, step)
    return [w for w in itertools.product(levels, repeat=n) if sum(w) == total]


class RankObjective:
    """Training HR@k and NDCG@k of ``Σ_r w_r ŝ_r`` over candidate matrices (sort-free)."""

    def __init__(self, cands: Candidates, sigma: np.ndarray, k: int):
        self.normalised = cands.scores / sigma[:, None, None]
        self.cands = cands
        self.k = k
        self.cache: dict[tuple[int, ...], tuple[int, float]] = {}

    def ranks(self, weights) -> np.ndarray:
        combined = np.tensordot(np.asarray(weights, dtype=np.float64), self.normalised, axes=1)
        return target_ranks(combined, self.cands.target_col, self.cands.valid)

    def __call__(self, units: tuple[int, ...]) -> tuple[int, float]:
        """``(number of hits, NDCG sum rounded)``: exact, comparable keys."""
        if units not in self.cache:
            ranks = self.ranks(units)
            hit = ranks < self.k
            ndcg = float(np.sum(1.0 / np.log2(ranks[hit] + 2.0)))
            self.cache[units] = (int(hit.sum()), round(ndcg, NDCG_DECIMALS))
        return self.cache[units]


def search_weights(objective: Callable[[tuple[int, ...]], tuple[int, float]], n_users: int,
                   n: int = len(ENSEMBLE_MEMBERS)) -> SearchResult:
    """Grid then pairwise refinement (SPEC §8.10 step 6); maximise (HR, NDCG), then smallest vector.

    The grid is visited in ascending lexicographic order and a point replaces the
    best only when strictly better, which keeps the smallest vector among ties.
    Refinement moves ``step`` units from one weight to another, takes the best
    of those moves (same ordering) while it strictly improves (HR, NDCG), then
    halves the step.
    """
    best, best_score = None, None
    for w in simplex_grid(n):
        score = objective(w)
        if best_score is None or score > best_score:
            best, best_score = w, score
    for step in REFINE_STEPS:
        while True:
            move, move_score = None, None
            for a, b in itertools.permutations(range(n), 2):
                if best[b] < step:
                    continue
                w = list(best)
                w[a] += step
                w[b] -= step
                w = tuple(w)
                score = objective(w)
                if move_score is None or score > move_score or (score == move_score and w < move):
                    move, move_score = w, score
            if move is None or not move_score > best_score:
                break
            best, best_score = move, move_score
    evaluations = len(getattr(objective, "cache", ())) or 0
    hits, ndcg_sum = best_score
    return SearchResult(best, hits / n_users, ndcg_sum / n_users, evaluations)


def published_weights(units: Sequence[float], sigma: np.ndarray) -> dict[str, float]:
    """``W_r = (w_r / σ_r) / max_r (w_r / σ_r)`` keyed by recommender name."""
    raw = np.asarray(units, dtype=np.float64) / sigma
    top = raw.max()
    if not top > 0:
        raise ValueError(f"weights must not all be zero: {list(units)}")
    return {name: float(v / top) for name, v in zip(ENSEMBLE_MEMBERS, raw, strict=True)}


# --------------------------------------------------------------------------- driver: metrics


def combined_curves(cands: Candidates, weights: Sequence[float], max_k: int, n_vocab: int,
                    only: int | None = None) -> dict:
    """Metric curves of ``Σ_r weights_r · scores_r`` (raw scores) on these clients.

    ``only=r`` evaluates recommender r alone over its own list (other GUIDs are no candidates).
    """
    combined = np.tensordot(np.asarray(weights, dtype=np.float64), cands.scores, axes=1)
    valid = cands.valid if only is None else cands.present[only]
    cols = top_k(combined, max_k, valid)
    items = np.where(cols >= 0, np.take_along_axis(cands.guid, np.maximum(cols, 0), axis=1), -1)
    return ranking_metric_curves(items, cands.target, max_k, catalogue_size=n_vocab)


def popularity_curves(train: EvalData, test: EvalData, catalogue: np.ndarray, max_k: int, n_vocab: int) -> dict:
    """Popularity baseline: rank the catalogue minus installed by training-client counts (ties GUID)."""
    counts = np.bincount(train.history.idx, minlength=n_vocab).astype(np.float64)
    order = np.lexsort((np.arange(n_vocab), -counts))
    order = order[catalogue[order]]  # catalogue GUIDs, best first
    installed = np.zeros((test.n, n_vocab), dtype=bool)
    installed[test.installed.row_of_entries(), test.installed.idx] = True
    width = min(order.size, max_k + int(np.diff(test.installed.ptr).max(initial=0)))
    head = np.broadcast_to(order[:width], (test.n, width))
    keep = ~np.take_along_axis(installed, head, axis=1)
    rank_in_row = np.cumsum(keep, axis=1) - 1
    items = np.full((test.n, max_k), -1, dtype=np.int64)
    rows, cols = np.nonzero(keep & (rank_in_row < max_k))
    items[rows, rank_in_row[rows, cols]] = head[rows, cols]
    return ranking_metric_curves(items, test.target, max_k, catalogue_size=n_vocab)


def training_curves(objective: RankObjective, units: Sequence[int], max_k: int) -> dict:
    """HR/NDCG curves of the searched weights on the training clients (no coverage)."""
    return rank_metric_curves(objective.ranks(units), max_k)
