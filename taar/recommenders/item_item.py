"""Closed-form item-item recommender (EASE) over the curated add-ons (SPEC §5.8).

The ``item_item`` artifact holds, for each catalogue item (GUID order), its
strongest neighbours ``[column, weight]``: row i of the EASE weight matrix ``B``
cut to its top-k absolute weights. A client's scores are ``x_u · B``: item j
scores ``Σ_{i ∈ installed} B[i, j]``. Only items that one of the client's
installed catalogue items reaches are candidates; installed items are never
recommended. Scores may be negative. The model is optional: without it (or
with an invalid one) the recommender simply cannot recommend.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .base import NO_ROWS, RowRecommender, check_limit, guid_ranks, top_indices, top_rows


class ItemItemRecommender(RowRecommender):
    """Scores items by summing the EASE neighbour weights of the installed add-ons.

    Attributes
    ----------
    guids_ : tuple of str
        Item GUID per row/column.
    row_of_ : dict[str, int]
        GUID -> row.
    indptr_, indices_, weights_ : ndarray
        The neighbour lists in CSR form: row i's columns are
        ``indices_[indptr_[i]:indptr_[i + 1]]`` with ``weights_`` alongside.
    row_indices_, row_weights_ : tuple of ndarray
        Those slices, row by row (views, made once by ``fit``).
    guid_rank_ : ndarray of int
        Tie-break rank of each GUID.
    loaded_ : bool
        The artifact was given.

    Examples
    --------
    >>> rec = ItemItemRecommender().fit(item_item={
    ...     "guids": ["a", "b"], "neighbours": [[[1, 0.5]], []], "lambda": 1.0, "top_k": 1})
    >>> rec.recommend({"installed_addons": ["a"]}, 5)
    [('b', 0.5)]
    """

    def fit(self, item_item=None) -> ItemItemRecommender:
        """Build the CSR neighbour arrays; a missing artifact -> cannot recommend."""
        self.loaded_ = item_item is not None
        guids = list(item_item["guids"]) if self.loaded_ else []
        rows = item_item["neighbours"] if self.loaded_ else []
        self.guids_ = tuple(guids)
        self.row_of_ = {g: i for i, g in enumerate(guids)}
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        self.indptr_ = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.indices_ = np.array([int(j) for r in rows for j, _ in r], dtype=np.int64)
        self.weights_ = np.array([float(w) for r in rows for _, w in r], dtype=np.float64)
        self.guid_rank_ = guid_ranks(self.guids_)
        # (start, end) of each row as Python ints: a request slices without numpy scalar indexing
        bounds = self.indptr_.tolist()
        self.row_bounds_ = tuple(zip(bounds[:-1], bounds[1:], strict=True))
        # each row's columns and weights as ready-made slices: a request only picks them
        self.row_indices_ = tuple(self.indices_[a:b] for a, b in self.row_bounds_)
        self.row_weights_ = tuple(self.weights_[a:b] for a, b in self.row_bounds_)
        return self

    def installed_rows(self, profile: Mapping) -> np.ndarray:
        """Rows of the client's installed add-ons that are catalogue items, ascending."""
        return np.array(self._installed(profile), dtype=np.int64)

    def _installed(self, profile: Mapping) -> list[int]:
        """:meth:`installed_rows` as a list (empty exactly when ``can_recommend`` is False, if loaded)."""
        rows = {self.row_of_.get(g) for g in profile.get("installed_addons") or ()}
        rows.discard(None)
        return sorted(rows)

    def can_recommend(self, profile: Mapping, extra: Mapping | None = None) -> bool:
        return bool(self.loaded_ and any(g in self.row_of_ for g in profile.get("installed_addons") or ()))

    def scores(self, profile: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(s, reached, installed)``: each item's score, whether any installed item reaches it, installed rows."""
        return self._scores(self._installed(profile))

    def _scores(self, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`scores` for the installed rows ``rows`` (ascending)."""
        n = len(self.guids_)
        installed = np.array(rows, dtype=np.int64)
        if not rows:
            return np.zeros(n), np.zeros(n, dtype=bool), installed
        cols = np.concatenate([self.row_indices_[i] for i in rows])
        s = np.bincount(cols, weights=np.concatenate([self.row_weights_[i] for i in rows]), minlength=n)
        reached = np.zeros(n, dtype=bool)
        reached[cols] = True
        return s, reached, installed

    def recommend_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend` as ``(rows, scores)`` arrays (rows index ``candidate_guids_``)."""
        limit = check_limit(limit)
        if not self.can_recommend(profile, extra):
            return NO_ROWS
        s, reached, installed = self.scores(profile)
        reached[installed] = False
        rows = np.flatnonzero(reached)
        best = rows[top_indices(s[rows], self.guid_rank_[rows], limit)]
        return best, s[best]

    def candidate_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend_rows` in row order (unsorted by score): all an ensemble sum needs."""
        limit = check_limit(limit)
        installed = self._installed(profile) if self.loaded_ else None
        if not installed:  # what can_recommend says, from the rows the scores need anyway
            return NO_ROWS
        s, reached, installed = self._scores(installed)
        reached[installed] = False
        rows = reached.nonzero()[0]
        if rows.shape[0] > limit:
            rows = rows[top_rows(s[rows], self.guid_rank_[rows], limit)]
        return rows, s[rows]

