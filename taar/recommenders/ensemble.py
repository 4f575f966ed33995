"""Weighted combination of the per-user recommenders (SPEC §5.5).

Each sub-recommender that can recommend for the profile is asked for
``limit + len(installed)`` results, so that dropping the installed add-ons
afterwards still leaves ``limit``. Scores are multiplied by the recommender's
ensemble weight and summed per GUID. A failing sub-recommender is skipped,
counted (``error_<name>``) and logged with its traceback (``logger.exception``,
which Sentry's logging integration reports); the others still contribute.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from .base import ENSEMBLE_MEMBERS, Recommender, check_limit, incr, sort_pairs, timer

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT = 1.0


def parse_weights(ensemble_weights) -> tuple[dict[str, float], bool]:
    """``(weights, defaulted)`` from the artifact; 1.0 each when it is missing."""
    if ensemble_weights is None:
        return dict.fromkeys(ENSEMBLE_MEMBERS, DEFAULT_WEIGHT), True
    inner = ensemble_weights.get("ensemble_weights", ensemble_weights)
    weights = {}
    for name in ENSEMBLE_MEMBERS:
        value = inner.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"ensemble_weights: weight for {name!r} is not a finite number: {value!r}")
        weights[name] = float(value)
    return weights, False


class EnsembleRecommender(Recommender):
    """Sums ``score × W_r`` over collaborative, similarity and locale.

    Attributes
    ----------
    members_ : tuple of (str, Recommender)
        The sub-recommenders in the fixed order collaborative, similarity, locale.
    weights_ : dict[str, float]
        ``W_r`` per member.
    weights_defaulted_ : bool
        True when no ``ensemble_weights`` artifact was given (1.0 each).
    """

    def fit(self, collaborative=None, similarity=None, locale=None,
            ensemble_weights=None) -> EnsembleRecommender:
        """Keep the fitted sub-recommenders and parse the weights artifact."""
        given = {"collaborative": collaborative, "similarity": similarity, "locale": locale}
        self.members_ = tuple((name, given[name]) for name in ENSEMBLE_MEMBERS if given[name] is not None)
        self.weights_, self.weights_defaulted_ = parse_weights(ensemble_weights)
        return self

    def can_recommend(self, profile: Mapping, extra: Mapping | None = None) -> bool:
        return any(_safe_can_recommend(name, rec, profile, extra) for name, rec in self.members_)

    def recommend(self, profile: Mapping, limit: int, extra: Mapping | None = None,
                  metrics=None) -> list[tuple[str, float]]:
        return self.recommend_explained(profile, limit, extra, metrics)[0]

    def recommend_explained(self, profile: Mapping, limit: int, extra: Mapping | None = None,
                            metrics=None) -> tuple[list[tuple[str, float]], dict[str, dict[str, float]]]:
        """Ensemble results plus each GUID's per-recommender contribution (SPEC §4.5).

        Parameters
        ----------
        profile, limit, extra
            As :meth:`Recommender.recommend`.
        metrics : markus-like, optional
            Receives the ``ensemble_recommend`` and ``<name>_recommend`` timers
            and the ``error_<name>`` counters. Never stored.

        Returns
        -------
        results : list of (str, float)
            At most ``limit`` pairs, score descending, ties GUID ascending.
        sources : dict[str, dict[str, float]]
            For each returned GUID, ``{recommender name: score × W_r}``.
        """
        limit = check_limit(limit)
        installed = profile.get("installed_addons") or ()
        wanted = limit + len(installed)
        totals: dict[str, float] = {}
        sources: dict[str, dict[str, float]] = {}
        with timer(metrics, "ensemble_recommend"):
            for name, rec in self.members_:
                with timer(metrics, f"{name}_recommend"):
                    try:
                        if not rec.can_recommend(profile, extra):
                            continue
                        recs = rec.recommend(profile, wanted, extra)
                    except Exception:
                        logger.exception("ensemble: %s recommender failed; skipped", name)
                        incr(metrics, f"error_{name}")
                        continue
                weight = self.weights_[name]
                for guid, score in recs:
                    contribution = score * weight
                    totals[guid] = totals.get(guid, 0.0) + contribution
                    per_guid = sources.setdefault(guid, {})
                    per_guid[name] = per_guid.get(name, 0.0) + contribution
        for guid in installed:
            totals.pop(guid, None)
        results = sort_pairs(totals.items())[:limit]
        return results, {guid: sources[guid] for guid, _ in results}


def _safe_can_recommend(name, rec, profile, extra) -> bool:
    try:
        return bool(rec.can_recommend(profile, extra))
    except Exception:
        logger.exception("ensemble: %s.can_recommend failed", name)
        return False
