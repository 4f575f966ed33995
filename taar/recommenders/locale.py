"""Per-locale most popular add-ons (SPEC §5.4).

The locale job publishes, for each locale seen in telemetry, the top add-ons
with differentially private weights. A client gets the list of its own locale;
when that exact key is absent the language alone is tried, then a sibling
locale of the same language (``de-DE`` for any ``de-*``, else the smallest key).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

import numpy as np

from .base import Recommender, check_limit, sort_pairs

logger = logging.getLogger(__name__)

#: What a requested locale must look like (SPEC §4.2); anything else is ignored.
LOCALE_PATTERN = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")  # use with fullmatch
_SEPARATOR = re.compile(r"[-_]")


def language_subtag(locale: str) -> str:
    """Text before the first ``-`` or ``_``, lowercased (``pt-BR`` -> ``pt``)."""
    return _SEPARATOR.split(locale, maxsplit=1)[0].lower()


def requested_locale(profile: Mapping, extra: Mapping | None) -> str | None:
    """The profile locale when non-empty, else a valid ``extra["locale"]``, else None."""
    value = profile.get("locale")
    if isinstance(value, str) and value:
        return value
    value = (extra or {}).get("locale")
    if isinstance(value, str) and LOCALE_PATTERN.fullmatch(value):
        return value
    return None


class LocaleRecommender(Recommender):
    """Returns the top add-ons of the client's (resolved) locale.

    Attributes
    ----------
    top_ : dict[str, tuple of (str, float)]
        Locale key -> entries sorted by weight descending, ties GUID ascending,
        duplicates removed.
    keys_by_language_ : dict[str, tuple of str]
        Language subtag -> locale keys with that subtag, ascending.
    loaded_ : bool
    """

    def fit(self, locale=None) -> LocaleRecommender:
        """Sort and index the locale lists; a missing artifact -> cannot recommend."""
        self.loaded_ = bool(locale)
        top, by_language = {}, {}
        for key, rows in (locale or {}).items():
            if not isinstance(key, str) or not key:
                continue
            best: dict[str, float] = {}
            for guid, weight in rows:
                w = float(weight)
                if isinstance(guid, str) and guid and math.isfinite(w) and w > best.get(guid, -math.inf):
                    best[guid] = w
            if best:
                top[key] = tuple(sort_pairs(best.items()))
                by_language.setdefault(language_subtag(key), []).append(key)
        self.top_ = top
        # the dense form the ensemble reads: rows into candidate_guids_ and their weights
        self.candidate_guids_ = tuple(sorted({g for entries in top.values() for g, _ in entries}))
        row = {g: i for i, g in enumerate(self.candidate_guids_)}
        self.top_rows_ = {key: (np.array([row[g] for g, _ in entries], dtype=np.int64),
                                np.array([w for _, w in entries], dtype=np.float64))
                          for key, entries in top.items()}
        self.keys_by_language_ = {lang: tuple(sorted(keys)) for lang, keys in by_language.items()}
        return self

    def resolve(self, locale: str | None) -> str | None:
        """The model key used for a requested locale (SPEC §5.4 steps 1-4), or None."""
        if not locale or not self.loaded_:
            return None
        if locale in self.top_:  # 1. exact key
            return locale
        lang = language_subtag(locale)
        if lang in self.top_:  # 2. the bare language key
            return lang
        siblings = self.keys_by_language_.get(lang)
        if not siblings:  # 4. nothing for this language
            return None
        canonical = f"{lang}-{lang.upper()}"  # 3. de-DE, pt-PT..., else the smallest key
        return canonical if canonical in self.top_ else siblings[0]

    def can_recommend(self, profile: Mapping, extra: Mapping | None = None) -> bool:
        return self.resolve(requested_locale(profile, extra)) is not None

    def recommend_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend` as ``(rows, weights)`` arrays (rows index ``candidate_guids_``)."""
        limit = check_limit(limit)
        key = self.resolve(requested_locale(profile, extra))
        if key is None:
            return np.empty(0, dtype=np.int64), np.empty(0)
        rows, weights = self.top_rows_[key]
        return rows[:limit], weights[:limit]

    def candidate_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend_rows` (empty when it cannot recommend): what the ensemble asks."""
        return self.recommend_rows(profile, limit, extra)

    def recommend(self, profile: Mapping, limit: int, extra: Mapping | None = None) -> list[tuple[str, float]]:
        limit = check_limit(limit)
        key = self.resolve(requested_locale(profile, extra))
        if key is None:
            return []
        return list(self.top_[key][:limit])
