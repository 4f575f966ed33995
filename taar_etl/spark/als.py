"""Implicit-feedback ALS: training and serving-formula evaluation (holdout: taar_etl.spark.interactions).

The collaborative job (``jobs/taar_collaborative.py``, SPEC §8.9) and the
collaborative benchmark (``bench/jobs_collaborative.py``, SPEC §13 Q1) share this
core. It works on generic interactions: a DataFrame of dense integer ``user`` and
``item`` indices (items numbered in GUID order, so "ties by item index" is "ties
by GUID"), one implicit rating of 1.0 per pair.

* Training is Spark ML ``ALS(implicitPrefs=True)`` fed in a canonical order, so a
  run depends only on the interactions, the parameters and the seed (see
  :func:`fit_als` for what makes it bit-for-bit reproducible).
* Evaluation happens on the driver in numpy, with the formula the service uses
  (SPEC §5.2): a user's vector is the sum of the factors of its training items,
  every item is scored by its dot product with that vector, and the full ranking
  over the items not in the user's training set is cut at k (SPEC §9.1). Metrics
  and baselines come from :mod:`taar.evaluation`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from taar import evaluation

logger = logging.getLogger(__name__)

#: Rows ranked at once on the driver (bounds the dense score matrix in memory).
CHUNK_USERS = 4096
#: Grid keys accepted by :func:`parse_grid`, mapped to :class:`AlsParams` fields.
GRID_KEYS = {"rank": "rank", "reg": "reg_param", "alpha": "alpha"}


@dataclass(frozen=True, order=True)
class AlsParams:
    """One ALS configuration: factor rank, regularisation and implicit confidence scale."""

    rank: int
    reg_param: float
    alpha: float

    def as_dict(self) -> dict:
        return {"rank": self.rank, "reg_param": self.reg_param, "alpha": self.alpha}


#: SPEC §8.9 default grid: rank {16, 32, 48} x regParam {0.01, 0.1} x alpha {1, 10, 40}.
DEFAULT_GRID: tuple[AlsParams, ...] = tuple(
    AlsParams(r, reg, a) for r in (16, 32, 48) for reg in (0.01, 0.1) for a in (1.0, 10.0, 40.0)
)


def parse_grid(spec: str, rank: int, reg_param: float, alpha: float) -> tuple[AlsParams, ...]:
    """Turn ``--grid`` into configurations.

    ``default`` is :data:`DEFAULT_GRID`; ``none`` is the single configuration given by
    ``rank``/``reg_param``/``alpha``; anything else is an explicit grid
    ``rank=16,32;reg=0.01;alpha=1,10`` (keys missing from it take the single
    values). Raises ``ValueError`` naming the problem.
    """
    spec = (spec or "").strip()
    if spec == "default":
        return DEFAULT_GRID
    values = {"rank": [rank], "reg": [reg_param], "alpha": [alpha]}
    if spec != "none":
        seen = set()
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or key not in GRID_KEYS:
                raise ValueError(f"invalid grid part {part!r}: expected rank=..;reg=..;alpha=.. "
                                 f"(or 'default' / 'none')")
            if key in seen:
                raise ValueError(f"grid key {key!r} given twice")
            seen.add(key)
            try:
                parsed = [int(v) if key == "rank" else float(v) for v in raw.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"grid values of {key!r} are not numbers: {raw!r}") from None
            if not parsed:
                raise ValueError(f"grid key {key!r} has no values")
            values[key] = parsed
        if not seen:
            raise ValueError(f"empty grid {spec!r}: expected 'default', 'none' or rank=..;reg=..;alpha=..")
    grid = tuple(dict.fromkeys(
        AlsParams(int(r), float(g), float(a))
        for r, g, a in itertools.product(values["rank"], values["reg"], values["alpha"])
    ))
    for p in grid:
        if p.rank < 1 or p.reg_param < 0 or p.alpha < 0:
            raise ValueError(f"invalid ALS parameters {p.as_dict()}: rank >= 1, reg >= 0, alpha >= 0")
    return grid


# --------------------------------------------------------------------------- evaluation sets


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate, in ``users`` order.

    ``train`` is their binary users x items CSR matrix of training items;
    ``held_out`` their held-out items: one per user (1-D) or a -1-padded matrix.
    """

    users: np.ndarray
    train: sparse.csr_matrix
    held_out: np.ndarray

    def __len__(self) -> int:
        return int(self.users.size)


def eval_set_from_lists(users: Sequence[int], train_items: Sequence[Sequence[int]], held_out,
                        n_items: int) -> EvalSet:
    """Build an :class:`EvalSet` from per-user index lists (``held_out`` 1-D or lists)."""
    n = len(users)
    indptr = np.zeros(n + 1, dtype=np.int64)
    cols = []
    for i, items in enumerate(train_items):
        row = np.unique(np.asarray(items, dtype=np.int64))
        if row.size and (row[0] < 0 or row[-1] >= n_items):
            raise ValueError(f"training item index out of range [0, {n_items}) for user {users[i]}")
        cols.append(row)
        indptr[i + 1] = indptr[i] + row.size
    indices = np.concatenate(cols) if cols else np.empty(0, dtype=np.int64)
    train = sparse.csr_matrix((np.ones(indices.size), indices, indptr), shape=(n, n_items))
    if len(held_out) and not np.isscalar(held_out[0]):
        width = max(1, max(len(h) for h in held_out))
        held = np.full((n, width), -1, dtype=np.int64)
        for i, h in enumerate(held_out):
            held[i, : len(h)] = sorted(h)
    else:
        held = np.asarray(held_out, dtype=np.int64).reshape(n)
    return EvalSet(np.asarray(users, dtype=np.int64), train, held)


def collect_eval_sets(train, holdout, n_items: int) -> dict[str, EvalSet]:
    """Collect each holdout role's users with their training items onto the driver.

    ``train`` and ``holdout`` are the DataFrames of :func:`taar_etl.spark.interactions.leave_last_out`. Returns
    ``{role: EvalSet}`` for the roles present, users in ascending index order.
    """
    from pyspark.sql import functions as F

    rows = (
        holdout.join(train.select("user", F.col("item").alias("train_item")), "user")
        .groupBy("role", "user", "item")
        .agg(F.sort_array(F.collect_list("train_item")).alias("train_items"))
        .collect()
    )
    by_role: dict[str, list] = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append((r["user"], r["train_items"], r["item"]))
    sets = {}
    for role, members in sorted(by_role.items()):
        members.sort()
        users, items, targets = zip(*members, strict=True)
        sets[role] = eval_set_from_lists(users, items, list(targets), n_items)
    return sets


def item_counts(train, n_items: int) -> np.ndarray:
    """Number of training users per item index (the popularity baseline's scores)."""
    counts = np.zeros(n_items, dtype=np.float64)
    for r in train.groupBy("item").count().collect():
        counts[r["item"]] = r["count"]
    return counts


# --------------------------------------------------------------------------- Spark: training


@dataclass
class FittedAls:
    """A trained ALS model with its item factors on the driver.

    ``item_factors`` is (n_items, rank) float64 in item-index order; rows of items
    that had no training interaction are zero and ``known_items`` is false there.
    ``model`` is the Spark ``ALSModel`` (kept for archiving); :meth:`release`
    unpersists the factor RDDs Spark keeps cached for it.
    """

    params: AlsParams
    model: object
    item_factors: np.ndarray
    known_items: np.ndarray
    rdd_ids: tuple[int, ...] = ()

    def user_factors(self, n_users: int) -> np.ndarray:
        """(n_users, rank) float64 user factors (zero rows for users not trained on)."""
        return _factor_matrix(self.model.userFactors.collect(), n_users, self.params.rank)[0]

    def release(self) -> None:
        """Drop the cached factor RDDs of this model (it can still be saved; Spark recomputes)."""
        if not self.rdd_ids:
            return
        persistent = self.model.userFactors.sparkSession.sparkContext._jsc.getPersistentRDDs()
        for rdd_id in self.rdd_ids:
            rdd = persistent.get(rdd_id)
            if rdd is not None:
                rdd.unpersist(False)
        self.rdd_ids = ()


def _factor_matrix(rows, n: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((n, rank), dtype=np.float64)
    known = np.zeros(n, dtype=bool)
    for r in rows:
        out[r["id"]] = r["features"]
        known[r["id"]] = True
    return out, known


def _persistent_rdd_ids(sc) -> set[int]:
    return {int(i) for i in sc._jsc.getPersistentRDDs().keySet()}


def fit_als(ratings, params: AlsParams, *, n_items: int, max_iter: int, seed: int,
            checkpoint_interval: int = 5, num_blocks: int = 2) -> FittedAls:
    """Train implicit ALS on ``user, item, rating`` and collect the item factors.

    Reproducibility: the ratings are handed to Spark in one partition sorted by
    (user, item), so ALS builds the same blocks whatever the upstream partitioning,
    and with ``num_blocks`` <= 2 the Gram matrix that ALS sums over factor blocks
    (``YtY``, combined in task completion order) has at most two terms, whose sum
    does not depend on the order. Same ratings, parameters and seed then give
    bit-identical factors in local mode. More blocks parallelise better on a
    cluster but may differ in the last bits between runs.
    """
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    data = (
        ratings.select(F.col("user").cast("int"), F.col("item").cast("int"), F.col("rating").cast("float"))
        .orderBy("user", "item")
        .coalesce(1)
    )
    sc = ratings.sparkSession.sparkContext
    before = _persistent_rdd_ids(sc)
    estimator = ALS(
        rank=params.rank, regParam=params.reg_param, alpha=params.alpha, maxIter=max_iter,
        implicitPrefs=True, seed=seed, checkpointInterval=checkpoint_interval,
        numUserBlocks=num_blocks, numItemBlocks=num_blocks,
        userCol="user", itemCol="item", ratingCol="rating",
    )
    model = estimator.fit(data)
    factors, known = _factor_matrix(model.itemFactors.collect(), n_items, params.rank)
    if not np.isfinite(factors).all():
        raise ValueError(f"ALS produced non-finite item factors for {params.as_dict()}")
    new_ids = tuple(sorted(_persistent_rdd_ids(sc) - before))
    return FittedAls(params, model, factors, known, new_ids)


# --------------------------------------------------------------------------- driver: scoring


#: ``scorer(train_rows, rows) -> scores``: dense (len(rows), n_items) scores for a
#: slice of an :class:`EvalSet` (``train_rows`` is that slice of its CSR matrix).
Scorer = Callable[[sparse.csr_matrix, slice], np.ndarray]


def item_sum_scorer(item_factors: np.ndarray) -> Scorer:
    """The serving formula (SPEC §5.2): ``s = M · Σ_{j ∈ train_u} M[j]``."""
    def score(train_rows, rows):
        return np.asarray(train_rows @ item_factors) @ item_factors.T
    return score


def user_factor_scorer(user_factors: np.ndarray, item_factors: np.ndarray) -> Scorer:
    """Classic ALS scoring ``s = M · x_u`` with ``user_factors`` aligned to the EvalSet rows."""
    def score(train_rows, rows):
        return user_factors[rows] @ item_factors.T
    return score


def popularity_scorer(counts: np.ndarray) -> Scorer:
    """The popularity baseline: every user gets the training counts (SPEC §9.1)."""
    def score(train_rows, rows):
        return np.broadcast_to(counts, (train_rows.shape[0], counts.size))
    return score


def matrix_scorer(scores: np.ndarray) -> Scorer:
    """Precomputed scores, one row per EvalSet user (e.g. the co-occurrence baseline)."""
    def score(train_rows, rows):
        return scores[rows]
    return score


def rank_top_k(eval_set: EvalSet, scorer: Scorer, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """Each user's top ``k`` item indices (-1 padded) over ``candidates`` minus its training items.

    Order: score descending, then item index ascending (SPEC §9.1). ``candidates``
    (bool per item, default all) is the catalogue, e.g. the items the model knows.
    """
    n, n_items = eval_set.train.shape
    allowed = np.ones(n_items, dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool)
    out = np.full((n, k), -1, dtype=np.int64)
    for start in range(0, n, CHUNK_USERS):
        rows = slice(start, min(n, start + CHUNK_USERS))
        train_rows = eval_set.train[rows]
        valid = allowed[None, :] & (train_rows.toarray() == 0)
        out[rows] = evaluation.top_k(scorer(train_rows, rows), k, valid=valid)
    return out


def evaluate_curves(eval_set: EvalSet, scorer: Scorer, k: int, candidates: np.ndarray | None = None) -> dict:
    """Metric curves for cut-offs 1..k (:func:`taar.evaluation.ranking_metric_curves`) of a scorer.

    Coverage is relative to the candidate catalogue.
    """
    if len(eval_set) == 0:
        raise ValueError("cannot evaluate on an empty user set")
    ranked = rank_top_k(eval_set, scorer, k, candidates)
    n_catalogue = eval_set.train.shape[1] if candidates is None else int(np.count_nonzero(candidates))
    return evaluation.ranking_metric_curves(ranked, eval_set.held_out, k, catalogue_size=max(n_catalogue, 1))


def evaluate(eval_set: EvalSet, scorer: Scorer, k: int, candidates: np.ndarray | None = None) -> dict:
    """``{"hr@k", "ndcg@k", "precision@k", "recall@k", "coverage@k", "n_users"}`` of a scorer."""
    return evaluation.at_k(evaluate_curves(eval_set, scorer, k, candidates), k)


# --------------------------------------------------------------------------- model selection


def selection_key(metrics: dict, params: AlsParams, k: int) -> tuple:
    """Best validation NDCG@k, then HR@k, then the smaller rank (SPEC §8.9 step 4)."""
    return (-metrics[f"ndcg@{k}"], -metrics[f"hr@{k}"], params.rank)


def grid_search(train, grid: Sequence[AlsParams], validation: EvalSet | None, *, n_items: int, k: int,
                fit: Callable[..., FittedAls] = fit_als, **fit_options) -> tuple[FittedAls, list[dict]]:
    """Fit every configuration and keep the best on ``validation`` (serving formula).

    Returns ``(best, results)`` with ``results[i] = {"params": ..., "validation": metrics}``
    in grid order. A single configuration needs no validation set (its metrics
    are then ``None``). Models that lose are released as soon as they lose.
    """
    if not grid:
        raise ValueError("the ALS grid is empty")
    if len(grid) > 1 and (validation is None or len(validation) == 0):
        raise ValueError("selecting among several ALS configurations needs validation users")
    best, best_key, results = None, None, []
    for params in grid:
        fitted = fit(train, params, n_items=n_items, **fit_options)
        metrics = None
        if validation is not None and len(validation):
            metrics = evaluate(validation, item_sum_scorer(fitted.item_factors), k, fitted.known_items)
        results.append({"params": params.as_dict(), "validation": metrics})
        logger.info("ALS %s: validation %s", params.as_dict(), metrics)
        key = selection_key(metrics, params, k) if metrics else (0.0, 0.0, params.rank)
        if best is None or key < best_key:
            if best is not None:
                best.release()
            best, best_key = fitted, key
        else:
            fitted.release()
    return best, results

