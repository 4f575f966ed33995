"""Fixture models and profiles for the web tests, small enough to work answers out by hand.

Whitelist: six GUIDs ``a@x`` .. ``f@x``.

Per-user (ensemble weights collaborative 1.0, similarity 1.0, locale 0.5):

* collaborative: item factors a=[1,0], b=[0,1], c=[1,1], d=[0.5,0]. A client with
  ``a@x`` installed has u = [1,0], so s = M·u gives c 1.0, d 0.5, b 0.0 (a is
  installed and excluded).
* locale ``en-US``: e 0.6, c 0.4 -> times 0.5: e 0.3, c 0.2.
* similarity: every LR curve point has ratio 1/2 < 1, so ln(LR) < 0 and no donor
  contributes anything.

So :data:`KNOWN` (locale en-US, installed a@x) scores c 1.0 + 0.2 = 1.2, d 0.5,
e 0.3, b 0.0; with ``TAAR_MAX_RESULTS=3`` and no randomisation: [c, d, e].

Item-item (EASE neighbours) over b, c, d only: b -> c 0.5; c -> b 0.5, d 0.2. The
legacy three-key weights give it weight 0, and KNOWN's a@x is not one of its items,
so it changes none of the answers above.

TAARlite: coinstall a-b 10, a-c 8, a-d 6, a-e 4, b-c 2 (symmetric); ranking a 100,
b 50, c 40, d 30, e 20 (mean 48, min-installs m = 0.05 x 48 = 2.4, so the b-c pair
of 2 is filtered out). See the TAARlite tests for the worked answers.
"""

from __future__ import annotations

import copy
import datetime as dt

from taar.hashing import hash_client_id, item_id
from taar.profile import encode_payload
from taar.publishing import publish, publish_group

DATE = dt.date(2024, 3, 10)
#: 12 h after the end of DATE: every model is fresh (limit 48 h).
NOW = dt.datetime(2024, 3, 11, 12, 0, tzinfo=dt.UTC)
PRODUCER = "tests/web"
WHITELIST = ["a@x", "b@x", "c@x", "d@x", "e@x", "f@x"]
FACTORS = {"a@x": [1.0, 0.0], "b@x": [0.0, 1.0], "c@x": [1.0, 1.0], "d@x": [0.5, 0.0]}

KNOWN = hash_client_id("known-client")
KNOWN_DE = hash_client_id("german-client")
UNKNOWN = hash_client_id("nobody")
BROKEN = hash_client_id("undecodable-client")
#: QA may store a profile under a test id; client_has_addon looks it up like any key.
QA_TEST_ID = "7777-7777"


def _models() -> dict:
    return {
        "whitelist": list(WHITELIST),
        "item_matrix": [{"id": item_id(g), "features": f} for g, f in FACTORS.items()],
        "addon_mapping": {str(item_id(g)): {"id": g, "name": g.upper(), "isWebextension": True} for g in FACTORS},
        "locale": {"en-US": [["e@x", 0.6], ["c@x", 0.4]], "de": [["f@x", 1.0]]},
        "donors": [{"geo_city": "Rome", "locale": "it-IT", "os": "Linux", "subsession_length": 3600,
                    "bookmark_count": 1, "tab_open_count": 2, "total_uri": 3, "unique_tlds": 4,
                    "active_addons": ["f@x"]}],
        "lr_curves": [[0.0, [1.0, 2.0]], [10.0, [1.0, 2.0]]],
        "coinstall": {
            "a@x": {"b@x": 10, "c@x": 8, "d@x": 6, "e@x": 4},
            "b@x": {"a@x": 10, "c@x": 2},
            "c@x": {"a@x": 8, "b@x": 2},
            "d@x": {"a@x": 6},
            "e@x": {"a@x": 4},
        },
        "ranking": {"a@x": 100, "b@x": 50, "c@x": 40, "d@x": 30, "e@x": 20},
        "item_item": {"guids": ["b@x", "c@x", "d@x"], "neighbours": [[[1, 0.5]], [[0, 0.5], [2, 0.2]], []],
                      "lambda": 100.0, "top_k": 2},
        "ensemble_weights": {"ensemble_weights": {"collaborative": 1.0, "similarity": 1.0, "locale": 0.5}},
    }


def models() -> dict:
    """A fresh deep copy of every service artifact (tests may change them)."""
    return copy.deepcopy(_models())


def publish_models(store, objs: dict, date: dt.date = DATE) -> None:
    """Publish ``objs`` (any subset of the service artifacts) the way the jobs do."""
    groups = {"collaborative": ("item_matrix", "addon_mapping"), "similarity": ("donors", "lr_curves")}
    for members in groups.values():
        present = {k: objs[k] for k in members if k in objs}
        if present:
            publish_group(store, present, date, PRODUCER)
    for key, obj in objs.items():
        if not any(key in members for members in groups.values()):
            publish(store, key, obj, date, PRODUCER)


def _payload(client_id, locale, installed, system=()):
    addons = [{"addon_id": g, "is_system": False, "type": "extension"} for g in installed]
    addons += [{"addon_id": g, "is_system": True, "type": "extension"} for g in system]
    return {"client_id": client_id, "geo_city": "Berlin", "subsession_length": 7200, "locale": locale,
            "os": "Linux", "bookmark_count": 5, "tab_open_count": 6, "total_uri": 7, "unique_tlds": 8,
            "active_addons": addons}


def profile_rows() -> list[tuple[str, bytes]]:
    """The stored profiles: a known en-US client, a German one, an undecodable row, a QA test id."""
    return [
        (KNOWN, encode_payload(_payload(KNOWN, "en-US", ["a@x"], system=["sys@mozilla.org"]))),
        (KNOWN_DE, encode_payload(_payload(KNOWN_DE, "", ["z@x"]))),
        (BROKEN, b"not zlib at all"),
        (QA_TEST_ID, encode_payload(_payload(QA_TEST_ID, "fr", ["q@x"]))),
    ]
