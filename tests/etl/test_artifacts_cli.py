"""taar_etl.artifacts_cli: list, show and rollback on a local model store (SPEC §2.10)."""

import datetime as dt
import hashlib
import json

import pytest

from taar import codecs
from taar.publishing import producer_tag, publish, publish_group, read_artifact
from taar.storage import open_model_store
from taar_etl.artifacts_cli import list_artifacts, main, summarise
from tests.fixtures.artifact_samples import group_sample

pytestmark = pytest.mark.unit

D1, D2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)


@pytest.fixture
def store(tmp_path):
    return open_model_store(str(tmp_path / "models"))


def cli(store, *argv):
    return main(["--model-store", store.uri, *argv])


def test_list_reports_every_artifact_with_version_age_size_checksum(store, capsys):
    result = publish(store, "whitelist", ["a@x", "b@x"], D1, producer_tag("test"))
    legacy = json.dumps({"en-US": [["a@x", 1.0]]}).encode()
    store.write_bytes("taar/locale/top10_dict.json", legacy)  # a pre-existing object: plain JSON, no metadata
    updated = store.stat("taar/locale/top10_dict.json").updated
    rows = {r["key"]: r for r in list_artifacts(store, now=updated + dt.timedelta(hours=2))}
    assert len(rows) == 14  # the whole catalogue
    assert rows["whitelist"]["version"] == "20260301" and rows["whitelist"]["sha256"] == result.sha256
    assert rows["whitelist"]["size"] == result.size
    assert rows["locale"] | {"age_hours": None} == {
        "key": "locale", "name": "taar/locale/top10_dict.json", "status": "present", "version": "unknown",
        "age_hours": None, "size": len(legacy), "sha256": hashlib.sha256(legacy).hexdigest()}
    assert rows["locale"]["age_hours"] == 2.0
    assert rows["ranking"]["status"] == "missing"

    assert cli(store, "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["artifact", "version"]
    assert [line.split()[:2] for line in out if line.startswith(("whitelist", "ranking"))] == [
        ["whitelist", "20260301"], ["ranking", "missing"]]
    assert cli(store, "list", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 14


def test_show_summarises_latest_or_dated_copy(store, capsys):
    publish(store, "whitelist", ["a@x", "b@x"], D1, producer_tag("test"))
    publish(store, "whitelist", ["a@x", "b@x", "c@x"], D2, producer_tag("test"))
    assert cli(store, "show", "whitelist") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "20260302" and shown["content"]["entries"] == 3
    assert cli(store, "show", "whitelist", "--date", "20260301") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["uri"].endswith("only_guids_top_200.json.20260301.bz2") and shown["content"]["entries"] == 2
    assert summarise({"b": 1, "a": 2}) == {"type": "object", "entries": 2, "first_keys": ["a", "b"]}


def test_rollback_makes_the_dated_copy_latest(store, capsys):
    publish(store, "whitelist", ["a@x", "b@x"], D1, producer_tag("test"))
    publish(store, "whitelist", ["a@x", "b@x", "c@x"], D2, producer_tag("test"))
    assert cli(store, "rollback", "whitelist", "--date", "2026-03-01") == 0
    assert "was 20260302" in capsys.readouterr().out
    whitelist, descriptor = read_artifact(store, "whitelist")
    assert whitelist == ["a@x", "b@x"] and descriptor.version == "20260301"


def test_rolling_back_a_member_rolls_back_its_group(store):
    old = group_sample("collaborative")
    new = group_sample("collaborative")
    new["item_matrix"][0]["features"] = [9.0, 9.0]
    publish_group(store, old, D1, producer_tag("test"))
    publish_group(store, new, D2, producer_tag("test"))
    assert cli(store, "rollback", "item_matrix", "--date", "2026-03-01") == 0
    assert read_artifact(store, "item_matrix")[0] == old["item_matrix"]
    assert read_artifact(store, "addon_mapping")[1].version == "20260301"


def test_an_invalid_dated_copy_is_refused_and_latest_kept(store, capsys):
    publish(store, "whitelist", ["a@x", "b@x"], D2, producer_tag("test"))
    store.write_bytes("addon_recommender/only_guids_top_200.json.20260301.bz2", codecs.encode(["b@x", "a@x"]))
    assert cli(store, "rollback", "whitelist", "--date", "2026-03-01") == 3
    assert "not sorted" in capsys.readouterr().err
    assert read_artifact(store, "whitelist")[1].version == "20260302"


def test_missing_copies_and_unknown_keys(store):
    assert cli(store, "rollback", "whitelist", "--date", "2026-03-01") == 1
    assert cli(store, "show", "ranking") == 1
    assert cli(store, "show", "no_such_model") == 2
    with pytest.raises(SystemExit) as info:
        cli(store, "rollback", "whitelist")  # --date is required
    assert info.value.code == 2
