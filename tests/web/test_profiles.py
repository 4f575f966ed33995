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


class _CallingStore(_Store):
    """A store that groups reads into calls (as Bigtable's): it reports one call per read."""

    on_call = None

    def get(self, key, timeout_s):
        self.on_call()
        return super().get(key, timeout_s)


def test_read_calls_are_counted_and_a_failing_count_never_fails_the_read(caplog, monkeypatch):
    from markus.backends import BackendBase

    from taar.logs import RateLimitedLog
    from taar_web import metrics as metrics_module

    m = _Metrics()
    fetcher = ProfileFetcher(_CallingStore(encode_payload(NEW)), metrics=m)
    assert fetcher.get("k")["client_id"] == "k" and fetcher.get("k") is not None
    assert m.counts[("profile_read_call", ())] == 2

    class Broken(BackendBase):
        def emit(self, record):
            raise OSError("statsd unreachable")

    # outside a request, as the post-fork warm-up reads: the service's Metrics publish at once
    monkeypatch.setattr(metrics_module, "_record_failures", RateLimitedLog(60.0))
    broken = ProfileFetcher(_CallingStore(encode_payload(NEW)), metrics=metrics_module.Metrics([Broken()]))
    for _ in range(3):
        assert broken.get("k")["client_id"] == "k"
    reports = [r for r in caplog.records if "dropped metric" in r.getMessage()]
    assert len(reports) == 1  # rate-limited: one report for three failures
