"""taar_etl.spark.als: grid parsing, leave-last-out holdout, serving-formula evaluation, ALS fitting, selection."""

import math

import numpy as np
import pytest

from taar_etl.spark import als
from taar_etl.spark.interactions import leave_last_out

pytestmark = pytest.mark.spark

P = als.AlsParams


# --------------------------------------------------------------------------- grid


def test_default_grid_is_the_spec_product():
    grid = als.parse_grid("default", 32, 0.1, 10.0)
    assert len(grid) == 3 * 2 * 3
    assert {p.rank for p in grid} == {16, 32, 48}
    assert {p.reg_param for p in grid} == {0.01, 0.1}
    assert {p.alpha for p in grid} == {1.0, 10.0, 40.0}


def test_grid_none_is_the_single_flag_configuration():
    assert als.parse_grid("none", 8, 0.5, 3.0) == (P(8, 0.5, 3.0),)


def test_explicit_grid_is_a_product_and_missing_keys_take_the_flags():
    grid = als.parse_grid("rank=4,8; alpha=1,40", 32, 0.1, 10.0)
    assert grid == (P(4, 0.1, 1.0), P(4, 0.1, 40.0), P(8, 0.1, 1.0), P(8, 0.1, 40.0))


@pytest.mark.parametrize("spec", ["", "rank", "rank=", "rank=x", "size=3", "rank=4;rank=8", "rank=0", "alpha=-1"])
def test_bad_grids_are_rejected(spec):
    with pytest.raises(ValueError):
        als.parse_grid(spec, 32, 0.1, 10.0)


# --------------------------------------------------------------------------- evaluation (driver)

# Three items with 2-d factors: M0 = (1, 0), M1 = (0, 1), M2 = (1, 1).
FACTORS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def test_serving_formula_metrics_by_hand():
    # user A trained on {0}: u = M0 = (1, 0); s = M·u = (1, 0, 1); candidates {1, 2} -> [2, 1]
    # user B trained on {1}: u = (0, 1); s = (0, 1, 1); candidates {0, 2} -> [2, 0]
    # A holds out 2 (position 1), B holds out 0 (position 2).
    ev = als.eval_set_from_lists([0, 1], [[0], [1]], [2, 0], n_items=3)
    ranked = als.rank_top_k(ev, als.item_sum_scorer(FACTORS), k=2)
    assert ranked.tolist() == [[2, 1], [2, 0]]
    m = als.evaluate(ev, als.item_sum_scorer(FACTORS), k=2)
    assert m["hr@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)  # (1 + 0.6309) / 2
    assert m["precision@2"] == 0.5  # one hit in two slots for both users
    assert m["coverage@2"] == 1.0  # {2, 1, 0} of 3 items
    m1 = als.evaluate(ev, als.item_sum_scorer(FACTORS), k=1)
    assert m1["hr@1"] == 0.5 and m1["ndcg@1"] == 0.5


def test_ties_go_to_the_smaller_item_index_and_training_items_are_never_ranked():
    # trained on {2}: u = (1, 1); s = (1, 1, 2) -> item 2 excluded, items 0 and 1 tie -> [0, 1]
    ev = als.eval_set_from_lists([0], [[2]], [1], n_items=3)
    assert als.rank_top_k(ev, als.item_sum_scorer(FACTORS), k=3).tolist() == [[0, 1, -1]]


def test_candidates_exclude_items_the_model_does_not_know():
    ev = als.eval_set_from_lists([0], [[0]], [2], n_items=3)
    known = np.array([True, True, False])
    assert als.rank_top_k(ev, als.item_sum_scorer(FACTORS), k=2, candidates=known).tolist() == [[1, -1]]
    m = als.evaluate(ev, als.item_sum_scorer(FACTORS), k=2, candidates=known)
    assert m["hr@2"] == 0.0
    assert m["coverage@2"] == 0.5  # item 1 of the 2 known items


def test_popularity_and_user_factor_scorers():
    ev = als.eval_set_from_lists([0, 1], [[0], [1]], [[1, 2], [2]], n_items=3)
    counts = np.array([5.0, 3.0, 4.0])
    # A: candidates {1, 2} by count -> [2, 1]; B: {0, 2} -> [0, 2]
    assert als.rank_top_k(ev, als.popularity_scorer(counts), k=2).tolist() == [[2, 1], [0, 2]]
    users = np.array([[0.0, 1.0], [1.0, 0.0]])
    # A: x = (0, 1) -> s = (0, 1, 1) -> [1, 2]; B: x = (1, 0) -> s = (1, 0, 1) -> [0, 2]
    assert als.rank_top_k(ev, als.user_factor_scorer(users, FACTORS), k=2).tolist() == [[1, 2], [0, 2]]
    # held-out sets: A {1, 2} both found -> precision 1; B {2} at position 2 -> NDCG 1/log2(3)
    m = als.evaluate(ev, als.user_factor_scorer(users, FACTORS), k=2)
    assert m["precision@2"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["ndcg@2"] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)


def test_eval_set_rejects_out_of_range_items():
    with pytest.raises(ValueError, match="out of range"):
        als.eval_set_from_lists([0], [[3]], [0], n_items=3)


# --------------------------------------------------------------------------- holdout (Spark)

ROWS = [
    # user, item, install_day, user_hash
    (0, 0, 10, 4), (0, 1, 12, 4), (0, 2, 11, 4),  # newest: item 1 -> held out; hash even -> validation
    (1, 3, 20, 7), (1, 1, 20, 7),  # tie on day 20 -> smaller item (1) held out; odd -> test
    (2, 2, 5, 2),  # one item only: stays in training
    (3, 0, None, 6), (3, 2, 1, 6),  # null install day counts as oldest -> item 2 held out; validation
    (4, 4, 3, 9), (4, 0, 2, 9),  # held out 4; odd -> test
]


@pytest.fixture(scope="module")
def interactions(spark):
    return spark.createDataFrame(ROWS, "user int, item int, install_day long, user_hash long")


def test_leave_last_out_holds_out_the_newest_item_and_splits_by_hash(interactions):
    train, holdout = leave_last_out(interactions, eval_users=10)
    held = sorted((r.user, r.item, r.role) for r in holdout.collect())
    assert held == [(0, 1, "validation"), (1, 1, "test"), (3, 2, "validation"), (4, 4, "test")]
    assert sorted((r.user, r.item) for r in train.collect()) == [(0, 0), (0, 2), (1, 3), (2, 2), (3, 0), (4, 0)]
    assert {r.rating for r in train.collect()} == {1.0}


def test_eval_users_keeps_the_smallest_hashes_per_role(interactions):
    _, holdout = leave_last_out(interactions, eval_users=1)
    # validation hashes: user 0 -> 4, user 3 -> 6; test: user 1 -> 7, user 4 -> 9
    assert sorted((r.user, r.role) for r in holdout.collect()) == [(0, "validation"), (1, "test")]


def test_collect_eval_sets_and_item_counts(interactions):
    train, holdout = leave_last_out(interactions, eval_users=10)
    sets = als.collect_eval_sets(train, holdout, n_items=5)
    val, test = sets["validation"], sets["test"]
    assert val.users.tolist() == [0, 3] and val.held_out.tolist() == [1, 2]
    assert val.train.toarray().tolist() == [[1, 0, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert test.users.tolist() == [1, 4] and test.held_out.tolist() == [1, 4]
    # training pairs: item 0 x3 (users 0, 3, 4), item 2 x2 (0, 2), item 3 x1 (1)
    assert als.item_counts(train, 5).tolist() == [3.0, 0.0, 2.0, 1.0, 0.0]


# --------------------------------------------------------------------------- fitting (Spark)


def _planted(spark, partitions):
    """Two groups: users 0-19 have items {0, 1, 2}, users 20-39 items {3, 4, 5}, minus one item each."""
    rows = []
    for u in range(40):
        group = [0, 1, 2] if u < 20 else [3, 4, 5]
        rows += [(u, i, 1.0) for i in group if i != group[u % 3]]
    return spark.createDataFrame(rows, "user int, item int, rating float").repartition(partitions)


def test_fit_recovers_planted_groups_and_is_bit_identical_across_partitionings(spark):
    # rank 2 = the two planted groups (with a larger rank and little regularisation, item factors of
    # one group can come out nearly orthogonal, and summed item factors then rank poorly)
    fits = [als.fit_als(_planted(spark, n), P(2, 0.1, 10.0), n_items=7, max_iter=6, seed=3, num_blocks=4)
            for n in (1, 4)]
    cached = set(fits[0].rdd_ids)
    assert cached  # the training blocks the model keeps cached
    try:
        assert np.array_equal(fits[0].item_factors, fits[1].item_factors)
        f = fits[0]
        assert f.known_items.tolist() == [True] * 6 + [False]  # item 6 has no interaction
        assert not f.item_factors[6].any()
        # a user with item 0 gets the rest of its group first: 1 and 2 above 3, 4, 5
        ev = als.eval_set_from_lists([0], [[0]], [1], n_items=7)
        top2 = als.rank_top_k(ev, als.item_sum_scorer(f.item_factors), k=2, candidates=f.known_items)
        assert sorted(top2[0].tolist()) == [1, 2]
        users = f.user_factors(40)
        assert users.shape == (40, 2)
        # users 0 and 3 both hold {1, 2} (0 % 3 == 3 % 3 drops item 0): one item set, one factor
        assert np.array_equal(users[0], users[3]) and users[0].any()
    finally:
        for f in fits:
            f.release()
    persistent = spark.sparkContext._jsc.getPersistentRDDs()
    assert not cached & {int(i) for i in persistent.keySet()}


# --------------------------------------------------------------------------- block ALS pieces (driver, by hand)

ALPHA1 = P(1, 0.5, 1.0)  # rank 1, reg 0.5, alpha 1: confidence c = 2


def test_set_blocks_are_canonical_whatever_the_row_order():
    a = als.set_block([([1], 1), ([0, 1], 2)])
    b = als.set_block([([0, 1], 2), ([1], 1)])
    for x, y in ((a.ptr, b.ptr), (a.items, b.items), (a.weight, b.weight)):
        assert np.array_equal(x, y)
    assert a.ptr.tolist() == [0, 2, 3] and a.items.tolist() == [0, 1, 1] and a.weight.tolist() == [2.0, 1.0]


def test_solve_sets_by_hand():
    # Y = [1, 2] -> YtY = 1 + 4 = 5.
    # set {0, 1}: A = 5 + 1·(1 + 4) + 0.5·2 = 11, b = 2·(1 + 2) = 6 -> x = 6/11
    # set {1}:    A = 5 + 1·4 + 0.5·1 = 9.5,     b = 2·2 = 4       -> x = 4/9.5
    block = als.set_block([([0, 1], 2), ([1], 1)])
    y = np.array([[1.0], [2.0]])
    x = als.solve_sets(block, y, y.T @ y, ALPHA1)
    assert x[:, 0] == pytest.approx([6 / 11, 4 / 9.5])


def test_item_solve_by_hand_and_independent_of_the_order_partials_arrive_in():
    # one block: set {0, 1} (2 users) with x = 1, set {1} (1 user) with x = 3; 3 items in one slice.
    # XtX = 2·1 + 1·9 = 11. item 0: Σw x xᵀ = 2, Σ w x = 2, n = 2; item 1: 2 + 9 = 11, 2 + 3 = 5, n = 3.
    # y0 = (2·2) / (11 + 2 + 0.5·2) = 4/14; y1 = (2·5) / (11 + 11 + 0.5·3) = 10/23.5; item 2 has no user
    block = als.set_block([([0, 1], 2), ([1], 1)])
    [(index, part)] = als.item_partials(0, block, np.array([[1.0], [3.0]]), [(0, 3)])
    assert index == 0 and part.gram[0, 0] == 11 and part.count.tolist() == [2, 3, 0]
    factors, known = als.solve_item_slice([part], ALPHA1)
    assert factors[:, 0] == pytest.approx([4 / 14, 10 / 23.5, 0.0]) and known.tolist() == [True, True, False]
    # several blocks: the sum runs in block order whatever order the shuffle delivers them in
    rng = np.random.Generator(np.random.PCG64(1))
    parts = []
    for b in range(5):
        sets = [([0, 1], int(rng.integers(1, 5))), ([1, 2], int(rng.integers(1, 5))), ([2], 1)]
        parts += [p for _, p in als.item_partials(b, als.set_block(sets), rng.standard_normal((3, 4)), [(0, 3)])]
    p4 = P(4, 0.1, 10.0)
    reference = als.solve_item_slice(parts, p4)[0]
    for seed in range(6):
        shuffled = [parts[i] for i in np.random.Generator(np.random.PCG64(seed)).permutation(len(parts))]
        assert np.array_equal(als.solve_item_slice(shuffled, p4)[0], reference)


def test_item_slices_cover_the_items_once():
    assert als.item_slices(7, 3) == [(0, 2), (2, 5), (5, 7)]
    assert als.item_slices(2, 2) == [(0, 1), (1, 2)]


def test_objects_shipped_to_executors_pickle():
    import pickle

    block = als.set_block([([0, 1], 2)])
    [(_, part)] = als.item_partials(3, block, np.ones((1, 2)), [(0, 2)])
    for obj in (block, part, ALPHA1):
        back = pickle.loads(pickle.dumps(obj))
        assert type(back) is type(obj)
    assert np.array_equal(pickle.loads(pickle.dumps(part)).outer, part.outer)


def test_search_sample_is_deterministic_and_keeps_all_under_the_cap(spark):
    rows = [(u, u % 5, 1.0) for u in range(400)]
    train = spark.createDataFrame(rows, "user int, item int, rating float")
    same, info = als.search_sample(train, 1000, seed=3)
    assert same is train and info == {"max_users": 1000, "training_users": 400, "rate": 1.0, "sampled": False}
    got = [sorted(r.user for r in als.search_sample(train.repartition(n), 100, seed=3)[0].collect()) for n in (1, 4)]
    assert got[0] == got[1]
    assert 50 < len(got[0]) < 150  # about 100 = 400 · 0.25
    _, info = als.search_sample(train, 100, seed=3)
    assert info["rate"] == 0.25 and info["sampled"]


def test_different_seeds_give_different_factors(spark):
    a, b = (als.fit_als(_planted(spark, 2), P(4, 0.1, 10.0), n_items=6, max_iter=2, seed=s) for s in (1, 2))
    assert not np.array_equal(a.item_factors, b.item_factors)
    a.release()
    b.release()


# --------------------------------------------------------------------------- selection


class _Fake(als.FittedAls):
    released = []

    def release(self):
        _Fake.released.append(self.params)


def _fake_fit(quality):
    """A trainer whose factors make item 1 rank first (good) or last (bad) for the one validation user."""
    def fit(train, params, *, n_items, **options):
        good = np.array([[1.0], [1.0], [0.0]])  # trained on 0: s = (1, 1, 0) -> [1, 2]
        bad = np.array([[1.0], [0.0], [1.0]])  # s = (1, 0, 1) -> [2, 1]
        return _Fake(params, None, good if quality[params] else bad, np.ones(3, dtype=bool))
    return fit


def test_grid_search_picks_best_ndcg_then_smaller_rank_and_releases_losers():
    validation = als.eval_set_from_lists([0], [[0]], [1], n_items=3)
    grid = (P(8, 0.1, 1.0), P(4, 0.1, 1.0), P(16, 0.1, 1.0))
    quality = {grid[0]: True, grid[1]: True, grid[2]: False}
    _Fake.released = []
    best, results = als.grid_search(None, grid, validation, n_items=3, k=2, fit=_fake_fit(quality))
    # ranks 8 and 4 tie on NDCG@2 = 1 and HR@2 = 1 -> rank 4 wins; rank 16 scores 1/log2(3)
    assert best.params == P(4, 0.1, 1.0)
    assert [r["validation"]["ndcg@2"] for r in results] == [1.0, 1.0, pytest.approx(1 / math.log2(3))]
    assert sorted(_Fake.released) == [P(8, 0.1, 1.0), P(16, 0.1, 1.0)]


def test_grid_search_needs_validation_users_to_choose():
    grid = (P(8, 0.1, 1.0), P(4, 0.1, 1.0))
    with pytest.raises(ValueError, match="validation"):
        als.grid_search(None, grid, None, n_items=3, k=2, fit=_fake_fit({}))
    best, results = als.grid_search(None, grid[:1], None, n_items=3, k=2, fit=_fake_fit({grid[0]: True}))
    assert best.params == grid[0] and results == [{"params": grid[0].as_dict(), "validation": None}]
