"""RecommendationManager (SPEC §5.7): test ids, unknown clients, pool size, selection, seeds."""

import hashlib
import math
import pickle
from collections import Counter
from types import SimpleNamespace

import pytest

from taar.recommenders import Recommendation, RecommendationManager, build_engine
from taar.recommenders.ensemble import contributions
from tests.fixtures import toy
from tests.fixtures.toy import RecordingMetrics

pytestmark = pytest.mark.unit

CLIENT = "ab" * 32


class StubEnsemble:
    def __init__(self, pairs):
        self.pairs = pairs
        self.limits = []

    def combine(self, profile, limit, extra=None, metrics=None):
        """Same shape as EnsembleRecommender.combine: results and member answers."""
        self.limits.append(limit)
        return self.pairs[:limit], [("collaborative", 1.0, dict(self.pairs))]

    def ranked(self, profile, limit, extra=None, metrics=None):
        """A dictionary-path ensemble: no dense arrays, the manager uses ``combine``."""
        return None

    contributions = staticmethod(contributions)


class DictFetcher:
    def __init__(self, profiles):
        self.profiles = profiles
        self.calls = []

    def get(self, hashed_id):
        self.calls.append(hashed_id)
        return self.profiles.get(hashed_id)


class ExplodingFetcher:
    def get(self, hashed_id):
        raise AssertionError("the profile store must not be touched")


def stub_engine(pairs, whitelist=None):
    return SimpleNamespace(ensemble=StubEnsemble(pairs), whitelist=whitelist, model_versions={},
                           test_candidates=tuple((g, expected_test_weight(g)) for g in whitelist or ()))


def expected_test_weight(guid):
    # SPEC §2.9, written out independently of taar.hashing
    return (int(hashlib.sha256(guid.encode()).hexdigest(), 16) % 100) / 100


POOL = [("g1", 5.0), ("g2", 4.0), ("g3", 3.0), ("g4", 3.0), ("g5", 1.0)]


def manager(pairs=POOL, whitelist=None, **kwargs):
    fetcher = DictFetcher({CLIENT: toy.profile()})
    return RecommendationManager(stub_engine(pairs, whitelist), fetcher, **kwargs), fetcher


def test_randomize_false_is_plain_top_n():
    m, _ = manager(randomize=False)
    rec = m.recommend(CLIENT, 3, seed=1)
    assert rec.results == [("g1", 5.0), ("g2", 4.0), ("g3", 3.0)]
    assert rec.sources == {"g1": {"collaborative": 5.0}, "g2": {"collaborative": 4.0},
                           "g3": {"collaborative": 3.0}}
    assert (rec.seed, rec.is_test, rec.unknown_client) == (1, False, False)


def test_unknown_client_gets_nothing():
    m, fetcher = manager()
    rec = m.recommend("cd" * 32, 3, seed=5)
    assert rec == Recommendation([], {}, 5, False, True)
    assert fetcher.calls == ["cd" * 32]


def test_test_ids_use_whitelist_test_weights_without_a_profile_lookup():
    whitelist = ("w1@x", "w2@x", "w3@x", "w4@x")
    engine = stub_engine([], whitelist)
    m = RecommendationManager(engine, ExplodingFetcher(), randomize=False)
    metrics = RecordingMetrics()
    rec = m.recommend("1111-1111", 2, metrics=metrics)
    expected = sorted(((g, expected_test_weight(g)) for g in whitelist), key=lambda t: (-t[1], t[0]))[:2]
    assert rec.results == expected
    assert rec.sources == {g: {"test": w} for g, w in expected}
    assert rec.is_test and not rec.unknown_client
    assert metrics.counters == {"test_client": 1}


def test_test_id_without_a_whitelist_is_empty():
    m = RecommendationManager(stub_engine([], None), ExplodingFetcher())
    assert m.recommend("aaaa", 4).results == []


def test_test_ids_on_a_real_engine():
    engine = build_engine(toy.models())
    m = RecommendationManager(engine, ExplodingFetcher(), randomize=False)
    got = m.recommend("0000", 100).results
    assert sorted(g for g, _ in got) == sorted(toy.WHITELIST)
    assert all(w == expected_test_weight(g) for g, w in got)


@pytest.mark.parametrize("pool, whitelist, limit, expected", [
    (7, ("a", "b"), 3, 7),   # TAAR_CANDIDATE_POOL wins
    (0, ("a", "b"), 3, 2),   # len(whitelist)
    (0, None, 3, 30),        # 10 × limit
])
def test_pool_size(pool, whitelist, limit, expected):
    m, _ = manager(whitelist=whitelist, candidate_pool=pool)
    m.recommend(CLIENT, limit, seed=1)
    assert m.engine.ensemble.limits == [expected]


def test_non_finite_candidates_are_dropped():
    m, _ = manager(pairs=[("inf", math.inf), ("nan", math.nan), ("ok", 1.0), ("ninf", -math.inf)])
    for randomize in (True, False):
        m.randomize = randomize
        assert m.recommend(CLIENT, 4, seed=9).results == [("ok", 1.0)]


def test_randomized_selection_is_reproducible_for_a_seed():
    m, _ = manager()
    first = [m.recommend(CLIENT, 3, seed=s).results for s in range(20)]
    again = [m.recommend(CLIENT, 3, seed=s).results for s in range(20)]
    assert first == again
    assert len({tuple(r) for r in first}) > 1  # different seeds do give different selections
    for r in first:
        assert len(r) == 3
        assert r == sorted(r, key=lambda t: (-t[1], t[0]))


def test_heavy_candidates_are_chosen_far_more_often():
    # weights 10, 1, 1, 1, 0 -> shifted 10, 1, 1, 1, eps -> P(first pick = heavy) = 10/13
    m, _ = manager(pairs=[("heavy", 10.0), ("l1", 1.0), ("l2", 1.0), ("l3", 1.0), ("min", 0.0)])
    picks = Counter(m.recommend(CLIENT, 1, seed=s).results[0][0] for s in range(2000))
    # expected ≈ 1538 heavy, ≈ 154 each light, ~0 for the minimum (p ≈ 1.7e-17)
    assert picks["heavy"] > 1300
    assert all(100 < picks[g] < 220 for g in ("l1", "l2", "l3"))
    assert picks["min"] == 0


def test_fresh_seed_is_63_bit_and_replays():
    m, _ = manager()
    rec = m.recommend(CLIENT, 2)
    assert 0 <= rec.seed < 2**63
    assert m.recommend(CLIENT, 2, seed=rec.seed).results == rec.results


def test_metrics_timer_for_profile_recommendation():
    m, _ = manager()
    metrics = RecordingMetrics()
    m.recommend(CLIENT, 2, seed=1, metrics=metrics)
    assert "profile_recommendation" in metrics.timings


def test_bad_arguments():
    m, _ = manager()
    with pytest.raises(ValueError, match="limit"):
        m.recommend(CLIENT, -1)
    with pytest.raises(ValueError, match="candidate_pool"):
        RecommendationManager(m.engine, None, candidate_pool=-3)


def make_fetcher(profiles):
    return DictFetcher(profiles)


def test_pickling_drops_the_fetcher():
    m = RecommendationManager(stub_engine(POOL), make_fetcher({CLIENT: toy.profile()}))
    assert m.recommend(CLIENT, 3, seed=11).results
    copy = pickle.loads(pickle.dumps(m))
    assert copy.profile_fetcher is None
    copy.profile_fetcher = make_fetcher({CLIENT: toy.profile()})
    assert copy.recommend(CLIENT, 3, seed=11) == m.recommend(CLIENT, 3, seed=11)


def test_unpickled_manager_still_answers_test_ids():
    m = RecommendationManager(stub_engine([], ("w1@x",)), DictFetcher({}))
    copy = pickle.loads(pickle.dumps(m))
    assert copy.recommend("aaa", 1, seed=1).results == [("w1@x", expected_test_weight("w1@x"))]
    with pytest.raises(RuntimeError, match="profile fetcher"):
        copy.recommend(CLIENT, 1)


# --------------------------------------------------------------------------- dense (array) selection


def random_engine(seed):
    """A real four-member engine over random models with coarse values (ties across members are common)."""
    import numpy as np

    from taar.hashing import item_id

    rng = np.random.default_rng(seed)
    guids = [f"g{i:02d}@x" for i in range(40)]
    item_matrix = [{"id": item_id(g), "features": rng.integers(-2, 3, size=3).astype(float).tolist()}
                   for g in guids[:30]]
    mapping = {str(item_id(g)): {"id": g, "isWebextension": bool(i % 7)} for i, g in enumerate(guids[:30])}
    donors = [{"geo_city": str(rng.choice(["a", "b"])), "locale": "en-US", "os": "Linux",
               "subsession_length": float(rng.integers(0, 5)), "bookmark_count": 1.0, "tab_open_count": 1.0,
               "total_uri": 1.0, "unique_tlds": 1.0,
               "active_addons": rng.choice(guids[10:], size=4, replace=False).tolist()} for _ in range(30)]
    whitelist = guids[20:]
    neighbours = [[[j, float(rng.integers(-2, 3)) or 1.0] for j in sorted(rng.choice(
        [j for j in range(20) if j != i], size=5, replace=False).tolist())] for i in range(20)]
    return build_engine({
        "item_matrix": item_matrix, "addon_mapping": mapping, "donors": donors,
        "lr_curves": [[0.0, [4.0, 1.0]], [1.0, [2.0, 1.0]], [5.0, [1.0, 2.0]]],
        "locale": {"en-US": [[g, float(rng.integers(1, 4))] for g in guids[5:25]]},
        "item_item": {"guids": whitelist, "neighbours": neighbours, "lambda": 1.0, "top_k": 5},
        "whitelist": whitelist,
        "ensemble_weights": {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 0.25,
                                                  "item_item": 0.5}},
    })


@pytest.mark.parametrize("randomize", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_array_selection_equals_selecting_from_the_pair_list(seed, randomize):
    """The dense path (ranked arrays, sample_positions) answers exactly as combine + select on pairs."""
    import numpy as np

    engine = random_engine(seed)
    assert engine.ensemble.dense_
    rng = np.random.default_rng(200 + seed)
    profiles = {hashlib.sha256(str(i).encode()).hexdigest(): toy.profile(
        installed_addons=rng.choice([f"g{j:02d}@x" for j in range(40)], size=3, replace=False).tolist(),
        geo_city=str(rng.choice(["a", "b"])), locale="en-US", subsession_length=float(rng.integers(0, 5)))
        for i in range(15)}
    m = RecommendationManager(engine, DictFetcher(profiles), randomize=randomize, candidate_pool=12)
    for client, profile in profiles.items():
        for limit, request_seed in ((1, 5), (4, 6), (40, 7)):
            got = m.recommend(client, limit, seed=request_seed)
            assert not got.is_test and not got.unknown_client
            # reference: the pair list of combine, non-finite filter, select with the same seeded generator
            pool, answers = engine.ensemble.combine(profile, 12)
            pool = [(g, w) for g, w in pool if math.isfinite(w)]
            expected = m.select(pool, limit, np.random.Generator(np.random.PCG64(request_seed)))
            assert got.results == expected
            assert got.sources == engine.ensemble.contributions(answers, [g for g, _ in expected])
