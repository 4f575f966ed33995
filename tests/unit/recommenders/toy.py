"""Small hand-checkable models and profiles shared by the recommender tests.

Every number the tests assert on is derived by hand, in a comment next to the
assertion, from the data below.
"""

from __future__ import annotations

import copy

from taar import artifacts
from taar.hashing import item_id

# ---------------------------------------------------------------- collaborative
# GUIDs deliberately not in file order alphabetically, so GUID tie-breaks show.
COLLAB_ROWS = [
    # guid,        factors,   isWebextension
    ("m-alpha@x", [1.0, 0.0], True),
    ("b-beta@x", [0.0, 1.0], True),
    ("c-gamma@x", [1.0, 1.0], True),
    ("d-delta@x", [2.0, -1.0], True),
    ("e-eps@x", [-1.0, 2.0], False),  # not a webextension: never recommended
]


def item_matrix():
    return [{"id": item_id(g), "features": f} for g, f, _ in COLLAB_ROWS]


def addon_mapping():
    return {str(item_id(g)): {"id": g, "name": g, "isWebextension": w} for g, _, w in COLLAB_ROWS}


# ---------------------------------------------------------------- similarity
# The client: Rome / it-IT / Linux, continuous [3600, 0, 4, 100, 5].
CLIENT_FEATURES = {
    "geo_city": "Rome", "locale": "it-IT", "os": "Linux",
    "subsession_length": 3600.0, "bookmark_count": 0.0, "tab_open_count": 4.0,
    "total_uri": 100.0, "unique_tlds": 5.0,
}


def _donor(city, locale, os, x, addons):
    keys = ("subsession_length", "bookmark_count", "tab_open_count", "total_uri", "unique_tlds")
    return {"geo_city": city, "locale": locale, "os": os, **dict(zip(keys, x, strict=True)),
            "active_addons": addons}


DONORS = [
    # 1 categorical difference (os): hamming 1/3; canberra 0 (bookmark 0/0 counts 0)
    # dist = 0.001 * 1/3 = 0.000333 -> nearest x = 0.0 -> LR 3/1
    _donor("Rome", "it-IT", "Windows_NT", [3600, 0, 4, 100, 5], ["A@x", "B@x"]),
    # 2 differences: hamming 2/3; canberra |3600-10800|/14400 = 0.5
    # dist = 0.501 * 2/3 = 0.334 -> |0.334-0.2| = 0.134 < |0.334-0.5| = 0.166 -> x = 0.2 -> LR 2/1
    _donor("Paris", "fr-FR", "Linux", [10800, 0, 4, 100, 5], ["B@x", "C@x"]),
    # identical: hamming 0 -> dist 0 -> x = 0.0 -> LR 3
    _donor("Rome", "it-IT", "Linux", [3600, 0, 4, 100, 5], ["A@x"]),
    # 3 differences: hamming 1; canberra 1+0+1+1+1 = 4 (bookmark 0/0 -> 0)
    # dist = 4.001 -> beyond the last point -> clamps to x = 3.0 -> LR 8/1
    _donor("Berlin", "de-DE", "Darwin", [0, 0, 0, 0, 0], ["zz@x", "dd@x"]),
    # 2 differences: canberra 0.5 + |100-150|/250 = 0.7; dist = 0.701 * 2/3 = 0.4673 -> x = 0.5
    # -> LR 1/2 < 1: no vote
    _donor("Rome", "fr-FR", "Darwin", [10800, 0, 4, 150, 5], ["E@x"]),
    # 3 differences: canberra 0.5 + |4-12|/16 = 1.0; dist = 1.001 -> x = 1.0 -> denominator 0: skipped
    _donor("Oslo", "nb-NO", "Darwin", [10800, 0, 12, 100, 5], ["F@x"]),
]

LR_CURVES = [
    [0.0, [3.0, 1.0]],
    [0.2, [2.0, 1.0]],
    [0.5, [1.0, 2.0]],
    [1.0, [1.0, 0.0]],
    [3.0, [8.0, 1.0]],
]

# ---------------------------------------------------------------- locale
LOCALE = {
    "en-US": [["us1@x", 0.5], ["us2@x", 0.3], ["us3@x", 0.2]],
    "en-GB": [["gb1@x", 0.6], ["gb2@x", 0.4]],
    "pt": [["pt1@x", 1.0]],
    "pt-BR": [["br1@x", 1.0]],
    "de-AT": [["at1@x", 1.0]],
    "de-CH": [["ch1@x", 1.0]],
    "de-DE": [["de1@x", 1.0]],
    "fr-CA": [["ca1@x", 1.0]],
    "fr-BE": [["be1@x", 1.0]],
    "it-IT": [["it1@x", 0.9], ["B@x", 0.4]],  # the similarity client's locale
}

# ---------------------------------------------------------------- item-item (EASE neighbours)
# Row i lists [column, B_ij]: what installing guids[i] adds to each neighbour's score.
# m-alpha (toy.profile()'s add-on) is not an item, so the default client gets nothing here.
ITEM_ITEM_GUIDS = ["b-beta@x", "c-gamma@x", "d-delta@x", "us1@x"]
ITEM_ITEM_ROWS = [
    [[1, 0.5], [3, -0.2]],  # b-beta: c-gamma +0.5, us1 -0.2
    [[0, 0.4], [2, 0.3], [3, 0.3]],  # c-gamma: b-beta +0.4, d-delta +0.3, us1 +0.3
    [[1, 0.6]],  # d-delta: c-gamma +0.6
    [],  # us1: reaches nothing
]


def item_item():
    return {"guids": list(ITEM_ITEM_GUIDS), "neighbours": copy.deepcopy(ITEM_ITEM_ROWS), "lambda": 100.0,
            "top_k": 3}


# ---------------------------------------------------------------- TAARlite
# Symmetric co-installation counts on five GUIDs:
#   a-b 40, a-c 20, a-d 10, a-e 2, b-c 10, c-d 6, d-e 4
_PAIRS = {("a", "b"): 40, ("a", "c"): 20, ("a", "d"): 10, ("a", "e"): 2,
          ("b", "c"): 10, ("c", "d"): 6, ("d", "e"): 4}


def coinstall():
    out: dict[str, dict[str, int]] = {}
    for (x, y), c in _PAIRS.items():
        out.setdefault(x, {})[y] = c
        out.setdefault(y, {})[x] = c
    return out


# mean = (200 + 100 + 60 + 30 + 10) / 5 = 80 -> min installs m = 0.05 * 80 = 4
RANKING = {"a": 200, "b": 100, "c": 60, "d": 30, "e": 10}

WHITELIST = ["b-beta@x", "c-gamma@x", "d-delta@x", "m-alpha@x", "us1@x", "us2@x"]

# Legacy three-key weights: item_item loads with weight 0 (SPEC §2.8).
ENSEMBLE_WEIGHTS = {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 2.0}}


def raw_models() -> dict:
    """Every service artifact, as a job would publish them."""
    return {
        "whitelist": list(WHITELIST),
        "item_matrix": item_matrix(),
        "addon_mapping": addon_mapping(),
        "item_item": item_item(),
        "locale": copy.deepcopy(LOCALE),
        "donors": copy.deepcopy(DONORS),
        "lr_curves": copy.deepcopy(LR_CURVES),
        "coinstall": coinstall(),
        "ranking": dict(RANKING),
        "ensemble_weights": copy.deepcopy(ENSEMBLE_WEIGHTS),
    }


def models(**overrides) -> dict:
    """Every service artifact passed through ``taar.artifacts.normalise``."""
    raw = raw_models()
    raw.update(overrides)
    return {k: artifacts.normalise(k, v) for k, v in raw.items() if v is not None}


def profile(**overrides) -> dict:
    """A normalised profile (SPEC §3.4) with the similarity client's features."""
    base = {"client_id": "f0" * 32, **CLIENT_FEATURES, "installed_addons": ["m-alpha@x"]}
    base.update(overrides)
    return base


class RecordingMetrics:
    """A markus-like metrics object that remembers what it was sent."""

    def __init__(self):
        self.counters: dict[str, int] = {}
        self.timings: list[str] = []

    def incr(self, name, value=1, tags=None):
        self.counters[name] = self.counters.get(name, 0) + value

    def timing(self, name, ms):
        self.timings.append(name)


class StubRecommender:
    """A recommender returning fixed pairs (or raising), recording the limits it was asked for."""

    def __init__(self, pairs=(), can=True, error=None):
        self.pairs = list(pairs)
        self.can = can
        self.error = error
        self.limits: list[int] = []

    def can_recommend(self, profile, extra=None):
        return self.can

    def recommend(self, profile, limit, extra=None):
        self.limits.append(limit)
        if self.error is not None:
            raise self.error
        return self.pairs[:limit]
