import pytest

from taar.profile import encode_payload
from taar_web.profiles import ProfileFetcher

pytestmark = pytest.mark.unit

NEW = {"client_id": "h", "geo_city": "Berlin", "subsession_length": 43200, "locale": "de", "os": "Linux",
       "bookmark_count": 30, "tab_open_count": 100, "total_uri": 500, "unique_tlds": 20,
       "active_addons": [{"addon_id": "a@x", "is_system": False}, {"addon_id": "sys@x", "is_system": True},
                         {"addon_id": "b@x"}, {"addon_id": "a@x"}, {"addon_id": ""}, "junk", {"name": "no id"}]}


class _Store:
    def __init__(self, result):
        self.result = result

    def get(self, key, timeout_s):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class _Metrics:
    def __init__(self):
        self.counts = {}

    def incr(self, name, value=1, tags=None):
        key = (name, tuple(tags or ()))
        self.counts[key] = self.counts.get(key, 0) + value


def test_fetcher_outcomes_are_counted():
    from taar.storage import ProfileTimeout

    m = _Metrics()
    assert ProfileFetcher(_Store(None), metrics=m).get("k") is None
    assert ProfileFetcher(_Store(ProfileTimeout("slow")), metrics=m).get("k") is None
    assert ProfileFetcher(_Store(RuntimeError("down")), metrics=m).get("k") is None
    assert ProfileFetcher(_Store(b"garbage"), metrics=m).get("k") is None
    found = ProfileFetcher(_Store(encode_payload(NEW)), metrics=m).get("k")
    assert found["client_id"] == "k" and found["installed_addons"] == ["a@x", "b@x"]
    assert m.counts[("profile_not_found", ())] == 1
    assert m.counts[("profile_timeout", ())] == 1
    assert m.counts[("profile_error", ())] == 2
