"""Pickle round trips (SPEC §5.1): the ensemble Spark job ships these to executors.

Each copy must answer exactly like the original, not merely load.
"""

import pickle

import pytest

from taar.recommenders import MODES, RecommendationManager, build_engine
from tests.fixtures import toy

pytestmark = pytest.mark.unit

PROFILES = [
    toy.profile(),
    toy.profile(installed_addons=["e-eps@x", "b-beta@x"], locale="de-LU"),
    toy.profile(geo_city="Atlantis", locale="", installed_addons=[]),
]
EXTRAS = [None, {"locale": "pt-BR"}]


def round_trip(obj):
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def answers(engine):
    out = []
    for p in PROFILES:
        for extra in EXTRAS:
            for rec in (engine.collaborative, engine.similarity, engine.locale, engine.item_item):
                out.append((rec.can_recommend(p, extra), rec.recommend(p, 5, extra)))
            out.append(engine.ensemble.recommend_explained(p, 5, extra))
    for guid in engine.guid_based.guids_:
        for mode in MODES:
            out.append(engine.guid_based.recommend(guid, mode, 4))
    return out


@pytest.fixture(scope="module")
def engine():
    return build_engine(toy.models())


def test_engine_round_trip_answers_identically(engine):
    before = answers(engine)
    copy = round_trip(engine)
    assert copy is not engine
    assert answers(copy) == before
    assert (copy.whitelist, copy.ensemble_weights, copy.ranking_usable) == (
        engine.whitelist, engine.ensemble_weights, engine.ranking_usable)


@pytest.mark.parametrize("name", ["collaborative", "similarity", "locale", "item_item", "ensemble"])
def test_each_recommender_round_trips(engine, name):
    rec = getattr(engine, name)
    copy = round_trip(rec)
    for p in PROFILES:
        assert copy.recommend(p, 5) == rec.recommend(p, 5)


def test_state_holds_no_logger_lock_or_rng(engine):
    import logging
    import threading

    import numpy as np

    forbidden = (logging.Logger, type(threading.Lock()), np.random.Generator)
    for rec in (engine.collaborative, engine.similarity, engine.locale, engine.ensemble, engine.guid_based):
        assert not [k for k, v in vars(rec).items() if isinstance(v, forbidden)]


class Fetcher:
    def get(self, hashed_id):
        return PROFILES[0]


def test_manager_round_trip(engine):
    m = RecommendationManager(engine, Fetcher())
    before = [m.recommend(cid, 4, seed=s) for cid in ("ab" * 32, "0-0-0") for s in (1, 2, 3)]
    copy = round_trip(m)
    assert copy.profile_fetcher is None  # it holds a store client: the receiver gives its own
    copy.profile_fetcher = Fetcher()
    assert [copy.recommend(cid, 4, seed=s) for cid in ("ab" * 32, "0-0-0") for s in (1, 2, 3)] == before
