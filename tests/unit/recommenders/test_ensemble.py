"""EnsembleRecommender (SPEC §5.5) over stub members with known outputs.

Weights: collaborative 1.0, similarity 0.5, locale 2.0; installed: ["inst"].
collaborative: x 4, y 2, inst 9; similarity: y 2, z 6; locale: x 0.5, w 1.
Scores: x = 4·1 + 0.5·2 = 5; y = 2·1 + 2·0.5 = 3; z = 6·0.5 = 3; w = 1·2 = 2;
inst dropped. Order x, y, z (y/z tie -> GUID), w.
"""

import math

import pytest

from taar.recommenders import EnsembleRecommender, LocaleRecommender
from tests.fixtures import toy
from tests.fixtures.toy import RecordingMetrics, StubRecommender

pytestmark = pytest.mark.unit

WEIGHTS = {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 2.0}}
PROFILE = toy.profile(installed_addons=["inst"])


def members(similarity_error=None):
    return {
        "collaborative": StubRecommender([("inst", 9.0), ("x", 4.0), ("y", 2.0)]),
        "similarity": StubRecommender([("z", 6.0), ("y", 2.0)], error=similarity_error),
        "locale": StubRecommender([("w", 1.0), ("x", 0.5)]),
    }


def test_weighted_sum_drops_installed_and_breaks_ties_by_guid():
    rec = EnsembleRecommender().fit(**members(), ensemble_weights=WEIGHTS)
    assert rec.recommend(PROFILE, 10) == [("x", 5.0), ("y", 3.0), ("z", 3.0), ("w", 2.0)]
    assert rec.recommend(PROFILE, 3) == [("x", 5.0), ("y", 3.0), ("z", 3.0)]


def test_members_are_asked_for_limit_plus_installed():
    m = members()
    EnsembleRecommender().fit(**m, ensemble_weights=WEIGHTS).recommend(PROFILE, 3)
    # L' = 3 + len(["inst"]) = 4
    assert [s.limits for s in m.values()] == [[4], [4], [4]]


def test_explained_contributions_are_score_times_weight():
    rec = EnsembleRecommender().fit(**members(), ensemble_weights=WEIGHTS)
    results, sources = rec.recommend_explained(PROFILE, 3)
    assert results == [("x", 5.0), ("y", 3.0), ("z", 3.0)]
    assert sources == {
        "x": {"collaborative": 4.0, "locale": 1.0},
        "y": {"collaborative": 2.0, "similarity": 1.0},
        "z": {"similarity": 3.0},
    }


def test_a_raising_member_is_skipped_and_counted():
    metrics = RecordingMetrics()
    rec = EnsembleRecommender().fit(**members(similarity_error=RuntimeError("boom")), ensemble_weights=WEIGHTS)
    # without similarity: x = 4 + 1 = 5, y = 2, w = 2 (tie -> "w" < "y")
    results, _ = rec.recommend_explained(PROFILE, 10, metrics=metrics)
    assert results == [("x", 5.0), ("w", 2.0), ("y", 2.0)]
    assert metrics.counters == {"error_similarity": 1}


def test_timers_per_member_and_for_the_ensemble():
    metrics = RecordingMetrics()
    EnsembleRecommender().fit(**members(), ensemble_weights=WEIGHTS).recommend_explained(
        PROFILE, 3, metrics=metrics)
    assert sorted(metrics.timings) == ["collaborative_recommend", "ensemble_recommend",
                                       "locale_recommend", "similarity_recommend"]


def test_members_that_cannot_recommend_are_not_called():
    m = members()
    m["collaborative"].can = False
    rec = EnsembleRecommender().fit(**m, ensemble_weights=WEIGHTS)
    # x = 0.5·2 = 1, y = 1, z = 3, w = 2
    assert rec.recommend(PROFILE, 10) == [("z", 3.0), ("w", 2.0), ("x", 1.0), ("y", 1.0)]
    assert m["collaborative"].limits == []


def test_missing_weights_default_to_one_each():
    rec = EnsembleRecommender().fit(**members(), ensemble_weights=None)
    assert rec.weights_ == {"collaborative": 1.0, "similarity": 1.0, "locale": 1.0, "item_item": 1.0}
    assert rec.weights_defaulted_
    # x = 4 + 0.5, z = 6, y = 2 + 2, w = 1
    assert rec.recommend(PROFILE, 10) == [("z", 6.0), ("x", 4.5), ("y", 4.0), ("w", 1.0)]


def test_negative_member_scores_subtract():
    m = members()
    m["collaborative"].pairs = [("x", -3.0)]
    rec = EnsembleRecommender().fit(**m, ensemble_weights=WEIGHTS)
    # x = -3 + 0.5·2 = -2; z 3, w 2, y 2·0.5 = 1
    assert rec.recommend(PROFILE, 10) == [("z", 3.0), ("w", 2.0), ("y", 1.0), ("x", -2.0)]


def test_with_a_real_member_and_query_locale():
    locale = LocaleRecommender().fit(locale=toy.LOCALE)
    rec = EnsembleRecommender().fit(locale=locale, ensemble_weights=WEIGHTS)
    p = toy.profile(locale="", installed_addons=["us1@x"])
    # L' = 1 + 1 = 2 -> us1 0.5 (installed, dropped), us2 0.3·2 = 0.6
    assert rec.can_recommend(p, {"locale": "en-US"})
    assert rec.recommend(p, 1, {"locale": "en-US"}) == [("us2@x", pytest.approx(0.6))]


def test_cannot_recommend_when_no_member_can():
    m = members()
    for stub in m.values():
        stub.can = False
    rec = EnsembleRecommender().fit(**m)
    assert not rec.can_recommend(PROFILE)
    assert rec.recommend(PROFILE, 3) == []


# --------------------------------------------------------------------------- dense path


def random_members(seed):
    """Real members over random models with coarse values, so that cross-member ties are common."""
    import numpy as np

    from taar.hashing import item_id
    from taar.recommenders import CollaborativeRecommender, SimilarityRecommender

    rng = np.random.default_rng(seed)
    guids = [f"g{i:02d}@x" for i in range(40)]
    factors = rng.integers(-2, 3, size=(30, 3)).astype(float)
    collaborative = CollaborativeRecommender().fit(
        item_matrix=[{"id": item_id(g), "features": f.tolist()} for g, f in zip(guids[:30], factors, strict=True)],
        addon_mapping={str(item_id(g)): {"id": g, "isWebextension": bool(i % 7)} for i, g in enumerate(guids[:30])})
    donors = [{"geo_city": str(rng.choice(["a", "b"])), "locale": "en-US", "os": "Linux",
               "subsession_length": float(rng.integers(0, 5)), "bookmark_count": 1.0, "tab_open_count": 1.0,
               "total_uri": 1.0, "unique_tlds": 1.0,
               "active_addons": rng.choice(guids[10:], size=4, replace=False).tolist()} for _ in range(30)]
    similarity = SimilarityRecommender().fit(donors=donors, lr_curves=[[0.0, [4.0, 1.0]], [1.0, [2.0, 1.0]],
                                                                       [5.0, [1.0, 2.0]]])
    locale = LocaleRecommender().fit(locale={"en-US": [[g, float(rng.integers(1, 4))] for g in guids[5:25]]})
    return {"collaborative": collaborative, "similarity": similarity, "locale": locale}


@pytest.mark.parametrize("seed", range(8))
def test_dense_combine_equals_the_dictionary_combine(seed):
    import numpy as np

    weights = {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 0.25}}
    m = random_members(seed)
    dense = EnsembleRecommender().fit(**m, ensemble_weights=weights)
    assert dense.dense_
    rng = np.random.default_rng(100 + seed)
    for _ in range(20):
        profile = toy.profile(installed_addons=rng.choice([f"g{i:02d}@x" for i in range(40)], size=3,
                                                          replace=False).tolist(),
                              geo_city=str(rng.choice(["a", "b"])), locale="en-US",
                              subsession_length=float(rng.integers(0, 5)))
        for limit in (1, 5, 50):
            results, answers = dense.combine(profile, limit)
            # the SPEC §5.5 dictionary combine of the very same members is the reference
            expected, expected_answers = dense._combine_dict(profile, limit, None, None,
                                                             profile["installed_addons"], limit + 3)
            assert results == expected
            guids = [g for g, _ in results]
            assert dense.contributions(answers, guids) == EnsembleRecommender().contributions(
                expected_answers, guids)


@pytest.mark.parametrize("seed", range(3))
def test_contributions_from_candidate_indices_equal_those_from_guids(seed):
    """The manager passes the chosen candidate indices it has; the explanation is the same."""
    import numpy as np

    weights = {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 0.25}}
    dense = EnsembleRecommender().fit(**random_members(seed), ensemble_weights=weights)
    rng = np.random.default_rng(500 + seed)
    for _ in range(10):
        profile = toy.profile(installed_addons=rng.choice([f"g{i:02d}@x" for i in range(40)], size=3,
                                                          replace=False).tolist(), locale="en-US")
        results, answers = dense.combine(profile, 12)
        guids = [g for g, _ in results][::2]
        indices = [dense.index_of_[g] for g in guids]
        assert dense.contributions(answers, guids, indices) == dense.contributions(answers, guids)
        assert list(dense.contributions(answers, guids, indices)) == guids


def test_members_without_the_dense_interface_use_the_dictionary_path():
    rec = EnsembleRecommender().fit(**members(), ensemble_weights=WEIGHTS)
    assert not rec.dense_
    assert rec.recommend(PROFILE, 4) == [("x", 5.0), ("y", 3.0), ("z", 3.0), ("w", 2.0)]


def test_unknown_member_name_is_refused():
    with pytest.raises(ValueError, match="unknown ensemble members: nope"):
        EnsembleRecommender().fit(nope=StubRecommender([]))


@pytest.mark.parametrize("seed", range(6))
def test_candidate_rows_are_the_recommended_rows_in_any_order(seed):
    """What the dense sum reads (candidate_rows) is recommend_rows as a set, ties at the cut included."""
    import numpy as np

    from taar.recommenders import ItemItemRecommender

    m = random_members(seed)
    rng = np.random.default_rng(300 + seed)
    guids = [f"g{i:02d}@x" for i in range(40)]
    m["item_item"] = ItemItemRecommender().fit(item_item={  # coarse EASE weights: ties across rows
        "guids": guids[:30], "lambda": 1.0, "top_k": 6,
        "neighbours": [[[int(j), float(rng.choice([-1.0, 0.5, 1.0]))]
                        for j in sorted(rng.choice([k for k in range(30) if k != i], 6, replace=False))]
                       for i in range(30)]})
    for _ in range(15):
        profile = toy.profile(installed_addons=rng.choice([f"g{i:02d}@x" for i in range(40)], size=3,
                                                          replace=False).tolist(),
                              geo_city=str(rng.choice(["a", "b"])), locale="en-US",
                              subsession_length=float(rng.integers(0, 5)))
        for name, rec in m.items():
            for limit in (0, 1, 2, 5, 12, 50):
                rows, scores = rec.recommend_rows(profile, limit)
                got_rows, got_scores = rec.candidate_rows(profile, limit)
                assert sorted(zip(got_rows.tolist(), got_scores.tolist(), strict=True)) == sorted(
                    zip(rows.tolist(), scores.tolist(), strict=True)), (name, limit)


def test_top_rows_is_the_set_top_indices_picks_with_ties_at_the_cut():
    import numpy as np

    from taar.recommenders.base import top_indices, top_rows

    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(2, 30))
        scores = rng.integers(-3, 4, size=n).astype(float)  # coarse: many ties at the cut
        tiebreak = rng.permutation(n)
        for limit in range(0, n):
            assert sorted(top_rows(scores, tiebreak, limit).tolist()) == sorted(
                top_indices(scores, tiebreak, limit).tolist())


@pytest.mark.parametrize("n", [1, 5, 40, 300])
def test_ascending_order_is_the_stable_sort_with_ties_zeros_and_nan(n):
    """Both head checks (Python floats below SMALL_HEAD keys, numpy above) give the stable order."""
    import numpy as np

    from taar.recommenders.base import SMALL_HEAD, ascending_order

    rng = np.random.default_rng(n)
    for trial in range(60):
        if trial % 3 == 0:  # distinct keys: the unstable sort is kept
            keys = rng.normal(size=n)
        else:  # coarse keys with -0.0 beside 0.0 and some infinities: ties everywhere
            keys = rng.choice([-np.inf, -1.0, -0.0, 0.0, 2.0, np.inf], size=n)
        if trial % 5 == 4:
            keys[rng.integers(n)] = np.nan  # NaN sorts last; two of them may tie too
            keys[rng.integers(n)] = np.nan
        for count in sorted({0, 1, 3, SMALL_HEAD - 1, SMALL_HEAD, n - 1, n, n + 2} - {-1}):
            expected = np.argsort(keys, kind="stable")[:count]
            assert ascending_order(keys, count).tolist() == expected.tolist(), (trial, count)


def test_a_raising_dense_member_is_skipped_counted_and_timed(monkeypatch):
    """candidate_rows (asked without can_recommend first) raising: skipped like a failing member."""
    m = random_members(1)
    weights = {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 0.25}}
    dense = EnsembleRecommender().fit(**m, ensemble_weights=weights)
    profile = toy.profile(installed_addons=["g01@x", "g12@x"], geo_city="a", locale="en-US")
    without = EnsembleRecommender().fit(collaborative=m["collaborative"], locale=m["locale"],
                                        ensemble_weights=weights)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(m["similarity"], "candidate_rows", boom)
    metrics = RecordingMetrics()
    results, _ = dense.combine(profile, 8, metrics=metrics)
    assert results and results == without.combine(profile, 8)[0]
    assert metrics.counters == {"error_similarity": 1}
    assert sorted(metrics.timings) == ["collaborative_recommend", "ensemble_recommend", "locale_recommend",
                                       "similarity_recommend"]


class DenseStub:
    """A dense member (candidate_guids_, candidate_rows, recommend_rows) answering fixed scores."""

    def __init__(self, pairs):
        self.pairs = pairs
        self.candidate_guids_ = tuple(g for g, _ in pairs)

    def can_recommend(self, profile, extra=None):
        return True

    def recommend(self, profile, limit, extra=None):
        return sorted(self.pairs, key=lambda p: (-p[1], p[0]))[:limit]

    def recommend_rows(self, profile, limit, extra=None):
        import numpy as np

        rows = [self.candidate_guids_.index(g) for g, _ in self.recommend(profile, limit)]
        return np.array(rows, dtype=np.int64), np.array([self.pairs[r][1] for r in rows])

    candidate_rows = recommend_rows


@pytest.mark.parametrize("limit", [1, 50])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 1e308])
def test_non_finite_dense_totals_fall_back_to_the_dictionary_combine(bad, limit):
    # three installed GUIDs no member offers: each member is asked for limit + 3 rows, so limit 1 gives
    # 4 or 5 candidates (more than 3 x 1: the partition branch) and limit 50 all 6 (the sorting branch);
    # a's total is 1e308 + bad: +inf, -inf, NaN, or 2e308 overflowing to +inf
    first = DenseStub([("a", 1e308), ("b", 2.0), ("c", 1.0), ("d", 0.5), ("e", 0.25), ("f", 0.125)])
    second = DenseStub([("a", bad), ("c", 3.0)])
    rec = EnsembleRecommender().fit(collaborative=first, similarity=second, ensemble_weights={
        "collaborative": 1.0, "similarity": 1.0, "locale": 1.0, "item_item": 1.0})
    assert rec.dense_
    installed = ["x1@x", "x2@x", "x3@x"]
    profile = toy.profile(installed_addons=installed)
    assert rec.ranked(profile, limit) is None
    results, answers = rec.combine(profile, limit)
    expected = rec._combine_dict(profile, limit, None, None, installed, limit + 3)[0]
    assert [(g, repr(w)) for g, w in results] == [(g, repr(w)) for g, w in expected]  # NaN == NaN as text
    assert len(answers[0]) == 3  # the dictionary path's answers
