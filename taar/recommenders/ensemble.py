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
from bisect import bisect_right
from collections.abc import Mapping
from itertools import accumulate

import numpy as np

from taar.artifacts import LEGACY_MISSING_WEIGHTS, ArtifactError

from .base import (
    ENSEMBLE_MEMBERS,
    Recommender,
    ascending_order,
    check_limit,
    incr,
    sort_pairs,
    timer,
    top_indices,
)

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
    """Sums ``score × W_r`` over the members named in ``ENSEMBLE_MEMBERS``.

    Scoring is dense: ``fit`` builds one candidate index, the sorted union of
    every member's ``candidate_guids_`` (so an index is also the GUID tie-break
    rank), and a per-member array mapping its rows to that index. A request
    adds each member's ``recommend_rows`` answer into one float array and ranks
    it with numpy; the sums are the same float operations, in the same member
    order, as the per-GUID dictionary of SPEC §5.5, so results are identical.
    A member without ``candidate_guids_``/``recommend_rows`` (or non-finite
    totals) falls back to that dictionary combine.

    Attributes
    ----------
    members_ : tuple of (str, Recommender)
        The sub-recommenders in the fixed ``ENSEMBLE_MEMBERS`` order.
    weights_ : dict[str, float]
        ``W_r`` per member.
    weights_defaulted_ : bool
        True when no ``ensemble_weights`` artifact was given (1.0 each).
    guids_ : tuple of str
        The dense candidate index (ascending GUIDs); empty when not dense.
    rows_to_index_ : dict[str, ndarray]
        Per member, the candidate index of each of its rows.
    dense_ : bool
        Every member supports the dense path.
    """

    def fit(self, ensemble_weights=None, **members) -> EnsembleRecommender:
        """Keep the fitted sub-recommenders (keyword per ``ENSEMBLE_MEMBERS`` name) and parse the weights."""
        unknown = set(members) - set(ENSEMBLE_MEMBERS)
        if unknown:
            raise ValueError(f"unknown ensemble members: {', '.join(sorted(unknown))}")
        self.members_ = tuple((name, members[name]) for name in ENSEMBLE_MEMBERS if members.get(name) is not None)
        self.weights_, self.weights_defaulted_ = parse_weights(ensemble_weights)
        self.dense_ = all(hasattr(rec, "candidate_guids_") and hasattr(rec, "recommend_rows")
                          for _, rec in self.members_)
        guids = sorted({g for _, rec in self.members_ for g in rec.candidate_guids_}) if self.dense_ else []
        self.guids_ = tuple(guids)
        self.index_of_ = {g: i for i, g in enumerate(guids)}
        self.rows_to_index_ = {
            name: np.array([self.index_of_[g] for g in rec.candidate_guids_], dtype=np.int64)
            for name, rec in self.members_
        } if self.dense_ else {}
        # what a dense request reads per member, looked up once here rather than per request
        self.dense_members_ = tuple(
            (name, rec, self.rows_to_index_[name], self.weights_[name], f"{name}_recommend",
             hasattr(rec, "candidate_rows"))
            for name, rec in self.members_) if self.dense_ else ()
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
        return results, self.contributions(answers, [g for g, _ in results])

    def _ask(self, name, rec, profile, wanted, extra, metrics, dense: bool, timer_name=None,
             unordered: bool = False):
        """One member's answer (rows and scores, or pairs), or None when it cannot or fails.

        ``unordered``: the member has ``candidate_rows`` (the rows of ``recommend_rows`` in
        any order, empty when it cannot recommend), which is all a dense sum needs.
        """
        with timer(metrics, timer_name or f"{name}_recommend"):
            try:
                if unordered:
                    return rec.candidate_rows(profile, wanted, extra)
                if not rec.can_recommend(profile, extra):
                    return None
                if dense:
                    return rec.recommend_rows(profile, wanted, extra)
                return rec.recommend(profile, wanted, extra)
            except Exception:
                self._failed(name, metrics)
                return None

    @staticmethod
    def _failed(name, metrics) -> None:
        """A member raised: log it with its traceback (inside the ``except``) and count it."""
        logger.exception("ensemble: %s recommender failed; skipped", name)
        incr(metrics, f"error_{name}")

    def combine(self, profile: Mapping, limit: int, extra: Mapping | None = None,
                metrics=None) -> tuple[list[tuple[str, float]], list[tuple]]:
        """Ensemble results plus the raw member answers, for explaining only what is kept.

        The manager samples ``limit`` of a pool of hundreds; building contributions
        for the whole pool would cost more than the recommendation itself, so it
        calls :meth:`contributions` on the chosen GUIDs only.

        Returns
        -------
        results : list of (str, float)
            As :meth:`recommend_explained`.
        answers : list of tuple
            ``(member name, W_r, candidate indices, scores)`` for each member that
            answered (``(name, W_r, {guid: score})`` on the dictionary path).
        """
        limit = check_limit(limit)
        ranked = self.ranked(profile, limit, extra, metrics)
        if ranked is None:
            installed = profile.get("installed_addons") or ()
            return self._combine_dict(profile, limit, extra, metrics, installed, limit + len(installed))
        best, values, answers = ranked
        results = list(zip(map(self.guids_.__getitem__, best.tolist()), values.tolist(), strict=True))
        return results, answers

    def ranked(self, profile: Mapping, limit: int, extra: Mapping | None = None, metrics=None):
        """:meth:`combine` on the dense path as arrays, or None when the dictionary path applies.

        Returns
        -------
        best : ndarray of int
            Candidate indices (into ``guids_``) of the ``limit`` best totals, score
            descending, ties GUID ascending (an index is the GUID rank).
        values : ndarray of float
            Their totals, all finite.
        answers : list of tuple
            As :meth:`combine` (dense form).

        The service's manager samples from these arrays directly, so a request
        never builds a ``(guid, weight)`` pair for the hundreds of pool entries it
        does not return.
        """
        if not self.dense_:
            return None
        limit = check_limit(limit)
        installed = profile.get("installed_addons") or ()
        wanted = limit + len(installed)
        with timer(metrics, "ensemble_recommend"):
            answers = DenseAnswers()
            for name, rec, to_index, weight, timer_name, unordered in self.dense_members_:
                if unordered:  # _ask's candidate_rows branch, without a call per member
                    with timer(metrics, timer_name):
                        try:
                            rows, scores = rec.candidate_rows(profile, wanted, extra)
                        except Exception:
                            self._failed(name, metrics)
                            continue
                else:
                    answer = self._ask(name, rec, profile, wanted, extra, metrics, True, timer_name)
                    if answer is None:
                        continue
                    rows, scores = answer
                if rows.shape[0] == 0:
                    continue
                answers.append((name, weight, to_index[rows], scores))
            if not answers:
                return NO_RANKING[0], NO_RANKING[1], answers
            answers.seal()
            n = len(self.guids_)
            # bincount adds each GUID's terms one by one from 0.0 in the order given, member order:
            # the additions of SPEC §5.5's per-GUID sum (a member's rows are distinct, one term each)
            totals = np.bincount(answers.index, weights=answers.weighted, minlength=n)
            touched = np.zeros(n, dtype=bool)
            touched[answers.index] = True
            index_of = self.index_of_
            for guid in installed:
                i = index_of.get(guid)
                if i is not None:
                    touched[i] = False
            candidates = touched.nonzero()[0]  # ascending: GUID order
            values = totals[candidates]
            if values.shape[0] <= SORT_ALL * limit:
                # ascending candidates sorted by -total, equal totals by position: total descending,
                # ties GUID ascending, the order top_indices gives; cheaper than its partition
                # while the pool is most of the candidates
                keys = np.negative(values)
                everything = keys.argsort()
                # the sort puts -inf first and +inf, then NaN, last: finite ends mean finite totals
                if everything.shape[0] and not (keys[everything[0]] > -np.inf and keys[everything[-1]] < np.inf):
                    return None  # overflowed scores: the exact dictionary semantics
                order = ascending_order(keys, limit, everything)
            else:
                if not np.isfinite(values).all():  # as above
                    return None
                order = top_indices(values, candidates, limit)
        return candidates[order], values[order], answers

    def _combine_dict(self, profile, limit, extra, metrics, installed, wanted):
        """SPEC §5.5 with a per-GUID dictionary (members without the dense interface)."""
        answers = []
        with timer(metrics, "ensemble_recommend"):
            for name, rec in self.members_:
                recs = self._ask(name, rec, profile, wanted, extra, metrics, dense=False)
                if recs is not None:
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

    def contributions(self, answers, guids, indices=None) -> dict[str, dict[str, float]]:
        """``{guid: {member name: score × W_r}}`` for ``guids``, from :meth:`combine` answers.

        On the dense path the members' candidate indices are searched in one
        concatenated pass (a few GUIDs among hundreds of rows); the hits come out in
        member order, so each GUID's dictionary has the same key order as a loop over
        the members would give. ``indices``, when given, are the GUIDs' candidate
        indices (``index_of_[g]``, as the manager has them already).
        """
        if not answers or len(answers[0]) == 3:
            return contributions(answers, guids)
        out: dict[str, dict[str, float]] = {g: {} for g in guids}
        if not out:
            return out
        if not isinstance(answers, DenseAnswers):
            answers = DenseAnswers(answers)
        answers.seal()
        wanted = np.zeros(len(self.guids_), dtype=bool)
        wanted[[self.index_of_[g] for g in guids] if indices is None else indices] = True
        index = answers.index
        hit = wanted[index].nonzero()[0]
        if not hit.shape[0]:
            return out
        names, ends, guid_of = answers.names, answers.ends, self.guids_
        for position, i, value in zip(hit.tolist(), index[hit].tolist(), answers.weighted[hit].tolist(),
                                      strict=True):
            out[guid_of[i]][names[bisect_right(ends, position)]] = value  # answer k: positions < ends[k]
        return out


#: Rank the whole candidate pool with one stable sort while it holds at most this many times the
#: entries wanted (a speed choice only: both ways give the same order).
SORT_ALL = 3

NO_RANKING = (np.empty(0, dtype=np.int64), np.empty(0))


class DenseAnswers(list):
    """The dense path's member answers ``(name, W_r, candidate indices, scores)``, a list as before,
    plus their concatenation once :meth:`seal` is called (the sum and the explanations both read it).

    Attributes (after :meth:`seal`)
    -------------------------------
    index : ndarray of int
        Every answer's candidate indices, member after member.
    weighted : ndarray of float
        ``score × W_r`` alongside (the contribution of SPEC §4.5, computed once).
    ends : list of int
        Answer k holds the positions below ``ends[k]``.
    names : list of str
        Each answer's member name.
    """

    sealed = False

    def seal(self) -> None:
        """Concatenate the answers (once; the list is not changed afterwards)."""
        if self.sealed:
            return
        if len(self) == 1:
            _, weight, self.index, scores = self[0]
            self.weighted = scores * weight
        else:
            self.index = np.concatenate([a[2] for a in self])
            # x * 1.0 is x, bit for bit: a member of weight 1 needs no product
            self.weighted = np.concatenate([a[3] if a[1] == 1.0 else a[3] * a[1] for a in self])
        self.ends = list(accumulate(a[2].shape[0] for a in self))
        self.names = [a[0] for a in self]
        self.sealed = True


def contributions(answers, guids) -> dict[str, dict[str, float]]:
    """``{guid: {member name: score × W_r}}`` from dictionary-path answers ``(name, W_r, {guid: score})``."""
    return {guid: {name: scores[guid] * weight for name, weight, scores in answers if guid in scores}
            for guid in guids}


def _safe_can_recommend(name, rec, profile, extra) -> bool:
    try:
        return bool(rec.can_recommend(profile, extra))
    except Exception:
        logger.exception("ensemble: %s.can_recommend failed", name)
        return False
