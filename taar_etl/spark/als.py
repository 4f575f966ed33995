"""Implicit-feedback ALS: training and serving-formula evaluation (holdout: taar_etl.spark.interactions).

The collaborative job (``jobs/taar_collaborative.py``, SPEC §8.9) and the
collaborative benchmark (``bench/jobs_collaborative.py``, SPEC §13 Q1) share this
core. It works on generic interactions: a DataFrame of dense integer ``user`` and
``item`` indices (items numbered in GUID order, so "ties by item index" is "ties
by GUID"), one implicit rating of 1.0 per pair.

* Training is a block ALS on Spark for implicit feedback (the objective and
  regularisation of Spark ML's ``ALS(implicitPrefs=True)``): users grouped by item
  set, ``num_blocks`` tasks per sweep, every sum in block order, so a run depends
  only on the interactions, the parameters, the seed and ``num_blocks`` (see
  :func:`fit_als`), never on the input partitioning or task timing.
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
#
# Block ALS for implicit feedback (Hu, Koren & Volinsky 2008), with the regularisation
# Spark ML uses (lambda times the number of a row's interactions), written for the
# TAAR shape: few items (hundreds to a few thousand), many users with a handful of
# items each. Two facts make it parallel and deterministic at once:
#
# * A user's factor depends only on its set of items and the item factors, so users
#   with the same item set share one solve. Training data is the distinct item sets
#   with their user counts (integer counts: exact in any order), hashed into
#   ``num_blocks`` blocks by the set itself. Inside a block the sets are sorted.
# * The item factors are small: after each sweep they are collected on the driver and
#   broadcast. The user-side sums each item needs are partial sums per block, reduced
#   per item slice on executors in block order, never in task completion order.
#
# So one sweep is one Spark job with ``num_blocks`` tasks on the set side and
# ``min(num_blocks, n_items)`` on the item side, and its floating-point result depends
# on the data, the parameters, the seed and ``num_blocks`` only: not on the input
# partitioning, the executor count or which task finishes first.


@dataclass(frozen=True)
class SetBlock:
    """One block of distinct item sets (CSR): set ``s`` has items ``items[ptr[s]:ptr[s+1]]`` and
    ``weight[s]`` users."""

    ptr: np.ndarray
    items: np.ndarray
    weight: np.ndarray

    @property
    def n_sets(self) -> int:
        return int(self.weight.size)


def set_block(rows) -> SetBlock:
    """A :class:`SetBlock` from ``(items, count)`` rows (item lists sorted), in a canonical order."""
    keyed = sorted((tuple(int(i) for i in items), int(n)) for items, n in rows)
    sizes = np.fromiter((len(k) for k, _ in keyed), dtype=np.int64, count=len(keyed))
    ptr = np.zeros(len(keyed) + 1, dtype=np.int64)
    np.cumsum(sizes, out=ptr[1:])
    items = np.fromiter((i for k, _ in keyed for i in k), dtype=np.int64, count=int(ptr[-1]))
    weight = np.fromiter((n for _, n in keyed), dtype=np.float64, count=len(keyed))
    return SetBlock(ptr, items, weight)


#: Sets per batched solve: bounds the (sets, rank, rank) normal equations held at once.
CHUNK_SETS = 1024


def solve_sets(block: SetBlock, item_factors: np.ndarray, gram: np.ndarray, params: AlsParams) -> np.ndarray:
    """The factor of every set of ``block`` given the item factors (batched by set size).

    For a set ``S`` of ``n`` items with confidence ``c = 1 + alpha`` and preference 1:
    ``(YᵀY + alpha·Σ_{i∈S} y_i y_iᵀ + reg·n·I) x = c·Σ_{i∈S} y_i``, where ``gram = YᵀY``.
    Sets of one size are stacked into ``(sets, n, rank)`` and solved together; each
    set's arithmetic is the same whichever sets share its batch.
    """
    rank = item_factors.shape[1]
    out = np.zeros((block.n_sets, rank), dtype=np.float64)
    sizes = np.diff(block.ptr)
    eye = np.eye(rank)
    for size in np.unique(sizes):
        members = np.flatnonzero(sizes == size)
        for first in range(0, members.size, CHUNK_SETS):
            chunk = members[first:first + CHUNK_SETS]
            y = item_factors[block.items[block.ptr[chunk][:, None] + np.arange(size)]]  # (sets, size, rank)
            a = gram + params.alpha * (y.transpose(0, 2, 1) @ y) + (params.reg_param * float(size)) * eye
            b = (1.0 + params.alpha) * y.sum(axis=1)
            out[chunk] = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    return out


@dataclass(frozen=True)
class ItemPartial:
    """One block's contribution to the item solve of one item slice (items ``lo..hi-1``)."""

    block: int
    gram: np.ndarray  # Σ w x xᵀ over every set of the block (all items need it)
    outer: np.ndarray  # (hi - lo, rank, rank): Σ over sets containing the item of w x xᵀ
    linear: np.ndarray  # (hi - lo, rank): Σ w x
    count: np.ndarray  # (hi - lo,): Σ w


def item_slices(n_items: int, n_slices: int) -> list[tuple[int, int]]:
    """``n_slices`` contiguous item ranges covering ``[0, n_items)`` (sizes differ by at most one)."""
    bounds = np.linspace(0, n_items, n_slices + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def item_partials(block_id: int, block: SetBlock, set_factors: np.ndarray, slices) -> list:
    """``[(slice index, ItemPartial)]`` of one block, one entry per item slice."""
    n_items = slices[-1][1]
    rank = set_factors.shape[1]
    weighted = set_factors * block.weight[:, None]
    gram = weighted.T @ set_factors
    owner = np.repeat(np.arange(block.n_sets), np.diff(block.ptr))
    order = np.argsort(block.items, kind="stable")
    items_sorted = block.items[order]
    bounds = np.searchsorted(items_sorted, np.arange(n_items + 1))
    out = []
    for index, (lo, hi) in enumerate(slices):
        outer = np.zeros((hi - lo, rank, rank))
        linear = np.zeros((hi - lo, rank))
        count = np.zeros(hi - lo)
        for item in range(lo, hi):
            sets = owner[order[bounds[item]:bounds[item + 1]]]
            if sets.size:
                x, w = set_factors[sets], block.weight[sets]
                outer[item - lo] = (x * w[:, None]).T @ x
                linear[item - lo] = w @ x
                count[item - lo] = w.sum()
        out.append((index, ItemPartial(block_id, gram, outer, linear, count)))
    return out


def solve_item_slice(partials, params: AlsParams) -> tuple[np.ndarray, np.ndarray]:
    """Sum one slice's partials in block order and solve its items; ``(factors, known)``.

    ``(XᵀX + alpha·Σ_u x_u x_uᵀ + reg·n·I) y = (1 + alpha)·Σ_u x_u`` over the ``n``
    users of the item; items without users get a zero row and ``known = False``.
    """
    partials = sorted(partials, key=lambda p: p.block)
    gram, outer, linear, count = (partials[0].gram.copy(), partials[0].outer.copy(),
                                  partials[0].linear.copy(), partials[0].count.copy())
    for p in partials[1:]:
        gram += p.gram
        outer += p.outer
        linear += p.linear
        count += p.count
    known = count > 0
    factors = np.zeros(linear.shape)
    if known.any():
        rank = gram.shape[0]
        a = gram + params.alpha * outer[known] + (params.reg_param * count[known])[:, None, None] * np.eye(rank)
        factors[known] = np.linalg.solve(a, ((1.0 + params.alpha) * linear[known])[:, :, None])[:, :, 0]
    return factors, known


def initial_item_factors(n_items: int, rank: int, seed: int) -> np.ndarray:
    """Seeded unit-length rows of absolute Gaussians (the starting point of the first sweep).

    Non-negative because every preference is positive: from signed random rows the first
    sweeps can settle items of one co-installed group in opposite directions (on a planted
    two-group set, 23 of 40 seeds recovered both groups in 6 sweeps; 38 of 40 from here).
    """
    y = np.abs(np.random.Generator(np.random.PCG64(seed)).standard_normal((n_items, rank)))
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def item_sets(ratings):
    """DataFrame ``items array<int>, users long``: each distinct training item set and its user count."""
    from pyspark.sql import functions as F

    per_user = ratings.groupBy("user").agg(F.array_sort(F.collect_set(F.col("item").cast("int"))).alias("items"))
    return per_user.groupBy("items").agg(F.count(F.lit(1)).alias("users"))


def set_blocks(ratings, num_blocks: int):
    """The cached RDD ``(block id, SetBlock)`` of :func:`item_sets`, one block per partition.

    A set's block is the partition Spark's hash repartitioning by the set gives it
    (``pmod(murmur3(items), num_blocks)``): it depends on the set only. A
    repartition to an explicit count is never coalesced by adaptive execution, so
    there are always ``num_blocks`` blocks.
    """
    sets = item_sets(ratings).repartition(num_blocks, "items")
    blocks = sets.rdd.mapPartitionsWithIndex(lambda index, rows: [(index, set_block((r[0], r[1]) for r in rows))])
    return blocks.persist()


class SetAlsModel:
    """The trained model: final item factors plus the cached set blocks they were trained on.

    ``ratings`` is kept to derive per-user factors on request (:meth:`user_factors`,
    :meth:`save`); the blocks stay cached until :meth:`release`.
    """

    def __init__(self, ratings, blocks, params: AlsParams, item_factors: np.ndarray, num_blocks: int):
        self.ratings, self.blocks, self.params, self.item_factors = ratings, blocks, params, item_factors
        self.num_blocks = num_blocks

    def user_factor_rows(self):
        """RDD ``(user, factor list)``: each training user's factor given the final item factors."""
        from pyspark.sql import functions as F

        sc = self.ratings.sparkSession.sparkContext
        y = sc.broadcast(self.item_factors)
        params = self.params
        # an explicit partition count: adaptive execution would fold a small per-user table into one task
        per_user = (self.ratings.groupBy("user").agg(F.array_sort(F.collect_set(F.col("item").cast("int"))))
                    .repartition(self.num_blocks, "user"))

        def solve(rows):
            rows = list(rows)
            if not rows:
                return []
            factors = y.value
            block = SetBlock(np.concatenate([[0], np.cumsum([len(r[1]) for r in rows])]),
                             np.fromiter((i for r in rows for i in r[1]), dtype=np.int64),
                             np.ones(len(rows)))
            x = solve_sets(block, factors, factors.T @ factors, params)
            return [(int(r[0]), [float(v) for v in x[k].astype(np.float32)]) for k, r in enumerate(rows)]

        return per_user.rdd.mapPartitions(solve)

    def save(self, path: str) -> None:
        """Write a Spark ML ``ALSModel`` (loadable with ``ALSModel.load``) to ``path``."""
        spark = self.ratings.sparkSession
        schema = "id int, features array<float>"
        users = spark.createDataFrame(self.user_factor_rows(), schema)
        items = spark.createDataFrame(
            [(j, [float(v) for v in row]) for j, row in enumerate(self.item_factors.astype(np.float32))
             if row.any()], schema)
        jvm = spark.sparkContext._jvm
        model = jvm.org.apache.spark.ml.recommendation.ALSModel(
            f"ALSModel_taar_{self.params.rank}", self.params.rank, users._jdf, items._jdf)
        model.set(model.userCol(), "user").set(model.itemCol(), "item")
        model.write().overwrite().save(path)

    def release(self) -> None:
        self.blocks.unpersist(False)


@dataclass
class FittedAls:
    """A trained ALS model with its item factors on the driver.

    ``item_factors`` is (n_items, rank) float64 in item-index order, holding float32
    values (what the artifact publishes); rows of items that had no training
    interaction are zero and ``known_items`` is false there. ``model`` is the
    :class:`SetAlsModel` (archiving, user factors); :meth:`release` drops its cache.
    """

    params: AlsParams
    model: object
    item_factors: np.ndarray
    known_items: np.ndarray
    rdd_ids: tuple[int, ...] = ()

    def user_factors(self, n_users: int) -> np.ndarray:
        """(n_users, rank) float64 user factors (zero rows for users not trained on)."""
        out = np.zeros((n_users, self.params.rank))
        for user, features in self.model.user_factor_rows().collect():
            out[user] = features
        return out

    def release(self) -> None:
        """Drop the cached training blocks of this model (it can still be saved; Spark recomputes)."""
        if self.model is not None and self.rdd_ids:
            self.model.release()
        self.rdd_ids = ()


def fit_als(ratings, params: AlsParams, *, n_items: int, max_iter: int, seed: int, num_blocks: int = 2) -> FittedAls:
    """Train implicit ALS on ``user, item`` pairs and collect the item factors.

    Every (user, item) pair counts once, with preference 1 and confidence
    ``1 + alpha`` (the ``rating`` column, always 1.0 here, is not read). Each of the
    ``max_iter`` sweeps solves the item sets from the item factors, then the items
    from the set factors. ``num_blocks`` is the parallelism of both halves (set
    blocks; item slices up to ``n_items``). Same ratings, parameters, seed and
    ``num_blocks`` give bit-identical factors whatever the input partitioning and
    task timing; a different ``num_blocks`` changes only the order of the per-item
    sums (last-bit differences).
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    sc = ratings.sparkSession.sparkContext
    blocks = set_blocks(ratings, num_blocks)
    slices = item_slices(n_items, max(1, min(num_blocks, n_items)))
    factors = initial_item_factors(n_items, params.rank, seed)
    present = np.zeros(n_items, dtype=bool)
    for block_items in blocks.map(lambda kv: np.unique(kv[1].items)).collect():
        present[block_items] = True
    factors[~present] = 0.0
    known = present
    for _ in range(max_iter):
        y = sc.broadcast(factors)

        def partials(kv, y=y, params=params):
            block_id, block = kv
            item_factors = y.value
            x = solve_sets(block, item_factors, item_factors.T @ item_factors, params)
            return item_partials(block_id, block, x, slices)

        solved = (blocks.flatMap(partials)
                  .groupByKey(len(slices), lambda index: index)
                  .mapValues(lambda ps, params=params: solve_item_slice(list(ps), params))
                  .collect())
        y.unpersist()
        factors = np.zeros((n_items, params.rank))
        known = np.zeros(n_items, dtype=bool)
        for index, (slice_factors, slice_known) in solved:
            lo, hi = slices[index]
            factors[lo:hi], known[lo:hi] = slice_factors, slice_known
        if not np.isfinite(factors).all():
            blocks.unpersist(False)
            raise ValueError(f"ALS produced non-finite item factors for {params.as_dict()}")
        # the next sweep starts from what the artifact will hold
        factors = factors.astype(np.float32).astype(np.float64)
    model = SetAlsModel(ratings, blocks, params, factors, num_blocks)
    return FittedAls(params, model, factors, known, (blocks.id(),))


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

#: Default cap on the training users the grid search fits on (``--search-users``).
SEARCH_USERS = 250_000


def search_sample(train, max_users: int, seed: int, n_users: int | None = None):
    """The training interactions of a deterministic sample of about ``max_users`` users.

    A user is kept when ``xxhash64(seed, user) mod 10^6 < rate * 10^6`` with
    ``rate = max_users / n_users`` (:func:`taar_etl.spark.io.sample_clients`): the
    same users whatever the partitioning. Returns ``(interactions, info)`` where
    ``info`` = ``{"max_users", "training_users", "rate", "sampled"}``; with
    ``max_users >= n_users`` every interaction is kept.
    """
    from taar_etl.spark.io import SAMPLE_BUCKETS, sample_clients

    if max_users < 1:
        raise ValueError(f"max_users must be >= 1, got {max_users}")
    if n_users is None:
        n_users = train.select("user").distinct().count()
    rate = min(1.0, max_users / max(n_users, 1))
    # the bucket threshold sample_clients applies, so the reported rate is the one in force
    rate = max(1, round(rate * SAMPLE_BUCKETS)) / SAMPLE_BUCKETS if rate < 1 else 1.0
    info = {"max_users": max_users, "training_users": n_users, "rate": rate, "sampled": rate < 1}
    return (sample_clients(train, rate, seed, column="user") if rate < 1 else train), info




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

