"""TAARlite (SPEC §5.6) on the five-GUID graph of ``toy.py``, computed by hand.

Counts (symmetric): a-b 40, a-c 20, a-d 10, a-e 2, b-c 10, c-d 6, d-e 4.
Ranking: a 200, b 100, c 60, d 30, e 10 -> mean 80 -> m = 0.05·80 = 4, so a-e (2)
is filtered out and d-e (4) is kept.

Unfiltered rows and sums: C[a] = b40 c20 d10 e2 (72); C[b] = a40 c10 (50);
C[c] = a20 b10 d6 (36); C[d] = a10 c6 e4 (20); C[e] = a2 d4 (6).
count_map (column sums) = a 72, b 50, c 36, d 20, e 6.
row_count = a 4, b 2, c 3, d 3, e 2.
row_norm_sum: a = 40/50 + 20/36 + 10/20 + 2/6 = 197/90; b = 40/72 + 10/36 = 5/6;
c = 20/72 + 10/50 + 6/20 = 7/9; d = 10/72 + 6/36 + 4/6 = 35/36; e = 2/72 + 4/20 = 41/180.
"""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taar.recommenders import GuidBasedRecommender
from taar.recommenders.guid_based import MODES, candidate_order, reference_recommend
from tests.fixtures import toy

pytestmark = pytest.mark.unit


@pytest.fixture
def rec():
    return GuidBasedRecommender().fit(coinstall=toy.coinstall(), ranking=toy.RANKING)


def assert_pairs(got, expected):
    assert [g for g, _ in got] == [g for g, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_statistics_on_unfiltered_rows(rec):
    at = [rec.index_[g] for g in "abcde"]
    assert rec.min_installs_ == 4.0
    assert rec.count_map_[at].tolist() == [72, 50, 36, 20, 6]
    assert rec.row_count_[at].tolist() == [4, 2, 3, 3, 2]
    assert rec.row_norm_sum_[at] == pytest.approx([197 / 90, 5 / 6, 7 / 9, 35 / 36, 41 / 180], rel=1e-12)


@pytest.mark.parametrize("mode, expected", [
    # D = F[d] = a10 c6 e4 (nothing filtered)
    ("none", [("a", 10.0), ("c", 6.0), ("e", 4.0)]),
    # a 10/4 = 2.5; c 6/3 = 2 and e 4/2 = 2 tie -> installs c 60 > e 10
    ("row_count", [("a", 2.5), ("c", 2.0), ("e", 2.0)]),
    # e 4/6, c 6/36, a 10/72
    ("row_sum", [("e", 2 / 3), ("c", 1 / 6), ("a", 5 / 36)]),
    # P = a .5, c .3, e .2; e .2/(41/180) = 36/41; c .3/(7/9) = 27/70; a .5/(197/90) = 45/197
    ("rownorm_sum", [("e", 36 / 41), ("c", 27 / 70), ("a", 45 / 197)]),
    # walk from d (filtered rows: F[e] = d4 only):
    #  P1 = a 1/2, c 3/10, e 1/5
    #  P2 = a 1/6, b 31/84, c 1/7, d 9/28
    #  P3 = a 1349/2520, b 340/2520, c 549/2520, d 120/2520, e 162/2520
    #  w = P1 + 4/9 P2 + 1/9 P3 in 22680ths: a 14369, b 4060, c 8793, e 4698 (d = self -> 0)
    #  normalised by 31920
    ("guidception", [("a", 14369 / 31920), ("c", 8793 / 31920), ("e", 4698 / 31920), ("b", 4060 / 31920)]),
])
def test_each_mode_by_hand(rec, mode, expected):
    assert_pairs(rec.recommend("d", mode, limit=10), expected)


def test_min_installs_filter(rec):
    # a-e = 2 < 4 is dropped from a's row; b 24/35 = (4/7)/(5/6), c (2/7)/(7/9), d (1/7)/(35/36)
    assert_pairs(rec.recommend("a", "rownorm_sum", 10), [("b", 24 / 35), ("c", 18 / 49), ("d", 36 / 245)])
    # e keeps only d (4 >= 4)
    assert_pairs(rec.recommend("e", "none", 10), [("d", 4.0)])


def test_without_ranking_there_is_no_filter_and_the_ranking_is_unusable():
    rec = GuidBasedRecommender().fit(coinstall=toy.coinstall(), ranking=None)
    assert not rec.ranking_usable_
    assert rec.min_installs_ == 0.0
    assert_pairs(rec.recommend("e", "none", 10), [("d", 4.0), ("a", 2.0)])


def test_rows_entirely_below_the_filter_cannot_recommend():
    # mean 1000 -> m = 50 > every count
    rec = GuidBasedRecommender().fit(coinstall=toy.coinstall(), ranking={"a": 1000})
    assert not rec.can_recommend("a")
    assert all(rec.recommend("a", mode, 4) == [] for mode in MODES)


def test_truncation_keeps_the_largest_counts(rec):
    rec = GuidBasedRecommender(truncate=2).fit(coinstall=toy.coinstall(), ranking=toy.RANKING)
    # D = a10 c6 (e4 cut); P = a 10/16, c 6/16; a .625/(197/90) = 56.25/197; c .375/(7/9) = 27/56
    assert_pairs(rec.recommend("d", "rownorm_sum", 10), [("c", 27 / 56), ("a", 56.25 / 197)])


def test_truncation_ties_are_broken_by_guid():
    graph = {"k": {"s": 5, "q": 5, "p": 5, "r": 1}}
    rec = GuidBasedRecommender(truncate=2).fit(coinstall=graph, ranking=None)
    assert rec.recommend("k", "none", 10) == [("p", 5.0), ("q", 5.0)]


@pytest.mark.parametrize("installs, expected", [
    ({"c": 60, "e": 10}, ["a", "c", "e"]),  # installs decide: c first
    ({"c": 10, "e": 60}, ["a", "e", "c"]),  # installs decide: e first
    ({"c": 10, "e": 10}, ["a", "c", "e"]),  # installs tie: GUID ascending
])
def test_weight_ties_are_ordered_by_installs_then_guid(installs, expected):
    ranking = {**toy.RANKING, **installs}  # means 80, 80, 70 -> m <= 4: d's row stays unfiltered
    rec = GuidBasedRecommender().fit(coinstall=toy.coinstall(), ranking=ranking)
    assert [g for g, _ in rec.recommend("d", "row_count", 10)] == expected  # c and e both 2.0


def test_rounding_to_ten_digits_turns_float_noise_into_a_tie():
    # 0.1 + 0.2 = 0.30000000000000004 > 0.3, but both round to 0.3: installs decide (5 > 1)
    order = candidate_order(np.array([0, 0]), np.array([0.1 + 0.2, 0.3]), np.array([1.0, 5.0]), np.array([0, 1]))
    assert order.tolist() == [1, 0]


def test_limit_and_unknown_guid(rec):
    assert [g for g, _ in rec.recommend("d", limit=2)] == ["e", "c"]
    assert rec.recommend("d", limit=0) == []
    assert rec.recommend("nope") == []
    assert not rec.can_recommend("nope")
    assert rec.can_recommend("d")


def test_installs(rec):
    assert rec.installs("a") == 200
    assert rec.installs("nope") == 0


def test_unknown_mode_is_a_value_error(rec):
    with pytest.raises(ValueError, match="unknown normalize mode 'bogus'"):
        rec.recommend("a", "bogus")


def test_default_mode_is_precomputed_and_other_modes_memoised_with_a_bound():
    rec = GuidBasedRecommender(cache_size=2).fit(coinstall=toy.coinstall(), ranking=toy.RANKING)
    for g in "abcde":
        rec.recommend(g)
    assert rec._memo == {}
    for g in "abcde":
        rec.recommend(g, "guidception")
    assert len(rec._memo) == 2
    # the memoised answer is still the hand-computed one (test_each_mode_by_hand)
    assert_pairs(rec.recommend("d", "guidception", 1), [("a", 14369 / 31920)])


def test_memo_entries_hold_only_truncate_nodes_and_answer_identically():
    # a 30-GUID chain: the guidception walk from g00 reaches many add-ons, the memo keeps 2
    guids = [f"g{i:02d}" for i in range(30)]
    coinstall = {}
    for a, b in zip(guids, guids[1:], strict=False):
        coinstall.setdefault(a, {})[b] = 5
        coinstall.setdefault(b, {})[a] = 5
    for g in guids[1:]:
        coinstall["g00"][g] = 1
        coinstall[g]["g00"] = 1
    memo = GuidBasedRecommender(truncate=2).fit(coinstall=coinstall)
    plain = GuidBasedRecommender(truncate=2, cache_size=0).fit(coinstall=coinstall)
    full = plain._answer(0, "guidception")[0]
    assert full.shape[0] > 2  # the full answer is longer than what is kept
    assert memo.recommend("g00", "guidception", 2) == plain.recommend("g00", "guidception", 2)
    nodes, weights = memo._memo[("guidception", 0)]
    assert (nodes.shape[0], weights.shape[0]) == (2, 2) and nodes.base is None  # a copy, not a view
    # asking for more than truncate computes the full answer and memoises nothing new
    assert memo.recommend("g00", "guidception", 5) == plain.recommend("g00", "guidception", 5)
    assert len(memo._memo) == 1


def test_pickle_drops_the_memo_and_answers_identically(rec):
    before = {(g, m): rec.recommend(g, m, 10) for g in "abcde" for m in MODES}
    copy = pickle.loads(pickle.dumps(rec))
    assert copy._memo == {}
    assert {(g, m): copy.recommend(g, m, 10) for g in "abcde" for m in MODES} == before


def test_missing_coinstall_recommends_nothing():
    rec = GuidBasedRecommender().fit(coinstall=None, ranking=toy.RANKING)
    assert not rec.loaded_
    assert all(rec.recommend("a", mode) == [] for mode in MODES)


@pytest.mark.parametrize("kwargs", [{"truncate": 0}, {"truncate": 2.5}, {"cache_size": -1}])
def test_bad_hyperparameters_are_rejected_at_fit(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GuidBasedRecommender(**kwargs).fit(coinstall=toy.coinstall())


# ---------------------------------------------------------------- vectorised vs reference

NODES = "abcdefg"


@st.composite
def graphs(draw):
    pairs = draw(st.dictionaries(
        st.tuples(st.sampled_from(NODES), st.sampled_from(NODES)).filter(lambda t: t[0] < t[1]),
        st.integers(1, 30), min_size=1, max_size=15))
    graph: dict[str, dict[str, int]] = {}
    for (x, y), c in pairs.items():
        graph.setdefault(x, {})[y] = c
        graph.setdefault(y, {})[x] = c
    ranking = draw(st.dictionaries(st.sampled_from(NODES), st.integers(1, 200), max_size=7))
    return graph, ranking


@settings(max_examples=60, deadline=None)
@given(data=graphs(), truncate=st.integers(1, 5))
def test_vectorised_path_matches_the_reference(data, truncate):
    graph, ranking = data
    rec = GuidBasedRecommender(truncate=truncate).fit(coinstall=graph, ranking=ranking)
    for guid in NODES:
        for mode in MODES:
            got = rec.recommend(guid, mode, 10)
            expected = reference_recommend(graph, ranking, guid, mode, 10, truncate)
            assert [g for g, _ in got] == [g for g, _ in expected], (guid, mode)
            assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-9)
