import zlib

import pytest

from taar.hashing import hash_client_id
from taar.profile import (
    ADDON_FIELDS,
    decode_payload,
    encode_payload,
    normalise_profile,
    reference_normalise_profile,
    row_to_payload,
)

pytestmark = pytest.mark.unit

NEW = {"client_id": "h", "geo_city": "Berlin", "subsession_length": 43200, "locale": "de", "os": "Linux",
       "bookmark_count": 30, "tab_open_count": 100, "total_uri": 500, "unique_tlds": 20,
       "active_addons": [{"addon_id": "a@x", "is_system": False}, {"addon_id": "sys@x", "is_system": True},
                         {"addon_id": "b@x"}, {"addon_id": "a@x"}, {"addon_id": ""}, "junk", {"name": "no id"}]}


def test_payload_round_trip_is_zlib_json():
    data = encode_payload(NEW)
    assert decode_payload(data) == NEW
    assert zlib.decompress(data).startswith(b'{"active_addons":')


@pytest.mark.parametrize("bad", [b"nope", zlib.compress(b"[1,2]"), zlib.compress(b"\xff\xfe")])
def test_decode_payload_rejects_garbage(bad):
    with pytest.raises(ValueError):
        decode_payload(bad)


def test_normalise_new_keys():
    p = normalise_profile(NEW, client_id="hashed")
    assert p == {"client_id": "hashed", "geo_city": "Berlin", "locale": "de", "os": "Linux",
                 "subsession_length": 43200.0, "bookmark_count": 30.0, "tab_open_count": 100.0,
                 "total_uri": 500.0, "unique_tlds": 20.0,
                 # system add-on dropped, duplicates removed, empty/malformed ignored, order kept
                 "installed_addons": ["a@x", "b@x"]}


def test_normalise_legacy_keys_with_unit_conversion():
    legacy = {"city": "Rome", "subsession_hours_sum": 1.5, "locale": "it", "os": "Windows_NT",
              "places_bookmarks_count": 7, "scalar_parent_browser_engagement_tab_open_event_count": 3,
              "scalar_parent_browser_engagement_total_uri_count": 9,
              "scalar_parent_browser_engagement_unique_domains_count": 4, "active_addons": []}
    p = normalise_profile(legacy)
    # 1.5 h * 3600 = 5400 s
    assert (p["geo_city"], p["subsession_length"], p["bookmark_count"], p["tab_open_count"],
            p["total_uri"], p["unique_tlds"]) == ("Rome", 5400.0, 7.0, 3.0, 9.0, 4.0)


def test_new_key_wins_over_legacy_unless_null():
    p = normalise_profile({"geo_city": "Paris", "city": "Rome", "subsession_length": None,
                           "subsession_hours_sum": 2})
    assert p["geo_city"] == "Paris" and p["subsession_length"] == 7200.0


def test_defaults_are_reported_and_never_raise():
    seen = []
    p = normalise_profile({"locale": 5, "bookmark_count": float("nan"), "total_uri": True,
                           "active_addons": "x"}, on_default=seen.append)
    assert p["locale"] == "" and p["bookmark_count"] == 0.0 and p["total_uri"] == 0.0
    assert p["installed_addons"] == []
    assert set(seen) >= {"locale", "bookmark_count", "total_uri", "active_addons", "geo_city", "os"}
    assert normalise_profile(None)["installed_addons"] == []


class _StrSub(str):
    pass


#: Values a payload field can hold after json.loads (and a few it cannot), for the fast-path comparison.
HUGE = 2**1100  # above float max: float() raises OverflowError
_FIELD_VALUES = [None, "", "Rome", _StrSub("sub"), 0, -3, 7, HUGE, 0.0, -0.0, 1.5, float("inf"), float("-inf"),
                 float("nan"), True, False, [], {}, "12"]
_ADDON_LISTS = [[], "x", None, {"addon_id": "a"}, ("a",),
                [{"addon_id": "a@x"}, {"addon_id": "a@x", "is_system": True}, {"addon_id": "b@x", "is_system": 1},
                 {"addon_id": ""}, {"addon_id": 5}, {"addon_id": _StrSub("s@x")}, "junk", None, {"name": "n"},
                 {"addon_id": "c@x", "is_system": False}, {"addon_id": "b@x"}, {"addon_id": "s@x"}]]


def _both(payload, client_id=None):
    """(fast, reference) answers with their on_default calls, in call order."""
    out = []
    for fn in (normalise_profile, reference_normalise_profile):
        seen = []
        out.append((fn(payload, client_id, seen.append), seen))
    return out


def _same(a, b):
    """Equal dicts with equal value types (1.0 vs 1 differ); floats by repr (-0.0 apart from 0.0)."""
    assert list(a) == list(b)
    for key in a:
        assert type(a[key]) is type(b[key]), key
        if isinstance(a[key], float):
            assert repr(a[key]) == repr(b[key]), key
        else:
            assert a[key] == b[key], key


def test_normalise_fast_path_matches_reference_field_by_field():
    import itertools

    fields = ("geo_city", "locale", "os", "subsession_length", "bookmark_count", "tab_open_count", "total_uri",
              "unique_tlds")
    cases = overflows = 0
    for field, value in itertools.product(fields, _FIELD_VALUES):
        for addons in _ADDON_LISTS:
            payload = dict(NEW, **{field: value}, active_addons=addons)
            if value is HUGE and field not in ("geo_city", "locale", "os"):  # both paths raise the same
                for fn in (normalise_profile, reference_normalise_profile):
                    with pytest.raises(OverflowError):
                        fn(payload)
                overflows += 1
                continue
            (fast, fast_seen), (ref, ref_seen) = _both(payload, None if cases % 2 else "hashed")
            _same(fast, ref)
            assert fast_seen == ref_seen
            cases += 1
    assert overflows == 5 * len(_ADDON_LISTS)
    assert cases + overflows == len(fields) * len(_FIELD_VALUES) * len(_ADDON_LISTS)


def test_normalise_fast_path_leaves_legacy_and_odd_payloads_to_the_reference():
    from collections import OrderedDict

    legacy = {"city": "Rome", "subsession_hours_sum": 2, "active_addons": [{"addon_id": "a"}]}
    for payload in (legacy, OrderedDict(NEW), None, [], "x", {}):
        (fast, fast_seen), (ref, ref_seen) = _both(payload)
        _same(fast, ref)
        assert fast_seen == ref_seen
    # -0.0 and a finite float are kept as they are; an int becomes its float (both paths)
    p = normalise_profile(dict(NEW, bookmark_count=-0.0, total_uri=2.5, unique_tlds=3))
    assert repr(p["bookmark_count"]) == "-0.0" and p["total_uri"] == 2.5 and repr(p["unique_tlds"]) == "3.0"


def test_row_to_payload_transform():
    addon = {f: None for f in ADDON_FIELDS} | {"addon_id": "a@x", "install_day": 18000}
    row = {"client_id": "raw-id", "city": None, "subsession_hours_sum": 0.5, "locale": "fr", "os": "Darwin",
           "places_bookmarks_count_mean": 2.5, "scalar_parent_browser_engagement_tab_open_event_count_sum": None,
           "scalar_parent_browser_engagement_total_uri_count_sum": 42,
           "scalar_parent_browser_engagement_unique_domains_count_mean": 3.49, "active_addons": [addon]}
    p = row_to_payload(row)
    # 0.5 h -> 1800 s; 2.5 rounds half up to 3 (as Spark's round); 3.49 -> 3; null counters -> 0; null city -> ""
    assert p == {"client_id": hash_client_id("raw-id"), "geo_city": "", "subsession_length": 1800,
                 "locale": "fr", "os": "Darwin", "bookmark_count": 3, "tab_open_count": 0, "total_uri": 42,
                 "unique_tlds": 3, "active_addons": [addon]}
    assert "raw-id" not in str(p)


def test_decode_payload_keeps_the_payload_values():
    payload = dict(NEW, bookmark_count=-0.0, total_uri=2.5)
    decoded = decode_payload(encode_payload(payload))
    assert decoded == payload and repr(decoded["bookmark_count"]) == "-0.0"
