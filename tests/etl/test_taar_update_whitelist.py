"""taar_update_whitelist: feed parsing, the short-list guard, GUID validation, against the fake AMO."""

import json
import shutil

import pytest

from taar.publishing import read_artifact
from taar.storage import open_model_store
from taar_etl.cli import ValidationError
from taar_etl.taar_update_whitelist import curated_list, editorial_guids, main

pytestmark = pytest.mark.integration

FAST = ["--backoff-base", "0.001", "--backoff-cap", "0.005"]


def curated(synthetic_small):
    """The synthetic curated GUIDs: the editorial entries marked recommended, minus malformed ones."""
    entries = json.loads((synthetic_small.amo / "editorial.json").read_text())["results"]
    return {e["guid"] for e in entries if e["recommended"] and e["guid"]}


def run(tmp_path, url, *extra):
    store = str(tmp_path / "models")
    return main(["--date", "2026-11-20", "--amo-url", url, "--model-store", store, *FAST, *extra]), \
        open_model_store(store)


def test_editorial_guids_drops_malformed_entries_and_duplicates():
    results = [{"addon": {"guid": "b@x"}}, {"addon": {"guid": None}}, {"addon": {"guid": ""}},
               {"addon": {"guid": "null"}}, {"addon": {}}, {}, "junk", {"addon": {"guid": "a@x"}},
               {"addon": {"guid": "b@x"}}]
    assert editorial_guids(results) == ["b@x", "a@x"]
    assert editorial_guids(None) == []


def test_curated_list_is_sorted_and_guards_its_size():
    assert curated_list(["b", "a", "b"], min_size=2, allow_short=False) == ["a", "b"]
    with pytest.raises(ValidationError, match="fewer than --min-size 3"):
        curated_list(["b", "a"], min_size=3, allow_short=False)
    assert curated_list(["b", "a"], min_size=3, allow_short=True) == ["a", "b"]


def test_publishes_the_recommended_guids(tmp_path, fake_amo, synthetic_small):
    code, store = run(tmp_path, fake_amo, "--min-size", "50", "--validate-guids")
    assert code == 0
    whitelist, descriptor = read_artifact(store, "whitelist", date=synthetic_small.end_date)
    assert whitelist == sorted(curated(synthetic_small))
    assert len(whitelist) == 60  # the fixture's --recommended
    assert descriptor.version == "20261120"


def test_without_only_recommended_the_other_editorial_entries_come_too(tmp_path, fake_amo, synthetic_small):
    code, store = run(tmp_path, fake_amo, "--min-size", "50", "--no-only-recommended")
    assert code == 0
    whitelist, _ = read_artifact(store, "whitelist")
    assert set(whitelist) > curated(synthetic_small)


def test_a_short_list_is_refused_unless_allowed(tmp_path, fake_amo):
    code, store = run(tmp_path, fake_amo)  # default --min-size 100 > 60 curated GUIDs
    assert code == 3
    assert store.list() == []
    code, store = run(tmp_path, fake_amo, "--allow-short")
    assert code == 0 and len(read_artifact(store, "whitelist")[0]) == 60


def test_unknown_guids_fail_validation_naming_them(tmp_path, fake_amo_factory, synthetic_small, capsys):
    catalogue = tmp_path / "amo"
    shutil.copytree(synthetic_small.amo, catalogue)
    doc = json.loads((catalogue / "editorial.json").read_text())
    doc["results"].append({"guid": "ghost@nowhere", "recommended": True})
    (catalogue / "editorial.json").write_text(json.dumps(doc))
    server = fake_amo_factory(catalogue_dir=catalogue)
    code, store = run(tmp_path, server.base_url, "--min-size", "50", "--validate-guids")
    assert code == 3
    assert "ghost@nowhere" in capsys.readouterr().out
    assert store.list() == []
    searches = [r for r in server.requests if r["route"] == "search"]
    assert len(searches) == 2  # 61 GUIDs in batches of at most 50


def test_feed_errors_are_retried(tmp_path, fake_amo_factory, synthetic_small):
    server = fake_amo_factory(fail_rate=0.6, seed=5)
    code, store = run(tmp_path, server.base_url, "--min-size", "50", "--retries", "10")
    assert code == 0
    assert server.counters["editorial"] > 1
    assert read_artifact(store, "whitelist")[0] == sorted(curated(synthetic_small))


def test_a_feed_that_keeps_failing_fails_the_job(tmp_path, fake_amo_factory):
    server = fake_amo_factory(fail_rate=1.0)
    code, store = run(tmp_path, server.base_url, "--retries", "1")
    assert code == 1 and server.counters["editorial"] == 2 and store.list() == []
