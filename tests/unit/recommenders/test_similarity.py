"""SimilarityRecommender and the shared distance function (SPEC §5.3).

The six donors of ``toy.py`` each carry their distance / curve-point arithmetic.
Expected scores: A = ln 3 + ln 3 = ln 9, B = ln 3 + ln 2 = ln 6, C = ln 2,
dd = zz = ln 8; E (LR 1/2) and F (denominator 0) get nothing.
"""

import copy
import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taar import artifacts
from taar.profile import normalise_profile
from taar.recommenders import SimilarityRecommender, similarity
from taar.recommenders.similarity import nearest_points, reference_scores, similarity_distances
from tests.fixtures import toy

pytestmark = pytest.mark.unit

EXPECTED = [("A@x", math.log(9)), ("dd@x", math.log(8)), ("zz@x", math.log(8)),
            ("B@x", math.log(6)), ("C@x", math.log(2))]


@pytest.fixture
def rec():
    return SimilarityRecommender().fit(donors=toy.DONORS, lr_curves=toy.LR_CURVES)


def assert_pairs(got, expected):
    assert [g for g, _ in got] == [g for g, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_hand_computed_scores_and_order(rec):
    # dd and zz tie at ln 8: GUID ascending
    assert_pairs(rec.recommend(toy.profile(), 10), EXPECTED)


def test_limit(rec):
    assert_pairs(rec.recommend(toy.profile(), 2), EXPECTED[:2])


def test_installed_addons_are_not_removed(rec):
    got = rec.recommend(toy.profile(installed_addons=["A@x", "B@x"]), 10)
    assert [g for g, _ in got][0] == "A@x"


def test_distances_canberra_with_zero_denominators_and_hamming_thirds():
    XD = [[3600, 0, 4, 100, 5], [10800, 0, 4, 100, 5], [0, 0, 0, 0, 0]]
    CD = [["Rome", "it-IT", "Windows_NT"], ["Paris", "fr-FR", "Linux"], ["Berlin", "de-DE", "Darwin"]]
    x_c = [3600, 0, 4, 100, 5]
    c_c = ["Rome", "it-IT", "Linux"]
    # (0 + 0.001)·1/3; (0.5 + 0.001)·2/3; (4 + 0.001)·3/3
    expected = [0.001 / 3, 0.501 * 2 / 3, 4.001]
    assert similarity_distances(XD, CD, x_c, c_c) == pytest.approx(expected, rel=1e-12)


def test_distances_pair_row_by_row_for_the_spark_job():
    XD = np.array([[1.0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0]])
    x_c = np.array([[3.0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0]])
    CD = np.array([["a", "b", "c"], ["a", "b", "c"]])
    c_c = np.array([["x", "b", "c"], ["x", "y", "z"]])
    # row 0: canberra |1-3|/4 = 0.5, hamming 1/3; row 1: canberra 0, hamming 1
    assert similarity_distances(XD, CD, x_c, c_c) == pytest.approx([0.501 / 3, 0.001], rel=1e-12)


def test_identical_categoricals_give_distance_zero():
    assert similarity_distances([[1, 2, 3, 4, 5]], [[0, 0, 0]], [9, 9, 9, 9, 9], [0, 0, 0]).tolist() == [0.0]


def test_nearest_point_prefers_the_lower_index_on_ties_and_clamps():
    xs = np.array([0.0, 1.0, 2.0])
    # 0.5 and 1.5 are equidistant -> lower index; -1 and 5 clamp; 1.0 exact; 0.4 -> 0; 0.6 -> 1
    dist = np.array([0.5, 1.5, -1.0, 5.0, 1.0, 0.4, 0.6])
    assert nearest_points(xs, dist).tolist() == [0, 1, 0, 2, 1, 0, 1]


def test_nan_and_zero_denominator_points_are_skipped():
    curves = [[0.0, [float("nan"), 1.0]], [1.0, [2.0, 1.0]], [5.0, [4.0, 0.0]]]
    donors = [toy.DONORS[2], toy.DONORS[3]]  # distance 0 -> NaN point; distance 4.001 -> den 0
    rec = SimilarityRecommender().fit(donors=donors, lr_curves=curves)
    assert rec.can_recommend(toy.profile())
    assert rec.recommend(toy.profile(), 10) == []


def test_only_positive_scores_are_returned():
    # every donor lands on x = 0 with LR 1/2: ln < 0, nothing votes
    rec = SimilarityRecommender().fit(donors=toy.DONORS, lr_curves=[[0.0, [1.0, 2.0]]])
    assert rec.recommend(toy.profile(), 10) == []


def test_weak_curves_log_a_warning_at_most_once_a_minute(caplog, monkeypatch):
    monkeypatch.setattr(similarity, "_last_weak_warning", [-math.inf])
    # LR e^0.05 everywhere: max ln = 0.05 < 0.1
    rec = SimilarityRecommender().fit(donors=toy.DONORS, lr_curves=[[0.0, [math.exp(0.05), 1.0]]])
    with caplog.at_level(logging.WARNING, logger="taar.recommenders.similarity"):
        got = rec.recommend(toy.profile(), 1)
        rec.recommend(toy.profile(), 1)
    assert got[0][1] == pytest.approx(0.1)  # A@x: two donors vote 0.05 each
    assert caplog.text.count("below 0.1") == 1


def test_strong_curves_do_not_warn(caplog, monkeypatch):
    monkeypatch.setattr(similarity, "_last_weak_warning", [-math.inf])
    rec = SimilarityRecommender().fit(donors=toy.DONORS, lr_curves=toy.LR_CURVES)
    with caplog.at_level(logging.WARNING, logger="taar.recommenders.similarity"):
        rec.recommend(toy.profile(), 1)
    assert "below" not in caplog.text


@pytest.mark.parametrize("field", ["geo_city", "locale", "os", "subsession_length", "bookmark_count",
                                   "tab_open_count", "total_uri", "unique_tlds"])
def test_missing_or_null_feature_cannot_recommend(rec, field):
    p = toy.profile()
    del p[field]
    assert not rec.can_recommend(p)
    assert rec.recommend(p, 10) == []
    assert not rec.can_recommend(toy.profile(**{field: None}))


def test_unknown_categorical_value_matches_no_donor(rec):
    # Atlantis differs from every donor city: one more difference for donors 1 and 3
    p = toy.profile(geo_city="Atlantis")
    expected = reference_scores(toy.DONORS, toy.LR_CURVES, p)
    got = dict(rec.recommend(p, 10))
    assert got == pytest.approx(expected)
    # donor 3 now: hamming 1/3, dist 0.000333 -> x = 0 -> still ln 3; A = ln 9 unchanged
    assert got["A@x"] == pytest.approx(math.log(9))


def test_legacy_profile_keys_give_the_same_answer(rec):
    legacy_payload = {
        "city": "Rome", "locale": "it-IT", "os": "Linux", "subsession_hours_sum": 1.0,
        "places_bookmarks_count": 0, "scalar_parent_browser_engagement_tab_open_event_count": 4,
        "scalar_parent_browser_engagement_total_uri_count": 100,
        "scalar_parent_browser_engagement_unique_domains_count": 5, "active_addons": [],
    }
    p = normalise_profile(legacy_payload, client_id="f0" * 32)
    assert_pairs(rec.recommend(p, 10), EXPECTED)


def test_legacy_donor_keys_give_the_same_answer():
    donors = copy.deepcopy(toy.DONORS)
    for d in donors:
        d["city"] = d.pop("geo_city")
        d["subsession_hours_sum"] = d.pop("subsession_length") / 3600
    rec = SimilarityRecommender().fit(donors=artifacts.normalise("donors", donors), lr_curves=toy.LR_CURVES)
    assert_pairs(rec.recommend(toy.profile(), 10), EXPECTED)


@pytest.mark.parametrize("donors, curves", [(None, toy.LR_CURVES), (toy.DONORS, None), (None, None)])
def test_missing_artifacts_cannot_recommend(donors, curves):
    rec = SimilarityRecommender().fit(donors=donors, lr_curves=curves)
    assert not rec.can_recommend(toy.profile())
    assert rec.recommend(toy.profile(), 10) == []


# ---------------------------------------------------------------- vectorised vs reference

CITIES = st.sampled_from(["", "Rome", "Paris", "Oslo"])
LOCALES = st.sampled_from(["", "it-IT", "fr-FR"])
OSES = st.sampled_from(["Linux", "Darwin"])
AMOUNTS = st.sampled_from([0.0, 1.0, 2.0, 5.0, 10.0, 100.0, 3600.0])
GUIDS = st.sampled_from(["a", "b", "c", "d", "e", "f"])

donor_strategy = st.fixed_dictionaries({
    "geo_city": CITIES, "locale": LOCALES, "os": OSES,
    "subsession_length": AMOUNTS, "bookmark_count": AMOUNTS, "tab_open_count": AMOUNTS,
    "total_uri": AMOUNTS, "unique_tlds": AMOUNTS,
    "active_addons": st.lists(GUIDS, min_size=1, max_size=4, unique=True),
})
curve_strategy = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0]),
              st.sampled_from([0.0, 1.0, 3.0])),
    min_size=1, max_size=6, unique_by=lambda t: t[0],
).map(lambda pts: [[x, [n, d]] for x, n, d in sorted(pts)])
profile_strategy = st.fixed_dictionaries({
    "geo_city": CITIES, "locale": LOCALES, "os": OSES,
    "subsession_length": AMOUNTS, "bookmark_count": AMOUNTS, "tab_open_count": AMOUNTS,
    "total_uri": AMOUNTS, "unique_tlds": AMOUNTS, "installed_addons": st.just([]),
})


@settings(max_examples=60, deadline=None)
@given(donors=st.lists(donor_strategy, min_size=1, max_size=8), curves=curve_strategy, p=profile_strategy)
def test_vectorised_path_matches_the_reference(donors, curves, p):
    rec = SimilarityRecommender().fit(donors=donors, lr_curves=curves)
    got = rec.recommend(p, 100)
    expected = reference_scores(donors, curves, p)
    assert dict(got) == pytest.approx(expected, rel=1e-9)
    assert got == sorted(got, key=lambda t: (-t[1], t[0]))


# --------------------------------------------------------------------------- request-time fast paths


@pytest.mark.parametrize("xs", [
    np.linspace(0.0, 5.0, 1000),                       # the job's evenly spaced curve
    np.linspace(-2.0, 3.0, 7),
    np.array([0.0, 1.0]),
    np.array([0.0, 0.1, 0.2, 0.25, 0.3, 4.0]),        # uneven but few per bucket
    np.r_[np.linspace(0.0, 1e-6, 50), 1.0],            # clustered: falls back to binary search
    np.array([2.5]),                                   # one point: binary search
])
def test_bucketed_nearest_points_equal_the_binary_search(xs):
    from taar.recommenders.similarity import PointLookup

    rng = np.random.default_rng(len(xs))
    lookup = PointLookup(xs)
    lo, hi = float(xs[0]), float(xs[-1])
    mids = (xs[1:] + xs[:-1]) / 2  # exact ties go to the lower index
    dist = np.concatenate([rng.uniform(lo - 1, hi + 1, 3000), xs, mids, np.nextafter(xs, np.inf),
                           np.nextafter(xs, -np.inf), [lo - 1e9, hi + 1e9, 0.0, -0.0]])
    assert lookup.nearest(dist).tolist() == nearest_points(xs, dist).tolist()
    assert lookup.nearest(np.array([np.nan, 1.0])).tolist() == nearest_points(xs, np.array([np.nan, 1.0])).tolist()


@pytest.mark.parametrize("xs", [
    np.linspace(0.0, 5.0, 1000),                       # thresholds >= 0: buckets counted from 0
    np.linspace(-2.0, 3.0, 7),                         # a negative threshold: from the first one
    np.linspace(100.0, 101.0, 50),                     # far from 0: from 0 the buckets would crowd
    np.array([0.0, 0.1, 0.2, 0.25, 0.3, 4.0]),
    np.r_[np.linspace(0.0, 1e-6, 50), 1.0],            # clustered: binary search
])
def test_nearest_for_non_negative_distances_equals_the_binary_search(xs):
    from taar.recommenders.similarity import PointLookup

    rng = np.random.default_rng(len(xs))
    lookup = PointLookup(xs)
    hi = float(xs[-1])
    mids = (xs[1:] + xs[:-1]) / 2
    dist = np.concatenate([rng.uniform(0, hi + 1, 3000), xs, mids, np.nextafter(xs, np.inf),
                           np.nextafter(xs, -np.inf), [0.0, -0.0, 1e300, np.inf, np.nan]])
    dist = dist[(dist >= 0) | np.isnan(dist)]
    assert lookup.nearest_nonnegative(dist).tolist() == nearest_points(xs, dist).tolist()


def test_bucket_origin_is_zero_only_when_the_thresholds_allow_it():
    from taar.recommenders.similarity import PointLookup

    assert PointLookup(np.linspace(0.0, 5.0, 1000)).origin == 0.0
    assert PointLookup(np.linspace(-2.0, 3.0, 7)).origin < 0  # the first threshold, between -2 and -2 + 5/6
    # from 0, the 49 thresholds of [100, 101] would share the first of 2 * 50 buckets over [0, 101]
    lookup = PointLookup(np.linspace(100.0, 101.0, 50))
    assert lookup.usable and lookup.origin > 100


@pytest.mark.parametrize("field", ["geo_city", "locale", "os", "subsession_length", "bookmark_count",
                                   "tab_open_count", "total_uri", "unique_tlds"])
def test_the_request_encoding_refuses_exactly_what_can_recommend_refuses(rec, field):
    profile = toy.profile()
    assert rec._client(profile) is not None and rec.can_recommend(profile)
    missing = dict(profile, **{field: None})
    assert rec._client(missing) is None and not rec.can_recommend(missing)
    assert rec.candidate_rows(missing, 5)[0].tolist() == []
    x_list, codes = rec._client(profile)
    x_c, c_c = rec.encode(profile)
    assert (x_list, codes) == (x_c.tolist(), c_c.tolist())


def test_clustered_curves_do_not_use_buckets():
    from taar.recommenders.similarity import PointLookup

    assert PointLookup(np.linspace(0.0, 5.0, 1000)).usable
    assert not PointLookup(np.r_[np.linspace(0.0, 1e-6, 50), 1.0]).usable
    assert not PointLookup(np.array([1.0])).usable


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_client_distances_equal_the_shared_distance_function(seed):
    rng = np.random.default_rng(seed)
    donors = [toy._donor(str(rng.choice(["a", "b", ""])), str(rng.choice(["en-US", "de"])), "Linux",
                         rng.choice([0.0, -0.0, 1.0, 3.5, 1e6], size=5).tolist(), ["x@y"]) for _ in range(40)]
    rec = SimilarityRecommender().fit(donors=donors, lr_curves=toy.LR_CURVES)
    client = toy.profile(geo_city=str(rng.choice(["a", "c"])), locale="de",
                         subsession_length=float(rng.choice([0.0, 2.0, 1e6])), bookmark_count=0.0)
    x_c, c_c = rec.encode(client)
    expected = similarity_distances(rec.donor_x_, rec.donor_c_, x_c, c_c)
    assert rec.distances(x_c, c_c).tolist() == expected.tolist()


@pytest.mark.parametrize("xs", [
    np.linspace(0.0, 5.0, 1000),
    np.linspace(-2.0, 3.0, 7),
    np.array([0.0, 1.0]),
    np.array([-1e300, -1.0, 0.0, 5e-324, 1e300]),     # a span that overflows: keys, not differences
    np.array([0.0, 0.1, 0.2, 0.25, 0.3, 4.0]),
])
def test_first_distances_are_where_the_nearest_point_steps_up(xs):
    from taar.recommenders.similarity import PointLookup, first_distances

    thresholds = first_distances(xs)
    k = np.arange(1, len(xs))
    # the defining property, float by float: the threshold answers k, the float just below it k - 1
    assert nearest_points(xs, thresholds).tolist() == k.tolist()
    assert nearest_points(xs, np.nextafter(thresholds, -np.inf)).tolist() == (k - 1).tolist()
    lookup = PointLookup(xs)
    around = np.concatenate([thresholds, np.nextafter(thresholds, np.inf), np.nextafter(thresholds, -np.inf),
                             [np.inf, -np.inf, np.nan, 0.0, -0.0, 5e-324, -5e-324]])
    assert lookup.nearest(around).tolist() == nearest_points(xs, around).tolist()


def test_curves_that_are_not_strictly_increasing_use_the_binary_search():
    from taar.recommenders.similarity import PointLookup

    xs = np.array([0.0, 1.0, 1.0, 2.0])  # a repeated x: the answer jumps 1 -> 2 -> 3, not one step at a time
    lookup = PointLookup(xs)
    assert not lookup.usable
    dist = np.array([0.9, 1.0, 1.4, 1.6])
    # 0.9 and 1.0: one point below (0.0), nearer to xs[1]; 1.4: three below, |2 - 1.4| = 0.6 is not
    # < |1 - 1.4| = 0.4, so xs[2]; 1.6: 0.4 < 0.6, so xs[3]
    assert lookup.nearest(dist).tolist() == nearest_points(xs, dist).tolist() == [1, 1, 2, 3]


def test_client_distances_accept_plain_lists(rec):
    x_c, c_c = rec.encode(toy.profile())
    assert rec.distances(x_c.tolist(), c_c.tolist()).tolist() == rec.distances(x_c, c_c).tolist()


def _serving_sized(seed: int = 11):
    """1000 donors with zeros among their features and 1-6 of 40 add-ons each, on the toy curve."""
    rng = np.random.default_rng(seed)
    guids = [f"a{i:02d}@x" for i in range(40)]
    donors = [toy._donor(str(rng.choice(["a", "b", ""])), str(rng.choice(["en-US", "de", "fr"])),
                         str(rng.choice(["Linux", "Darwin"])),
                         (rng.integers(0, 1000, size=5) * rng.choice([0.0, 1.0, 0.37], size=5)).tolist(),
                         rng.choice(guids, size=int(rng.integers(1, 7)), replace=False).tolist())
              for _ in range(1000)]
    return SimilarityRecommender().fit(donors=donors, lr_curves=toy.LR_CURVES), rng


def test_request_path_scores_and_points_are_the_readable_ones_bit_for_bit():
    """_points (the "0.0 in" shortcut before the zero-column test) and _scores give the bytes of
    nearest_points(similarity_distances) and of ``Aᵀ @ votes``."""
    rec, rng = _serving_sized()
    for _ in range(60):
        features = (rng.integers(0, 1000, size=5) * rng.choice([0.0, -0.0, 1.0, 2.5], size=5)).tolist()
        client = toy.profile(geo_city=str(rng.choice(["a", "zz"])), locale=str(rng.choice(["de", "xx"])),
                             os="Linux", **dict(zip(similarity.CONTINUOUS, features, strict=True)))
        x_c, c_c = rec.encode(client)
        x_list, codes = rec._client(client)
        points = rec._points(x_list, codes)
        expected = nearest_points(rec.xs_, similarity_distances(rec.donor_x_, rec.donor_c_, x_c, c_c))
        assert points.tolist() == expected.tolist()
        votes = rec.point_votes_[points]
        assert rec._scores(x_list, codes).tobytes() == (rec.donor_addons_t_ @ votes).tobytes()
