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

from taar.artifacts import LEGACY_MISSING_WEIGHTS, ArtifactError

from .base import ENSEMBLE_MEMBERS, Recommender, check_limit, incr, sort_pairs, timer

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT = 1.0


def parse_weights(ensemble_weights) -> tuple[dict[str, float], bool]:
    """``(weights, defaulted)`` from the artifact; 1.0 each when it is missing.

    A legacy three-member object (no ``item_item``) gives the missing member weight 0 (SPEC §2.8).
    """
    if ensemble_weights is None:
        return dict.fromkeys(ENSEMBLE_MEMBERS, DEFAULT_WEIGHT), True
    inner = ensemble_weights.get("ensemble_weights", ensemble_weights)
    weights = {}
    for name in ENSEMBLE_MEMBERS:
        value = inner.get(name, LEGACY_MISSING_WEIGHTS.get(name))
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ArtifactError("ensemble_weights", f"weight for {name!r} is not a finite number: {value!r}")
        weights[name] = float(value)
    return weights, False


class EnsembleRecommender(Recommender):
    """Sums ``score × W_r`` over collaborative, similarity, locale and item_item.

    Attributes
    ----------
    members_ : tuple of (str, Recommender)
        The sub-recommenders in the fixed order of ``ENSEMBLE_MEMBERS``.
    weights_ : dict[str, float]
        ``W_r`` per member.
    weights_defaulted_ : bool
        True when no ``ensemble_weights`` artifact was given (1.0 each).
    """

    def fit(self, collaborative=None, similarity=None, locale=None, item_item=None,
            ensemble_weights=None) -> EnsembleRecommender:
        """Keep the fitted sub-recommenders and parse the weights artifact."""
        given = {"collaborative": collaborative, "similarity": similarity, "locale": locale, "item_item": item_item}
        self.members_ = tuple((name, given[name]) for name in ENSEMBLE_MEMBERS if given[name] is not None)
        self.weights_, self.weights_defaulted_ = parse_weights(ensemble_weights)
        return self

    def can_recommend(self, profile: Mapping, extra: Mapping | None = None) -> bool:
        return any(_safe_can_recommend(name, rec, profile, extra) for name, rec in self.members_)

    def recommend(self, profile: Mapping, limit: int, extra: Mapping | None = None,
                  metrics=None) -> list[tuple[str, float]]:
        return self.combine(profile, limit, extra, metrics)[0]

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
        results, answers = self.combine(profile, limit, extra, metrics)
        return results, contributions(answers, [g for g, _ in results])

    def combine(self, profile: Mapping, limit: int, extra: Mapping | None = None,
                metrics=None) -> tuple[list[tuple[str, float]], list[tuple[str, float, dict[str, float]]]]:
        """Ensemble results plus the raw member answers, for explaining only what is kept.

        The manager samples ``limit`` of a pool of hundreds; building contributions
        for the whole pool would cost more than the recommendation itself, so it
        calls :func:`contributions` on the chosen GUIDs only.

        Returns
        -------
        results : list of (str, float)
            As :meth:`recommend_explained`.
        answers : list of (str, float, dict[str, float])
            ``(member name, W_r, {guid: score})`` for each member that answered.
        """
        limit = check_limit(limit)
        installed = profile.get("installed_addons") or ()
        wanted = limit + len(installed)
        answers = []
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
                answers.append((name, self.weights_[name], dict(recs)))
            totals: dict[str, float] = {}
            get = totals.get
            for _, weight, scores in answers:
                for guid, score in scores.items():
                    totals[guid] = get(guid, 0.0) + score * weight
            for guid in installed:
                totals.pop(guid, None)
            results = sort_pairs(totals.items())[:limit]
        return results, answers


def contributions(answers, guids) -> dict[str, dict[str, float]]:
    """``{guid: {member name: score × W_r}}`` for ``guids``, from :meth:`EnsembleRecommender.combine` answers."""
    return {guid: {name: scores[guid] * weight for name, weight, scores in answers if guid in scores}
            for guid in guids}


def _safe_can_recommend(name, rec, profile, extra) -> bool:
    try:
        return bool(rec.can_recommend(profile, extra))
    except Exception:
        logger.exception("ensemble: %s.can_recommend failed", name)
        return False
