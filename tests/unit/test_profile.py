import zlib

import pytest

from taar.hashing import hash_client_id
from taar.profile import (
    ADDON_FIELDS,
    decode_payload,
    encode_payload,
    normalise_profile,
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
