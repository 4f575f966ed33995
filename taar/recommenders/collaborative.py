"""Collaborative filtering from implicit-ALS item factors (SPEC §5.2).

The ALS job publishes only item factors (``item_matrix``) and the id -> GUID
mapping (``addon_mapping``). A client's vector is the sum of the factors of the
items it has installed, and every item is scored by its dot product with that
vector. Items the client has, and items that are not webextensions, are never
recommended. Scores may be negative.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from taar.artifacts import ArtifactError
from taar.hashing import item_id

from .base import NO_ROWS, RowRecommender, check_limit, guid_ranks, top_indices, top_rows

logger = logging.getLogger(__name__)

#: Scores are provably finite while ``n_installed * score_bound_`` is below this (float max is 1.8e308).
FINITE_SCORES = 1e300


class CollaborativeRecommender(RowRecommender):
    """Scores items by ``M · Σ_{installed} M[j]`` over ALS item factors.

    Attributes
    ----------
    factors_ : ndarray of shape (n_items, k)
        Item factors in ``item_matrix`` file order.
    item_ids_ : ndarray of shape (n_items,)
        23-bit item id of each row.
    row_of_ : dict[int, int]
        Item id -> row.
    row_of_guid_ : dict[str, int]
        Mapped GUID -> row, for GUIDs whose own item id is that row's id (a shortcut
        that saves hashing known GUIDs per request; other GUIDs are hashed).
    guids_ : tuple of str
        GUID of each row (``""`` when the mapping has no entry).
    eligible_ : ndarray of bool, shape (n_items,)
        Row has a mapping entry with ``isWebextension is True`` (first row of a GUID only).
    guid_rank_ : ndarray of int, shape (n_items,)
        Tie-break rank of each row's GUID.
    loaded_ : bool
        Both artifacts were given.

    Examples
    --------
    >>> rec = CollaborativeRecommender().fit(
    ...     item_matrix=[{"id": 1, "features": [1.0]}, {"id": 2, "features": [2.0]}],
    ...     addon_mapping={"1": {"id": "a", "isWebextension": True},
    ...                    "2": {"id": "b", "isWebextension": True}})
    >>> rec.loaded_
    True
    """

    def fit(self, item_matrix=None, addon_mapping=None) -> CollaborativeRecommender:
        """Build the factor matrix and the row metadata; missing artifacts -> cannot recommend."""
        self.loaded_ = item_matrix is not None and addon_mapping is not None
        rows = item_matrix if self.loaded_ else []
        mapping = addon_mapping if self.loaded_ else {}
        k = len(rows[0]["features"]) if rows else 0
        self.factors_ = np.array([r["features"] for r in rows], dtype=np.float64).reshape(len(rows), k)
        self.item_ids_ = np.array([int(r["id"]) for r in rows], dtype=np.int64)
        self.row_of_ = {int(i): j for j, i in enumerate(self.item_ids_.tolist())}
        guids, eligible, seen = [], [], set()
        for i in self.item_ids_.tolist():
            entry = mapping.get(str(i))
            guid = entry.get("id") if isinstance(entry, Mapping) else None
            ok = isinstance(guid, str) and bool(guid) and entry.get("isWebextension") is True
            if ok and guid in seen:
                logger.warning("addon_mapping maps GUID %s to several item ids; keeping the first row", guid)
                ok = False
            if ok:
                seen.add(guid)
            guids.append(guid if isinstance(guid, str) else "")
            eligible.append(ok)
        self.guids_ = tuple(guids)
        self.row_of_guid_ = {g: j for j, g in enumerate(guids)
                             if g and self.row_of_.get(item_id(g)) == j}
        self.eligible_ = np.array(eligible, dtype=bool)
        self.guid_rank_ = guid_ranks(self.guids_)
        self.eligible_rows_ = np.flatnonzero(self.eligible_)
        self.eligible_rank_ = self.guid_rank_[self.eligible_rows_]
        if self.loaded_ and not np.isfinite(self.factors_).all():
            raise ArtifactError("item_matrix", "contains non-finite features")
        # |score| <= k * max|f| * |user|_max and |user|_max <= n_installed * max|f| (plus rounding, a
        # factor 1 + 1e-13 at most): a request whose n_installed * score_bound_ stays below
        # FINITE_SCORES has only finite scores, so an installed row can be ranked last as -inf
        biggest = float(np.abs(self.factors_).max()) if self.factors_.size else 0.0
        self.score_bound_ = k * biggest * biggest
        return self

    def can_recommend(self, profile: Mapping, extra: Mapping | None = None) -> bool:
        return bool(self.loaded_ and profile.get("installed_addons"))

    def installed_rows(self, profile: Mapping) -> np.ndarray:
        """Rows of the client's installed add-ons, looked up by item id (SPEC §5.2 ``R``)."""
        known = self.row_of_guid_
        rows = {known[g] if g in known else self.row_of_.get(item_id(g))
                for g in profile.get("installed_addons") or ()}
        rows.discard(None)
        return np.array(sorted(rows), dtype=np.int64)

    def scores(self, profile: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """``(s, R)``: the score of every row and the installed rows (``s`` empty when R is)."""
        installed = self.installed_rows(profile)
        if installed.size == 0:
            return np.empty(0), installed
        user = self.factors_[installed].sum(axis=0)
        return self.factors_ @ user, installed


    def _scored(self, profile: Mapping, extra: Mapping | None):
        """``(s, R)`` of :meth:`scores` when the client can be scored (R not empty), else None.

        :meth:`can_recommend` and :meth:`scores` inlined (the request path); ``add.reduce``
        is what ``sum`` calls, without its wrapper.
        """
        if not (self.loaded_ and profile.get("installed_addons")):
            return None
        installed = self.installed_rows(profile)
        if installed.size == 0:
            return None
        return self.factors_ @ np.add.reduce(self.factors_[installed], axis=0), installed

    def recommend_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend` as ``(rows, scores)`` arrays (rows index ``candidate_guids_``)."""
        limit = check_limit(limit)
        scored = self._scored(profile, extra)
        if scored is None:
            return NO_ROWS
        s, installed = scored
        # The best limit + len(installed) eligible rows, then the installed ones dropped: the same
        # rows as ranking eligible-minus-installed (eligible GUIDs are distinct, so the order is
        # total), without copying and gathering every row per request.
        everything = self.eligible_rows_.shape[0] == s.shape[0]
        top = top_indices(s if everything else s[self.eligible_rows_], self.eligible_rank_,
                          limit + installed.shape[0])
        rows = top if everything else self.eligible_rows_[top]
        best = _without(rows, installed, s.shape[0])[:limit]
        return best, s[best]

    def candidate_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend_rows` in no particular order: all an ensemble sum needs.

        The best ``limit`` eligible rows that are not installed. When the scores are
        provably finite (see ``score_bound_``) and more than ``limit`` eligible rows
        are not installed, the installed rows score -inf, below every other row, and
        one partition picks the answer. Otherwise the best ``limit + len(installed)``
        eligible rows as a set, the installed ones dropped; only when fewer than
        ``len(installed)`` were dropped are the rest cut to the best ``limit``, as the
        ordered cut of :meth:`recommend_rows`. Both give the same set: eligible GUIDs
        are distinct, so (score descending, GUID ascending) is a total order.
        """
        limit = check_limit(limit)
        scored = self._scored(profile, extra)
        if scored is None:
            return NO_ROWS
        s, installed = scored
        n_installed = installed.shape[0]
        eligible = self.eligible_rows_
        everything = eligible.shape[0] == s.shape[0]
        if limit + n_installed < eligible.shape[0] and n_installed * self.score_bound_ < FINITE_SCORES:
            s[installed] = -np.inf  # s is this request's own array; no returned row is installed
            if everything:
                rows = top_rows(s, self.eligible_rank_, limit)
            else:
                rows = eligible[top_rows(s[eligible], self.eligible_rank_, limit)]
            return rows, s[rows]
        pool = s if everything else s[eligible]
        wanted = limit + n_installed
        if wanted >= pool.shape[0]:
            top = np.arange(pool.shape[0])
        else:
            top = top_rows(pool, self.eligible_rank_, wanted)
        rows = _without(top if everything else eligible[top], installed, s.shape[0])
        if rows.shape[0] > limit:
            rows = rows[top_rows(s[rows], self.guid_rank_[rows], limit)]
        return rows, s[rows]

    def reference_rows(self, profile: Mapping, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Readable form of :meth:`recommend_rows`: rank every eligible, not installed row."""
        s, installed = self.scores(profile)
        if installed.size == 0:
            return NO_ROWS
        candidate = self.eligible_.copy()
        candidate[installed] = False
        rows = np.flatnonzero(candidate)
        best = rows[top_indices(s[rows], self.guid_rank_[rows], limit)]
        return best, s[best]


def _without(rows: np.ndarray, installed: np.ndarray, n_rows: int) -> np.ndarray:
    """``rows`` (indices below ``n_rows``) without the ``installed`` ones, order kept."""
    is_installed = np.zeros(n_rows, dtype=bool)
    is_installed[installed] = True
    return rows[~is_installed[rows]]
