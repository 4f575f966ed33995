"""taar_profile_bigtable opt-out guarantees (SPEC §8.5): each scenario ends without the opted-out row.

Scenarios of issue 12: a failed load, a 35-day gap between runs, a missing
``deletion_request`` partition, a backfill of an earlier date. Each runs on SQLite
and on the real Bigtable emulator (``profile_store_uri``), on a hand-built Parquet
source: ``clients_last_seen`` at D with the clients ``keep`` and ``gone``, and one
``deletion_request`` partition per day (empty on days without requests).
"""

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taar.hashing import hash_client_id
from taar.storage import open_model_store, open_profile_store
from taar.storage.bigtable_profiles import BigtableProfileStore
from taar.storage.sqlite_profiles import SQLiteProfileStore
from taar_dev.telemetry_schema import FILE_SCHEMAS
from taar_etl.taar_profile_bigtable import DELETE_MARKER, delete_window, main, read_last_delete
from tests.fixtures.parquet_builders import addon, client_row, write_table

pytestmark = pytest.mark.integration

D = dt.date(2026, 11, 20)
KEEP, GONE = hash_client_id("keep"), hash_client_id("gone")
OLD_MS = 1_795_219_200_000 - 7 * 86_400_000  # a week before the end of D: "loaded last week"


def days(start, end):
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def write_source(root, requests, first, last, skip=()):
    """``clients_last_seen`` at D and ``deletion_request`` partitions for every day of [first, last] but ``skip``;
    ``requests`` maps a day to the client ids asking for deletion that day."""
    write_table(root, "clients_last_seen", [client_row(c, D, [addon("a@x")]) for c in ("keep", "gone")])
    for day in days(first, last):
        if day in skip:
            continue
        ids = requests.get(day, [])
        ts = [dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)] * len(ids)
        folder = root / "deletion_request" / f"submission_date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({"submission_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                          "client_id": pa.array(ids, pa.string())}, schema=FILE_SCHEMAS["deletion_request"])
        pq.write_table(table, folder / "part-00000.parquet")
    return str(root)


def argv(source, etl, uri, *extra):
    return ["--date", D.isoformat(), "--source", source, "--etl-store", str(etl), "--profile-store", uri,
            "--retry-backoff", "0.001", "--progress-interval", "0.5", *extra]


@pytest.fixture
def store(profile_store_uri):
    """The profile store with both clients loaded last week."""
    s = open_profile_store(profile_store_uri)
    s.ensure_table()
    s.put_many([(KEEP, b"keep, last week"), (GONE, b"gone, last week")], OLD_MS)
    yield s
    if hasattr(s, "close"):
        s.close()


def test_delete_window_covers_the_gap_since_the_last_delete():
    assert delete_window(D, 29, None) == (D - dt.timedelta(days=29), D)
    assert delete_window(D, 29, D - dt.timedelta(days=1)) == (D - dt.timedelta(days=29), D)  # no gap
    assert delete_window(D, 29, D - dt.timedelta(days=35)) == (D - dt.timedelta(days=34), D)  # the day after


def test_a_failed_load_still_deletes_and_cleans_up(tmp_path, store, profile_store_uri, monkeypatch, capsys):
    source = write_source(tmp_path / "src", {D - dt.timedelta(days=1): ["gone"]}, D - dt.timedelta(days=29), D)

    def broken(self, rows, ts_ms):
        raise OSError("disk on fire")

    monkeypatch.setattr(SQLiteProfileStore, "put_many", broken)
    monkeypatch.setattr(BigtableProfileStore, "put_many", broken)
    etl = tmp_path / "etl"
    assert main(argv(source, etl, profile_store_uri, "--write-retries", "0")) == 1
    assert "disk on fire" in capsys.readouterr().out
    assert store.get(GONE, 5.0) is None  # delete-opt-outs ran after the failed load
    assert store.get(KEEP, 5.0) == b"keep, last week"  # the load really failed
    assert [p.name for p in (etl / "taar_profile" / "20261120").iterdir()] == []  # staging cleaned up
    assert read_last_delete(str(etl)) == D


def test_a_35_day_gap_loses_no_deletion(tmp_path, store, profile_store_uri):
    # gone asked on D - 33: outside the usual window [D - 29, D], inside the gap since a delete on D - 35
    source = write_source(tmp_path / "src", {D - dt.timedelta(days=33): ["gone"]}, D - dt.timedelta(days=40), D)
    etl = tmp_path / "etl"
    marker = open_model_store(str(etl))

    def last_delete(day):
        marker.write_bytes(DELETE_MARKER, json.dumps({"through": day.isoformat()}).encode())

    last_delete(D - dt.timedelta(days=1))  # control: no gap, the usual window does not reach D - 33
    assert main(argv(source, etl, profile_store_uri, "--steps", "delete-opt-outs")) == 0
    assert store.get(GONE, 5.0) == b"gone, last week"
    last_delete(D - dt.timedelta(days=35))  # the last delete ran 35 days ago
    assert main(argv(source, etl, profile_store_uri, "--steps", "delete-opt-outs")) == 0
    assert store.get(GONE, 5.0) is None and store.get(KEEP, 5.0) == b"keep, last week"
    recorded = json.loads(marker.read_bytes(DELETE_MARKER))
    assert recorded["through"] == "2026-11-20" and recorded["window_start"] == "2026-10-17"  # D - 34


def test_a_missing_partition_fails_the_step_until_it_arrives(tmp_path, store, profile_store_uri, capsys):
    missing = D - dt.timedelta(days=3)
    root = tmp_path / "src"
    source = write_source(root, {}, D - dt.timedelta(days=29), D, skip={missing})
    etl = tmp_path / "etl"
    for steps in ("delete-opt-outs", "extract"):
        assert main(argv(source, etl, profile_store_uri, "--steps", steps)) == 1
        assert "missing partitions of deletion_request: 2026-11-17" in capsys.readouterr().out
    assert read_last_delete(str(etl)) is None  # the marker did not move
    # The partition lands, holding gone's request: the next run deletes the row.
    write_source(root, {missing: ["gone"]}, missing, missing)
    assert main(argv(source, etl, profile_store_uri, "--steps", "delete-opt-outs")) == 0
    assert store.get(GONE, 5.0) is None and store.get(KEEP, 5.0) == b"keep, last week"


def test_a_backfill_never_writes_back_a_later_opt_out(tmp_path, store, profile_store_uri):
    run_date = D + dt.timedelta(days=10)
    source = write_source(tmp_path / "src", {D + dt.timedelta(days=5): ["gone"]}, D - dt.timedelta(days=29),
                          run_date)
    store.delete_many([GONE])  # deleted on D + 5; the backfill of D must not bring it back
    # (a) extract and load of D on run date D + 10
    etl = tmp_path / "etl"
    assert main(argv(source, etl, profile_store_uri, "--steps", "extract,load", "--run-date",
                     run_date.isoformat())) == 0
    assert store.get(GONE, 5.0) is None and store.get(KEEP, 5.0) not in (None, b"keep, last week")
    # (b) staging extracted before the request existed (run date D stages gone), loaded on D + 10
    etl_b = tmp_path / "etl-b"
    assert main(argv(source, etl_b, profile_store_uri, "--steps", "extract")) == 0
    assert json.loads((etl_b / "taar_profile" / "20261120" / "_manifest.json").read_text())["rows"] == 2
    assert main(argv(source, etl_b, profile_store_uri, "--steps", "load", "--run-date", run_date.isoformat())) == 0
    assert store.get(GONE, 5.0) is None


def test_a_run_date_before_d_is_a_usage_error(tmp_path, profile_store_uri):
    source = write_source(tmp_path / "src", {}, D - dt.timedelta(days=29), D)
    assert main(argv(source, tmp_path / "etl", profile_store_uri, "--run-date", "2026-11-19")) == 2
