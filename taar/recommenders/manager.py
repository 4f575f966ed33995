"""Per-request orchestration: test ids, profile lookup, ensemble, selection (SPEC §5.7).

:class:`RecommendationManager` turns a validated hashed client id into a
:class:`Recommendation`. It holds an :class:`~taar.recommenders.engine.Engine`
(read-only) and a profile fetcher. Randomness comes only from the per-request
seed: a fresh 63-bit seed from ``os.urandom`` unless the caller fixes one, so a
logged seed replays a response exactly.

Pickling drops the profile fetcher (it holds a client connection): an unpickled
manager still answers test ids, and raises RuntimeError for a profile lookup.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from taar.hashing import is_test_id

from .base import check_limit, incr, sort_pairs, timer
from .randomizer import sample_positions, weighted_sample

logger = logging.getLogger(__name__)

#: Pool size per requested result when no whitelist is loaded (SPEC §5.7.2).
POOL_PER_RESULT = 10


def fresh_seed() -> int:
    """A 63-bit non-negative seed from ``os.urandom``."""
    return int.from_bytes(os.urandom(8), "big") >> 1


@dataclass(frozen=True)
class Recommendation:
    """The answer for one client.

    Attributes
    ----------
    results : list of (str, float)
        Chosen ``(guid, weight)`` pairs, weight descending, ties GUID ascending.
    sources : dict[str, dict[str, float]]
        Per returned GUID, its contributions: ``{"collaborative": c, ...}`` from
        the ensemble, or ``{"test": w}`` for test ids.
    seed : int
        The RNG seed used (replaying it reproduces ``results``).
    is_test : bool
        The id was a test id (whitelist-based answer, no profile read).
    unknown_client : bool
        No profile was found (or it could not be read).
    """

    results: list[tuple[str, float]] = field(default_factory=list)
    sources: dict[str, dict[str, float]] = field(default_factory=dict)
    seed: int = 0
    is_test: bool = False
    unknown_client: bool = False

    @property
    def guids(self) -> list[str]:
        """Just the GUIDs of ``results``."""
        return [g for g, _ in self.results]


class RecommendationManager:
    """Recommends for one hashed client id against one engine.

    Parameters
    ----------
    engine : Engine
        Fitted recommenders (see :func:`taar.recommenders.engine.build_engine`).
    profile_fetcher : object with ``get(hashed_id) -> profile | None``, or None
        Usually :class:`taar_web.profiles.ProfileFetcher`. Dropped on pickling.
    randomize : bool, default True
        Weighted sampling (``TAAR_RANDOMIZE``) instead of plain top-N.
    candidate_pool : int, default 0
        ``TAAR_CANDIDATE_POOL``; 0 means ``len(whitelist)``, or ``10 × limit``
        without a whitelist.
    """

    def __init__(self, engine, profile_fetcher=None, *, randomize: bool = True, candidate_pool: int = 0):
        if isinstance(candidate_pool, bool) or not isinstance(candidate_pool, int) or candidate_pool < 0:
            raise ValueError(f"candidate_pool must be a non-negative int, got {candidate_pool!r}")
        self.engine = engine
        self.profile_fetcher = profile_fetcher
        self.randomize = randomize
        self.candidate_pool = candidate_pool

    def __getstate__(self):
        state = self.__dict__.copy()
        state["profile_fetcher"] = None  # holds a store client
        return state

    def _fetcher(self):
        if self.profile_fetcher is None:
            raise RuntimeError("RecommendationManager has no profile fetcher (dropped on pickling)")
        return self.profile_fetcher

    def pool_size(self, limit: int) -> int:
        """``N`` of SPEC §5.7.2."""
        if self.candidate_pool > 0:
            return self.candidate_pool
        if self.engine.whitelist:
            return len(self.engine.whitelist)
        return POOL_PER_RESULT * limit

    def select(self, candidates, limit: int, rng: np.random.Generator) -> list[tuple[str, float]]:
        """SPEC §5.7.3: weighted sample or top ``limit``, returned weight desc, ties GUID asc."""
        if self.randomize:
            return weighted_sample(candidates, limit, rng)
        return sort_pairs(candidates)[:limit]

    def select_ranked(self, guids, index: np.ndarray, weights: np.ndarray, limit: int,
                      rng: np.random.Generator | None) -> list[tuple[str, float]]:
        """:meth:`select` over a ranked pool given as arrays (the ensemble's dense path).

        ``index`` and ``weights`` are ordered weight descending, ties GUID ascending,
        with finite weights; ``guids[index[i]]`` is entry i's GUID. The answer equals
        ``select([(guids[i], w) for i, w in zip(index, weights)], limit, rng)``: the
        same uniforms go to the same positions, and only the chosen pairs are built.
        The pool is already in result order, so the chosen positions, sorted, are the
        result's order. ``rng`` is only read when ``randomize`` is on and the pool
        holds more than ``limit`` entries (else every entry is chosen, whatever the keys).
        """
        return self._select_ranked(guids, index, weights, limit, rng)[0]

    def _select_ranked(self, guids, index, weights, limit, rng) -> tuple[list[tuple[str, float]], list[int]]:
        """:meth:`select_ranked` and the chosen candidate indices (what the explanations look up)."""
        if self.randomize and weights.shape[0] > limit:
            chosen = sample_positions(weights, limit, rng, descending=True)
            chosen.sort()
            index, weights = index[chosen], weights[chosen]
        else:
            index, weights = index[:limit], weights[:limit]
        indices = index.tolist()
        return list(zip(map(guids.__getitem__, indices), weights.tolist(), strict=True)), indices

    def recommend(self, client_id: str, limit: int, extra: Mapping | None = None, seed: int | None = None,
                  metrics=None) -> Recommendation:
        """Recommend up to ``limit`` add-ons for ``client_id``.

        Parameters
        ----------
        client_id : str
            A validated lowercase hashed client id, or a test id (SPEC §5.7.1).
        limit : int
            Maximum number of results (``TAAR_MAX_RESULTS``).
        extra : Mapping, optional
            Request options (``locale``, ``platform``), passed to the recommenders.
        seed : int, optional
            RNG seed; ``None`` draws a fresh 63-bit seed.
        metrics : markus-like, optional
            Receives ``test_client``, the ``profile_recommendation`` timer and the
            ensemble's timers and error counters.
        """
        limit = check_limit(limit)
        seed = fresh_seed() if seed is None else int(seed)
        if is_test_id(client_id):
            return self._recommend_test(client_id, limit, seed, self._generator(seed), metrics)
        with timer(metrics, "profile_recommendation"):
            profile = self._fetcher().get(client_id)
            if profile is None:
                return Recommendation([], {}, seed, False, True)
            ensemble = self.engine.ensemble
            pool_size = self.pool_size(limit)
            ranked = ensemble.ranked(profile, pool_size, extra, metrics)
            if ranked is None:  # the dictionary combine: may hold non-finite totals
                pool, answers = ensemble.combine(profile, pool_size, extra, metrics)
                pool = [(g, w) for g, w in pool if math.isfinite(w)]
                results = self.select(pool, limit, self._generator(seed))
                sources = ensemble.contributions(answers, [g for g, _ in results])
            else:
                index, weights, answers = ranked
                # the generator only when uniforms are drawn (building one costs as much as sampling)
                rng = self._generator(seed) if weights.shape[0] > limit else None
                results, indices = self._select_ranked(ensemble.guids_, index, weights, limit, rng)
                sources = ensemble.contributions(answers, [g for g, _ in results], indices)
        # DEBUG: the service puts the GUIDs and seed on its one request.summary line instead
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Client recommendations results", extra={
                "client_id": client_id, "guids": [g for g, _ in results], "seed": seed,
                "model_versions": self.engine.model_versions})
        return Recommendation(results, sources, seed, False, False)

    def _generator(self, seed: int) -> np.random.Generator | None:
        """The request's generator; None when nothing is sampled (``randomize`` off): building one costs."""
        return np.random.Generator(np.random.PCG64(seed)) if self.randomize else None

    def _recommend_test(self, client_id, limit, seed, rng, metrics) -> Recommendation:
        incr(metrics, "test_client")
        logger.debug("Test ID detected", extra={"client_id": client_id, "seed": seed})
        results = self.select(list(self.engine.test_candidates), limit, rng)
        return Recommendation(results, {g: {"test": w} for g, w in results}, seed, True, False)
