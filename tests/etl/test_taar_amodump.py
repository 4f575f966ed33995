"""taar_amodump against the fake AMO server (SPEC §7.6, §8.1), plus its pure helpers."""

import datetime as dt
import json

import pytest

from taar.publishing import read_artifact
from taar.storage import open_model_store
from taar_etl import amo
from taar_etl.taar_amodump import Crawler, allowed_missing, first_create_date, is_complete, main

pytestmark = pytest.mark.integration

FAST = ["--backoff-base", "0.001", "--backoff-cap", "0.005", "--progress-interval", "0.2"]


def catalogue(synthetic_small):
    return json.loads((synthetic_small.amo / "catalogue.json").read_text())["addons"]


def expected_db(synthetic_small, api="v5"):
    """GUID -> oldest version's file time for what a v4/v5 crawl for D must return."""
    end = dt.datetime.combine(synthetic_small.end_date + dt.timedelta(days=1), dt.time(), dt.UTC)
    return {
        a["guid"]: a["versions"][0]["file"]["created"]  # versions are listed oldest first in the catalogue
        for a in catalogue(synthetic_small)
        if a["listed"] and a["type"] == "extension" and (api == "v4" or a["is_webextension"])
        and amo.parse_time(a["created"]) < end
    }


def run_dump(tmp_path, url, *extra, date="2026-11-20"):
    store = str(tmp_path / "models")
    code = main(["--date", date, "--amo-url", url, "--model-store", store, *FAST, *extra])
    return code, open_model_store(store)


@pytest.mark.parametrize("api", ["v5", "v4"])
def test_full_crawl_equals_the_catalogue(tmp_path, fake_amo, synthetic_small, api):
    code, store = run_dump(tmp_path, fake_amo, "--api-version", api)
    assert code == 0
    db, descriptor = read_artifact(store, "amo_database", date=synthetic_small.end_date)
    expected = expected_db(synthetic_small, api)
    assert set(db) == set(expected)
    assert {g: r["first_create_date"] for g, r in db.items()} == expected
    assert all(r["guid"] == g for g, r in db.items()) and descriptor.version == "20261120"
    if api == "v4":  # v4 also lists legacy add-ons, and says so in the first file
        assert any(not amo.is_webextension(r) for r in db.values())


def test_a_crawl_past_the_result_window_is_partitioned_and_complete(tmp_path, fake_amo_factory, synthetic_small):
    server = fake_amo_factory(max_window=60)
    code, store = run_dump(tmp_path, server.base_url, "--max-window", "60", "--page-size", "20")
    assert code == 0
    db, _ = read_artifact(store, "amo_database", date=synthetic_small.end_date)
    assert set(db) == set(expected_db(synthetic_small))
    searches = [r for r in server.requests if r["route"] == "search"]
    assert any("created__gte" in r["query"] for r in searches)  # the query was split by creation date
    assert all(r["status"] == 200 for r in searches)  # and no page ran into the window (400)


def test_injected_500_503_429_are_retried(tmp_path, fake_amo_factory, synthetic_small):
    server = fake_amo_factory(fail_rate=0.3, seed=3)
    code, store = run_dump(tmp_path, server.base_url, "--workers", "4")
    assert code == 0
    assert all(server.counters[s] > 0 for s in (500, 503, 429))
    db, _ = read_artifact(store, "amo_database", date=synthetic_small.end_date)
    assert set(db) == set(expected_db(synthetic_small))


def test_a_crawl_that_stays_incomplete_fails_and_publishes_nothing(tmp_path, fake_amo_factory, capsys):
    server = fake_amo_factory(truncate_pages=1.0)  # every page silently loses a fifth of its results
    code, store = run_dump(tmp_path, server.base_url)
    assert code == 1
    assert "incomplete crawl" in capsys.readouterr().out  # the job logs JSON lines to stdout
    assert store.list() == []


def test_persistent_server_errors_fail_and_publish_nothing(tmp_path, fake_amo_factory):
    server = fake_amo_factory(fail_rate=1.0)
    code, store = run_dump(tmp_path, server.base_url, "--retries", "2")
    assert code == 1
    assert server.counters["search"] == 3  # the first request, tried 1 + 2 times, then the job stops
    assert store.list() == []


def test_vanished_addons_are_dropped_within_the_allowance(fake_amo, synthetic_small):
    # Records from a v4 crawl include legacy add-ons, which the v5 versions endpoint answers with 404:
    # they stand in for add-ons removed between the search and the versions requests.
    v4 = Crawler(amo.AmoClient(fake_amo, "v4", amo.RetryPolicy(base_s=0.001, cap_s=0.005)))
    records = v4.crawl(dt.datetime(2026, 11, 21, tzinfo=dt.UTC))
    legacy = {g for g, r in records.items() if not amo.is_webextension(r)}
    assert legacy
    share = len(legacy) / len(records)
    client = amo.AmoClient(fake_amo, "v5", amo.RetryPolicy(base_s=0.001, cap_s=0.005))
    lenient = Crawler(client, max_missing_versions=share + 0.01).add_first_create_dates(records)
    assert set(lenient) == set(records) - legacy
    with pytest.raises(Exception, match="no version data"):
        Crawler(client, max_missing_versions=share / 2).add_first_create_dates(records)


def test_completeness_slack():
    # slack = max(2, ceil(tolerance * count)): count 1000 -> max(2, 1) = 2; count 5000 -> max(2, 5) = 5
    assert allowed_missing(1000, 0.001) == 2 and allowed_missing(5000, 0.001) == 5
    assert is_complete(998, 1000, 0.001) and not is_complete(997, 1000, 0.001)
    assert is_complete(4995, 5000, 0.001) and not is_complete(4994, 5000, 0.001)
    assert is_complete(0, 2, 0.001)


def test_first_create_date_prefers_the_oldest_version_file():
    record = {"guid": "a@x", "created": "2015-01-01T00:00:00Z"}
    assert first_create_date(record, {"file": {"created": "2016-02-03T04:05:06+00:00"}}) == "2016-02-03T04:05:06Z"
    assert first_create_date(record, {"files": [], "created": "2016-01-01T00:00:00Z"}) == "2016-01-01T00:00:00Z"
    assert first_create_date(record, None) == "2015-01-01T00:00:00Z"  # no listed version: the add-on's own
    assert first_create_date({"guid": "b@x"}, None) is None


def test_bad_flags_are_usage_errors(tmp_path):
    code, _ = run_dump(tmp_path, "http://127.0.0.1:9", "--page-size", "51")
    assert code == 2


def test_bounded_map_limits_concurrency_and_stops_at_the_first_error():
    import threading
    import time

    from taar_etl.parallel import bounded_map

    running, peak, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        if i == 5:
            raise ValueError("item 5")
        return i * i

    assert sorted(bounded_map(work, [1, 2, 3, 4], workers=3)) == [1, 4, 9, 16]
    started = []

    def items():
        for i in range(1000):
            started.append(i)
            yield i

    with pytest.raises(ValueError, match="item 5"):
        list(bounded_map(work, items(), workers=2, in_flight=4))
    assert peak[0] <= 3 and len(started) < 20  # items are drawn lazily and the rest are never submitted


def test_progress_logs_at_most_once_per_interval(caplog):
    import logging

    from taar_etl.parallel import Progress

    now = [0.0]
    progress = Progress("pages", total=10, interval_s=3.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="taar_etl.parallel"):
        for _ in range(10):
            now[0] += 1.0
            progress.advance()
        progress.finish()
    # clock 1..10 s: logs when 3 s have passed since the last log, i.e. at 3, 6 and 9 s, then the final line
    assert [r.fields["done"] for r in caplog.records] == [3, 6, 9, 10]
    assert caplog.records[0].fields["eta_s"] == 7.0  # 7 pages left at 1 page/s
