"""The block ALS of taar_etl.spark.als held to Spark ML's ``ALS(implicitPrefs=True)`` (SPEC §8.9).

The job does not call Spark ML's ALS (its Gram matrix is summed in task-completion
order, so artifacts would not be byte-identical across partitionings); it claims
the same objective and regularisation instead. These tests check the claim
against the real ``pyspark.ml.recommendation.ALS`` on small planted data:

1. Each half-step solves Spark ML's normal equations. Spark ML's last half-step of a
   fit solves the users from its final item factors; fed those item factors, our
   set solve must return Spark ML's user factors (up to float32 rounding). Fitting
   Spark ML on the transposed matrix gives the same check for our item solve.
2. End to end, from their own random starts, both trainers reach the same value
   of the implicit-ALS objective (written out in :func:`objective`), the same
   top-k items per user and the same hit rate on a held-out item per user.

Our factors are unconstrained (no NNLS), so Spark ML runs with ``nonnegative=False``.
"""

import numpy as np
import pytest

from taar_etl.spark import als

pytestmark = pytest.mark.spark

N_USERS = 300
N_GROUPS = 3
GROUP_ITEMS = 8
N_ITEMS = N_GROUPS * GROUP_ITEMS  # 24
# The parameters both trainers get. reg 0.5 rather than the job's 0.01-0.1 default range: the
# regularisation term then carries a few percent of the objective, so a mis-scaled one is visible.
PARAMS = als.AlsParams(rank=3, reg_param=0.5, alpha=10.0)
# Sweeps for the end-to-end fits. Our start (unit rows of absolute Gaussians) converges faster than
# Spark ML's: measured on this data, Spark ML's objective is 6.2% above ours after 5 sweeps, 0.73% after
# 10, 0.092% after 15 and 0.012% after 20 (ours moves by < 0.001% from 10 sweeps on).
MAX_ITER = 20
SEED = 7
K = 3


def planted_pairs(seed: int = 11) -> tuple[list[tuple[int, int]], list[int]]:
    """``(training pairs, held-out item per user)`` of a three-group planted set.

    User ``u`` belongs to group ``u % 3`` and installs 4-6 of its group's 8 items
    (earlier items of a group more popular, so rankings inside a group are not
    ties) plus, for about a third of the users, one item of another group. One of
    its in-group items is held out.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    popularity = np.linspace(2.0, 1.0, GROUP_ITEMS)
    popularity /= popularity.sum()
    pairs, held = [], []
    for u in range(N_USERS):
        base = (u % N_GROUPS) * GROUP_ITEMS
        items = list(base + rng.choice(GROUP_ITEMS, size=int(rng.integers(4, 7)), replace=False, p=popularity))
        held.append(int(items.pop()))
        if rng.random() < 1 / 3:
            other = (u % N_GROUPS + int(rng.integers(1, N_GROUPS))) % N_GROUPS
            items.append(other * GROUP_ITEMS + int(rng.integers(GROUP_ITEMS)))
        pairs += [(u, int(i)) for i in sorted(items)]
    return pairs, held


def dense(pairs, n_rows: int, n_cols: int) -> np.ndarray:
    r = np.zeros((n_rows, n_cols))
    for a, b in pairs:
        r[a, b] = 1.0
    return r


def objective(r: np.ndarray, x: np.ndarray, y: np.ndarray, params: als.AlsParams) -> float:
    """The implicit-ALS loss Spark ML's ``ALS(implicitPrefs=True)`` minimises (rating 1 per pair).

    ``L = Σ_{u,i} c_ui (p_ui - x_uᵀ y_i)² + reg · (Σ_u n_u |x_u|² + Σ_i n_i |y_i|²)``
    with ``p_ui = 1`` and ``c_ui = 1 + alpha`` for an observed pair, ``p_ui = 0`` and
    ``c_ui = 1`` otherwise, ``n_u`` / ``n_i`` the pairs of user u / item i.
    """
    confidence = 1.0 + params.alpha * r
    fit = float(np.sum(confidence * (r - x @ y.T) ** 2))
    penalty = params.reg_param * float(r.sum(axis=1) @ (x * x).sum(axis=1) + r.sum(axis=0) @ (y * y).sum(axis=1))
    return fit + penalty


def spark_ml_factors(spark, pairs, n_rows: int, n_cols: int, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row factors, column factors)`` of Spark ML's implicit ALS on ``(row, column)`` pairs."""
    from pyspark.ml.recommendation import ALS

    df = spark.createDataFrame([(a, b, 1.0) for a, b in pairs], "user int, item int, rating float")
    model = ALS(rank=PARAMS.rank, maxIter=max_iter, regParam=PARAMS.reg_param, alpha=PARAMS.alpha,
                implicitPrefs=True, nonnegative=False, seed=SEED, numUserBlocks=2, numItemBlocks=2,
                userCol="user", itemCol="item", ratingCol="rating").fit(df)
    out = []
    for factors, n in ((model.userFactors, n_rows), (model.itemFactors, n_cols)):
        m = np.zeros((n, PARAMS.rank))
        for row in factors.collect():
            m[row["id"]] = row["features"]
        out.append(m)
    return out[0], out[1]


@pytest.fixture(scope="module")
def planted():
    pairs, held = planted_pairs()
    return pairs, np.array(held), dense(pairs, N_USERS, N_ITEMS)


def row_sets(r: np.ndarray):
    """The :class:`SetBlock` of the distinct rows of ``r`` (one set per distinct item set, with its count),
    and for each set one row index that has it."""
    first: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}
    for row in range(r.shape[0]):
        key = tuple(np.flatnonzero(r[row]).tolist())
        first.setdefault(key, row)
        counts[key] = counts.get(key, 0) + 1
    block = als.set_block(list(counts.items()))
    keys = [tuple(block.items[block.ptr[s]:block.ptr[s + 1]].tolist()) for s in range(block.n_sets)]
    return block, np.array([first[k] for k in keys])


# --------------------------------------------------------------------------- half-steps


def test_user_solve_reproduces_spark_ml_users_from_its_item_factors(spark, planted):
    pairs, _, r = planted
    x_spark, y_spark = spark_ml_factors(spark, pairs, N_USERS, N_ITEMS, max_iter=2)
    block = als.set_block([(np.flatnonzero(r[u]).tolist(), 1) for u in range(N_USERS)])
    # set_block orders sets canonically; map them back to the users they came from
    order = sorted(range(N_USERS), key=lambda u: tuple(np.flatnonzero(r[u]).tolist()))
    x_ours = als.solve_sets(block, y_spark, y_spark.T @ y_spark, PARAMS)
    # Spark ML forms the normal equations in double from float32 factors and stores float32 results:
    # agreement to float32 precision (relative 1e-7 per value, a few ulps after the solve) -> 1e-5.
    np.testing.assert_allclose(x_ours, x_spark[order], rtol=1e-5, atol=1e-6)


def test_item_solve_reproduces_spark_ml_items_from_its_user_factors(spark, planted):
    pairs, _, r = planted
    # Spark ML on the transposed matrix: its last half-step solves our items from our users.
    y_spark, x_spark = spark_ml_factors(spark, [(i, u) for u, i in pairs], N_ITEMS, N_USERS, max_iter=2)
    # users with one item set got one factor from the same solve: one set of the block per item set
    block, rep = row_sets(r)
    for s in range(block.n_sets):
        members = [u for u in range(N_USERS) if np.array_equal(r[u], r[rep[s]])]
        np.testing.assert_allclose(x_spark[members], x_spark[[rep[s]] * len(members)], rtol=1e-5, atol=1e-6)
    slices = als.item_slices(N_ITEMS, 3)
    partials = [p for _, p in als.item_partials(0, block, x_spark[rep], slices)]
    y_ours = np.concatenate([als.solve_item_slice([p], PARAMS)[0] for p in partials])
    np.testing.assert_allclose(y_ours, y_spark, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def both_models(spark, planted):
    pairs, _, _ = planted
    x_spark, y_spark = spark_ml_factors(spark, pairs, N_USERS, N_ITEMS, max_iter=MAX_ITER)
    ratings = spark.createDataFrame([(u, i, 1.0) for u, i in pairs], "user int, item int, rating float")
    fitted = als.fit_als(ratings, PARAMS, n_items=N_ITEMS, max_iter=MAX_ITER, seed=SEED, num_blocks=3)
    try:
        x_ours = fitted.user_factors(N_USERS)
    finally:
        fitted.release()
    return {"ours": (x_ours, fitted.item_factors), "spark": (x_spark, y_spark)}


def test_both_reach_the_same_objective(planted, both_models):
    _, _, r = planted
    values = {name: objective(r, x, y, PARAMS) for name, (x, y) in both_models.items()}
    # Measured: ours 2783.620, Spark ML 2783.947 (relative gap 1.2e-4, Spark ML still converging; see
    # MAX_ITER). Deliberately broken solvers end higher on this data: reg instead of reg·n on both
    # sides 2839.7 (+1.9%), on the user side only 3095.7, on the item side only 3652.3; user-set counts
    # ignored in the item sums 2801.9 (+0.64%); confidence alpha instead of 1 + alpha on the right-hand
    # side 3247.6. 2e-3 is 16x the honest gap and under a third of the smallest of those.
    assert values["ours"] == pytest.approx(values["spark"], rel=2e-3)


def test_both_rank_the_same_items_and_hit_the_held_out_item_as_often(planted, both_models):
    pairs, held, r = planted
    users = list(range(N_USERS))
    ev = als.eval_set_from_lists(users, [np.flatnonzero(r[u]) for u in users], held, n_items=N_ITEMS)
    ranked, hr = {}, {}
    for name, (x, y) in both_models.items():
        scorer = als.user_factor_scorer(x, y)
        ranked[name] = als.rank_top_k(ev, scorer, K)
        hr[name] = als.evaluate(ev, scorer, K)[f"hr@{K}"]
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(ranked["ours"], ranked["spark"], strict=True)])
    # Measured: overlap 1.0 and HR@3 0.8367 for both (a random top 3 of a user's 17-21 candidates hits
    # about 3/19 = 0.16 of the time, so > 0.7 says the groups were learnt). The other bounds leave room for near-tied items of equal popularity to
    # swap places on another platform's BLAS: 1 slot in 20, 6 users of 300.
    assert hr["ours"] > 0.7
    assert overlap >= 0.95
    assert abs(hr["ours"] - hr["spark"]) <= 0.02
