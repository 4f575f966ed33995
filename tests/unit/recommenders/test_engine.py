"""build_engine (SPEC §5.1, §6.3): every recommender from one artifact set, degradation.

End-to-end ensemble for ``toy.profile()`` (installed m-alpha, locale it-IT) with
weights collaborative 1.0, similarity 0.5, locale 2.0 and limit 3 (L' = 4):
  collaborative: d-delta 2, c-gamma 1, b-beta 0
  similarity:    A ln 9, dd ln 8, zz ln 8, B ln 6        (× 0.5)
  locale it-IT:  it1 0.9, B 0.4                          (× 2)
  -> d-delta 2, it1 1.8, B 0.5·ln 6 + 0.8 = 1.6959, A ln 3 = 1.0986, ...
"""

import math

import pytest

from taar.artifacts import ArtifactError
from taar.recommenders import MODEL_KEYS, Engine, RecommendationManager, build_engine
from tests.fixtures import toy

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def engine():
    return build_engine(toy.models(), model_versions={"locale": "20240101"})


def test_full_engine_attributes(engine):
    assert isinstance(engine, Engine)
    assert engine.loaded == frozenset(MODEL_KEYS)
    assert engine.whitelist == tuple(sorted(toy.WHITELIST))
    # legacy three-key weights: item_item gets 0
    assert engine.ensemble_weights == {"collaborative": 1.0, "similarity": 0.5, "locale": 2.0, "item_item": 0.0}
    assert not engine.weights_defaulted
    assert engine.ranking_usable
    assert engine.taarlite_default_mode == "rownorm_sum"
    assert engine.model_versions == {"locale": "20240101"}


def test_every_recommender_can_recommend_for_the_toy_client(engine):
    p = toy.profile()
    for rec in (engine.collaborative, engine.similarity, engine.locale, engine.ensemble):
        assert rec.can_recommend(p), type(rec).__name__


def test_ensemble_end_to_end(engine):
    results, sources = engine.ensemble.recommend_explained(toy.profile(), 3)
    assert [g for g, _ in results] == ["d-delta@x", "it1@x", "B@x"]
    assert [w for _, w in results] == pytest.approx([2.0, 1.8, 0.5 * math.log(6) + 0.8])
    assert sources["B@x"] == pytest.approx({"similarity": 0.5 * math.log(6), "locale": 0.8})
    assert sources["d-delta@x"] == {"collaborative": 2.0}


def test_manager_top_n_on_the_real_engine(engine):
    fetcher = type("F", (), {"get": lambda self, cid: toy.profile()})()
    rec = RecommendationManager(engine, fetcher, randomize=False).recommend("ab" * 32, 3, seed=1)
    # pool = len(whitelist) = 6: d-delta 2, it1 1.8, B 1.696, A 1.099, dd 1.040, zz 1.040 -> top 3
    assert [g for g, _ in rec.results] == ["d-delta@x", "it1@x", "B@x"]
    assert rec.sources["B@x"] == pytest.approx({"similarity": 0.5 * math.log(6), "locale": 0.8})
    assert rec.sources["it1@x"] == pytest.approx({"locale": 1.8})


def test_taarlite_default_answers_are_precomputed(engine):
    # rownorm_sum from d: e 36/41, c 27/70, a 45/197 (see test_guid_based)
    got = engine.guid_based.recommend("d", limit=4)
    assert [g for g, _ in got] == ["e", "c", "a"]
    assert [w for _, w in got] == pytest.approx([36 / 41, 27 / 70, 45 / 197])
    assert engine.guid_based._memo == {}
    assert engine.guid_based.default_indptr_.shape == (len(engine.guid_based.guids_) + 1,)


def test_empty_models_degrade_everywhere():
    engine = build_engine({})
    p = toy.profile()
    assert engine.loaded == frozenset()
    assert engine.whitelist is None
    assert engine.test_candidates == ()
    assert engine.weights_defaulted
    assert engine.ensemble_weights == {"collaborative": 1.0, "similarity": 1.0, "locale": 1.0, "item_item": 1.0}
    assert not engine.ranking_usable
    for rec in (engine.collaborative, engine.similarity, engine.locale, engine.item_item, engine.ensemble):
        assert not rec.can_recommend(p)
        assert rec.recommend(p, 5) == []
    assert engine.guid_based.recommend("a") == []


@pytest.mark.parametrize("missing, unable", [
    ("addon_mapping", "collaborative"),
    ("lr_curves", "similarity"),
    ("locale", "locale"),
])
def test_one_missing_artifact_disables_only_its_recommender(missing, unable):
    engine = build_engine(toy.models(**{missing: None}))
    p = toy.profile()
    assert not getattr(engine, unable).can_recommend(p)
    assert engine.ensemble.can_recommend(p)
    assert engine.ensemble.recommend(p, 3)


def test_missing_ranking_flags_it_unusable_but_taarlite_still_answers():
    engine = build_engine(toy.models(ranking=None))
    assert not engine.ranking_usable
    assert engine.guid_based.recommend("d")


def test_legacy_donor_keys_through_normalise():
    donors = [dict(d) for d in toy.DONORS]
    for d in donors:
        d["city"] = d.pop("geo_city")
    engine = build_engine(toy.models(donors=donors))
    assert engine.similarity.recommend(toy.profile(), 1)[0][0] == "A@x"


def test_unknown_model_key_is_rejected():
    with pytest.raises(ValueError, match="bogus"):
        build_engine({"bogus": {}})


@pytest.mark.parametrize("key, bad", [
    ("ensemble_weights", {"ensemble_weights": {"collaborative": float("nan"), "similarity": 1.0, "locale": 1.0}}),
    ("item_matrix", [{"id": 1, "features": [float("inf")]}]),
])
def test_bad_artifacts_raise_the_domain_error(key, bad):
    # normalise() would reject these; build_engine still refuses rather than serve garbage
    models = toy.models()
    models[key] = bad
    with pytest.raises(ArtifactError, match=key):
        build_engine(models)
