"""CollaborativeRecommender (SPEC §5.2) on the five-row toy matrix of ``toy.py``.

Factors: m-alpha [1, 0], b-beta [0, 1], c-gamma [1, 1], d-delta [2, -1],
e-eps [-1, 2] (not a webextension).
"""

import pytest

from taar.hashing import item_id
from taar.recommenders import CollaborativeRecommender
from taar.recommenders.collaborative import FINITE_SCORES
from tests.fixtures import toy

pytestmark = pytest.mark.unit


@pytest.fixture
def rec():
    return CollaborativeRecommender().fit(item_matrix=toy.item_matrix(), addon_mapping=toy.addon_mapping())


def test_scores_are_dot_products_with_the_summed_installed_factors(rec):
    # u = [1, 0]; s = M·u: m-alpha 1 (installed), b-beta 0, c-gamma 1, d-delta 2, e-eps -1 (excluded)
    got = rec.recommend(toy.profile(installed_addons=["m-alpha@x"]), 10)
    assert got == [("d-delta@x", 2.0), ("c-gamma@x", 1.0), ("b-beta@x", 0.0)]


def test_user_vector_sums_every_installed_row(rec):
    # u = [1,0] + [0,1] = [1, 1]: c-gamma 2, d-delta 2-1 = 1 (m-alpha, b-beta installed)
    got = rec.recommend(toy.profile(installed_addons=["m-alpha@x", "b-beta@x"]), 10)
    assert got == [("c-gamma@x", 2.0), ("d-delta@x", 1.0)]


def test_ties_are_broken_by_guid_ascending(rec):
    # u = c-gamma = [1, 1]: m-alpha 1, b-beta 1, d-delta 1 -> all tied at 1.0
    got = rec.recommend(toy.profile(installed_addons=["c-gamma@x"]), 10)
    assert got == [("b-beta@x", 1.0), ("d-delta@x", 1.0), ("m-alpha@x", 1.0)]


def test_negative_scores_are_kept(rec):
    # installed e-eps (not a webextension, but its factors still build u) -> u = [-1, 2]
    # m-alpha -1, b-beta 2, c-gamma -1+2 = 1, d-delta -2-2 = -4
    got = rec.recommend(toy.profile(installed_addons=["e-eps@x"]), 10)
    assert got == [("b-beta@x", 2.0), ("c-gamma@x", 1.0), ("m-alpha@x", -1.0), ("d-delta@x", -4.0)]


def test_limit_truncates_after_ordering(rec):
    got = rec.recommend(toy.profile(installed_addons=["e-eps@x"]), 2)
    assert got == [("b-beta@x", 2.0), ("c-gamma@x", 1.0)]


def test_non_webextension_rows_are_never_recommended(rec):
    # u = b-beta = [0, 1] would score e-eps 2 (the best) but it is not a webextension
    got = dict(rec.recommend(toy.profile(installed_addons=["b-beta@x"]), 10))
    assert "e-eps@x" not in got
    assert got == {"m-alpha@x": 0.0, "c-gamma@x": 1.0, "d-delta@x": -1.0}


def test_mapping_entry_without_is_webextension_true_is_excluded():
    mapping = toy.addon_mapping()
    mapping[str(item_id("d-delta@x"))]["isWebextension"] = "true"  # a string is not `True`
    del mapping[str(item_id("b-beta@x"))]  # a row without a mapping entry
    rec = CollaborativeRecommender().fit(item_matrix=toy.item_matrix(), addon_mapping=mapping)
    # u = [1, 0]: only c-gamma (1) remains eligible
    assert rec.recommend(toy.profile(installed_addons=["m-alpha@x"]), 10) == [("c-gamma@x", 1.0)]


def test_installed_addons_outside_the_matrix_give_nothing(rec):
    p = toy.profile(installed_addons=["unknown@x"])
    assert rec.can_recommend(p)  # both artifacts loaded, installed non-empty
    assert rec.recommend(p, 10) == []


def test_unknown_addons_are_ignored_beside_known_ones(rec):
    got = rec.recommend(toy.profile(installed_addons=["unknown@x", "m-alpha@x"]), 1)
    assert got == [("d-delta@x", 2.0)]


def test_cannot_recommend_without_installed_addons(rec):
    p = toy.profile(installed_addons=[])
    assert not rec.can_recommend(p)
    assert rec.recommend(p, 10) == []


@pytest.mark.parametrize("missing", ["item_matrix", "addon_mapping"])
def test_cannot_recommend_with_a_missing_artifact(missing):
    given = {"item_matrix": toy.item_matrix(), "addon_mapping": toy.addon_mapping()}
    given[missing] = None
    rec = CollaborativeRecommender().fit(**given)
    assert not rec.can_recommend(toy.profile())
    assert rec.recommend(toy.profile(), 10) == []


def test_bad_limit_names_the_argument(rec):
    with pytest.raises(ValueError, match="limit"):
        rec.recommend(toy.profile(), -1)


def _coarse_recommender(rng, seed: int, scale: float = 1.0):
    """30 GUIDs with coarse integer factors (many equal scores: the GUID tie-break decides at a cut);
    some rows are not webextensions (never candidates), and on odd seeds every row is eligible."""
    guids = [f"g{i:02d}@x" for i in range(30)]
    rows = [{"id": item_id(g), "features": (rng.integers(-2, 3, size=2) * scale).astype(float).tolist()}
            for g in guids]
    mapping = {str(item_id(g)): {"id": g, "isWebextension": bool(seed % 2 or i % 4)} for i, g in enumerate(guids)}
    return CollaborativeRecommender().fit(item_matrix=rows, addon_mapping=mapping), guids


def _random_requests(rng, guids, n_profiles: int = 30):
    """``(profile, limit)``: profiles with 1-7 installed add-ons (an unknown one sometimes), each at
    limits 0, 1, 3, 10 and 40."""
    for _ in range(n_profiles):
        installed = rng.choice(guids + ["unknown@x"], size=int(rng.integers(1, 8)), replace=False).tolist()
        profile = toy.profile(installed_addons=installed)
        for limit in (0, 1, 3, 10, 40):
            yield profile, limit


@pytest.mark.parametrize("seed", range(6))
def test_fast_rows_equal_ranking_every_eligible_row(seed):
    """recommend_rows (top limit + installed, then drop installed) equals the readable reference."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rec, guids = _coarse_recommender(rng, seed)
    for profile, limit in _random_requests(rng, guids):
        best, scores = rec.recommend_rows(profile, limit)
        ref_best, ref_scores = rec.reference_rows(profile, limit)
        assert best.tolist() == ref_best.tolist()
        assert scores.tolist() == ref_scores.tolist()


@pytest.mark.parametrize("scale", [1.0, 1e150])
@pytest.mark.parametrize("seed", range(4))
def test_candidate_rows_are_the_reference_rows_on_both_paths(seed, scale):
    """candidate_rows is the set of reference_rows: installed rows at -inf (scale 1, provably finite
    scores) and the limit + len(installed) cut (scale 1e150: the bound 2 * (2e150)**2 = 8e300 is past
    FINITE_SCORES, though the scores, at most 2 * 2e150 * 7 * 2e150 = 5.6e301, stay finite)."""
    import numpy as np

    rng = np.random.default_rng(40 + seed)
    rec, guids = _coarse_recommender(rng, seed, scale)
    assert (rec.score_bound_ < FINITE_SCORES) == (scale == 1.0)
    for profile, limit in _random_requests(rng, guids):
        got_rows, got_scores = rec.candidate_rows(profile, limit)
        ref_rows, ref_scores = rec.reference_rows(profile, limit)
        assert sorted(zip(got_rows.tolist(), got_scores.tolist(), strict=True)) == sorted(
            zip(ref_rows.tolist(), ref_scores.tolist(), strict=True))


def test_score_bound_is_factors_times_the_largest_factor_squared(rec):
    # toy factors (2 columns), largest |f| = 2 (d-delta [2, -1]): 2 * 2 * 2 = 8
    assert rec.score_bound_ == 8.0
