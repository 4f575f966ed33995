"""ItemItemRecommender (SPEC §5.8) on the toy neighbour table, and as the ensemble's fourth member.

Toy rows (toy.ITEM_ITEM_ROWS), columns b-beta 0, c-gamma 1, d-delta 2, us1 3:
  b-beta:  c-gamma +0.5, us1 -0.2
  c-gamma: b-beta +0.4, d-delta +0.3, us1 +0.3
  d-delta: c-gamma +0.6
  us1:     (nothing)
"""

import pickle

import pytest

from taar import artifacts
from taar.recommenders import ItemItemRecommender, build_engine
from tests.fixtures import toy

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def rec():
    return ItemItemRecommender().fit(item_item=toy.item_item())


def test_scores_sum_the_installed_rows_and_exclude_installed(rec):
    # installed b-beta + d-delta: c-gamma 0.5 + 0.6 = 1.1, us1 -0.2; b-beta / d-delta installed
    got = rec.recommend(toy.profile(installed_addons=["b-beta@x", "d-delta@x"]), 10)
    assert got == [("c-gamma@x", pytest.approx(1.1)), ("us1@x", pytest.approx(-0.2))]


def test_ties_break_by_guid_and_unreached_items_are_not_candidates(rec):
    # installed c-gamma: b-beta 0.4, d-delta 0.3, us1 0.3 (tie -> GUID order); c-gamma itself never
    got = rec.recommend(toy.profile(installed_addons=["c-gamma@x"]), 10)
    assert got == [("b-beta@x", 0.4), ("d-delta@x", 0.3), ("us1@x", 0.3)]
    # installed us1 only: its row is empty, nothing is reached
    assert rec.can_recommend(toy.profile(installed_addons=["us1@x"]))
    assert rec.recommend(toy.profile(installed_addons=["us1@x"]), 10) == []


def test_only_catalogue_add_ons_count(rec):
    # m-alpha and unknown GUIDs are not items: ignored; without any item the recommender cannot recommend
    assert not rec.can_recommend(toy.profile())
    assert rec.recommend(toy.profile(installed_addons=["m-alpha@x", "zzz"]), 5) == []
    assert rec.recommend(toy.profile(installed_addons=["m-alpha@x", "d-delta@x"]), 5) == [("c-gamma@x", 0.6)]


def test_pickle_round_trip_keeps_the_answers(rec):
    clone = pickle.loads(pickle.dumps(rec))
    p = toy.profile(installed_addons=["b-beta@x", "c-gamma@x"])
    assert clone.recommend(p, 5) == rec.recommend(p, 5)


def test_a_missing_item_item_model_leaves_every_other_recommender_unchanged():
    with_model, without = build_engine(toy.models()), build_engine(toy.models(item_item=None))
    p = toy.profile(installed_addons=["c-gamma@x"])
    assert with_model.item_item.can_recommend(p) and not without.item_item.can_recommend(p)
    assert "item_item" not in without.loaded
    for name in ("collaborative", "similarity", "locale"):
        assert getattr(without, name).recommend(p, 5) == getattr(with_model, name).recommend(p, 5)
    # legacy weights give item_item 0: the ensemble answers the same with or without the model
    assert [g for g, _ in without.ensemble.recommend(p, 5)] == [g for g, _ in with_model.ensemble.recommend(p, 5)]


def test_an_invalid_item_item_model_is_refused_by_normalise():
    bad = toy.item_item()
    bad["neighbours"][0] = [[0, 0.5]]  # a self pair
    with pytest.raises(artifacts.ArtifactError, match="item_item"):
        artifacts.normalise("item_item", bad)


FOUR = {"ensemble_weights": {"collaborative": 0.0, "similarity": 0.0, "locale": 1.0, "item_item": 2.0}}


def test_four_member_ensemble_explains_the_item_item_contribution():
    # profile c-gamma, locale it-IT (toy.profile), weights collaborative 0, similarity 0, locale 1, item_item 2.
    # limit 2, one installed -> each member asked for 3.
    # item_item: b-beta 0.4, d-delta 0.3, us1 0.3 (x 2 = 0.8, 0.6, 0.6); locale it-IT: it1 0.9, B 0.4 (x 1).
    # collaborative and similarity answer but weigh 0. Totals: it1 0.9, b-beta 0.8, d-delta 0.6, us1 0.6, B 0.4
    engine = build_engine(toy.models(ensemble_weights=FOUR))
    assert engine.ensemble_weights == FOUR["ensemble_weights"]
    p = toy.profile(installed_addons=["c-gamma@x"])
    results, sources = engine.ensemble.recommend_explained(p, 2)
    assert results == [("it1@x", pytest.approx(0.9)), ("b-beta@x", pytest.approx(0.8))]
    assert sources["b-beta@x"]["item_item"] == pytest.approx(0.8)
    assert sources["it1@x"] == pytest.approx({"locale": 0.9})
