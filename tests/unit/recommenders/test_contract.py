"""One contract, checked on every recommender (the implicit ``RecommenderBaseTestMixin`` pattern).

Each concrete class below binds the mixin to one recommender with a few lines:
how to build it with data, how to build it empty, and queries it can answer.
"""

import copy
import pickle

import pytest

from taar.recommenders import (
    CollaborativeRecommender,
    EnsembleRecommender,
    GuidBasedRecommender,
    ItemItemRecommender,
    LocaleRecommender,
    SimilarityRecommender,
    build_engine,
)
from tests.fixtures import toy

pytestmark = pytest.mark.unit


class RecommenderContract:
    """Behaviour every recommender promises (SPEC §5.1)."""

    def make(self):
        raise NotImplementedError

    def make_empty(self):
        raise NotImplementedError

    def queries(self):
        """``(query, extra)`` pairs the fitted recommender can answer."""
        raise NotImplementedError

    def can_recommend(self, rec, query, extra):
        return rec.can_recommend(query, extra)

    def recommend(self, rec, query, limit, extra):
        return rec.recommend(query, limit, extra)

    def test_fit_returns_self_and_init_sets_no_fitted_state(self):
        rec = self.make()
        fresh = type(rec)()
        assert not [k for k in vars(fresh) if k.endswith("_") and not k.startswith("_")]
        assert fresh.fit() is fresh
        assert [k for k in vars(rec) if k.endswith("_")]

    def test_answers_are_typed_sorted_unique_and_limited(self):
        rec = self.make()
        for query, extra in self.queries():
            assert self.can_recommend(rec, query, extra)
            for limit in (0, 1, 2, 50):
                got = self.recommend(rec, query, limit, extra)
                assert len(got) <= limit
                assert all(isinstance(g, str) and type(w) is float for g, w in got)
                assert got == sorted(got, key=lambda t: (-t[1], t[0]))
                assert len({g for g, _ in got}) == len(got)
            assert self.recommend(rec, query, 50, extra)

    def test_smaller_limit_is_a_prefix(self):
        rec = self.make()
        for query, extra in self.queries():
            full = self.recommend(rec, query, 50, extra)
            assert self.recommend(rec, query, 2, extra) == full[:2]

    def test_inputs_are_not_mutated(self):
        rec = self.make()
        for query, extra in self.queries():
            q, e = copy.deepcopy(query), copy.deepcopy(extra)
            self.can_recommend(rec, query, extra)
            self.recommend(rec, query, 5, extra)
            assert (query, extra) == (q, e)

    def test_answers_do_not_depend_on_earlier_queries(self):
        # state a request leaves behind (memos, caches, warnings) must not change later answers
        forward, backward = self.make(), self.make()
        queries = self.queries()
        first = [self.recommend(forward, q, 5, e) for q, e in queries]
        last = [self.recommend(backward, q, 5, e) for q, e in reversed(queries)][::-1]
        assert first == last

    def test_empty_model_cannot_recommend(self):
        rec = self.make_empty()
        for query, extra in self.queries():
            assert not self.can_recommend(rec, query, extra)
            assert self.recommend(rec, query, 5, extra) == []

    def test_negative_limit_is_a_value_error(self):
        rec = self.make()
        query, extra = self.queries()[0]
        with pytest.raises(ValueError, match="limit"):
            self.recommend(rec, query, -1, extra)

    def test_pickle_round_trip_gives_identical_answers(self):
        rec = self.make()
        clone = pickle.loads(pickle.dumps(rec))
        for query, extra in self.queries():
            assert self.recommend(clone, query, 10, extra) == self.recommend(rec, query, 10, extra)


PROFILE_QUERIES = [(toy.profile(), None), (toy.profile(installed_addons=["c-gamma@x"]), {"locale": "de"})]


class TestCollaborativeContract(RecommenderContract):
    def make(self):
        return CollaborativeRecommender().fit(item_matrix=toy.item_matrix(), addon_mapping=toy.addon_mapping())

    def make_empty(self):
        return CollaborativeRecommender().fit()

    def queries(self):
        return PROFILE_QUERIES


class TestSimilarityContract(RecommenderContract):
    def make(self):
        return SimilarityRecommender().fit(donors=toy.DONORS, lr_curves=toy.LR_CURVES)

    def make_empty(self):
        return SimilarityRecommender().fit()

    def queries(self):
        return PROFILE_QUERIES


class TestLocaleContract(RecommenderContract):
    def make(self):
        return LocaleRecommender().fit(locale=toy.LOCALE)

    def make_empty(self):
        return LocaleRecommender().fit()

    def queries(self):
        return PROFILE_QUERIES + [(toy.profile(locale=""), {"locale": "en-US"})]


class TestItemItemContract(RecommenderContract):
    def make(self):
        return ItemItemRecommender().fit(item_item=toy.item_item())

    def make_empty(self):
        return ItemItemRecommender().fit()

    def queries(self):
        return [(toy.profile(installed_addons=["c-gamma@x"]), None),
                (toy.profile(installed_addons=["m-alpha@x", "b-beta@x", "d-delta@x"]), {"locale": "de"})]


class TestEnsembleContract(RecommenderContract):
    def make(self):
        return build_engine(toy.models()).ensemble

    def make_empty(self):
        return EnsembleRecommender().fit()

    def queries(self):
        return PROFILE_QUERIES

    def test_smaller_limit_is_a_prefix(self):
        """Not a prefix: members are asked for limit + len(installed), so scores grow with the limit.

        What holds instead: each weight is the sum of its reported contributions.
        """
        rec = self.make()
        for query, extra in self.queries():
            results, sources = rec.recommend_explained(query, 2, extra)
            assert [w for _, w in results] == pytest.approx([sum(sources[g].values()) for g, _ in results])


class TestGuidBasedContract(RecommenderContract):
    """TAARlite answers a GUID instead of a profile; ``extra`` carries the mode."""

    def make(self):
        return GuidBasedRecommender().fit(coinstall=toy.coinstall(), ranking=toy.RANKING)

    def make_empty(self):
        return GuidBasedRecommender().fit()

    def queries(self):
        return [("a", {"mode": "rownorm_sum"}), ("d", {"mode": "guidception"}), ("c", {"mode": "none"})]

    def can_recommend(self, rec, query, extra):
        return rec.can_recommend(query)

    def recommend(self, rec, query, limit, extra):
        return rec.recommend(query, extra["mode"], limit)

    def test_answers_are_typed_sorted_unique_and_limited(self):
        # TAARlite orders by rounded weight, then installs: check that order instead
        rec = self.make()
        for query, extra in self.queries():
            got = self.recommend(rec, query, 50, extra)
            assert got and all(isinstance(g, str) and type(w) is float for g, w in got)
            keys = [(-round(w, 10), -rec.installs(g), g) for g, w in got]
            assert keys == sorted(keys)
            assert len(self.recommend(rec, query, 1, extra)) == 1
