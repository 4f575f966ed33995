"""taar_profile_bigtable: pure transforms, the steps on SQLite and on the real Bigtable emulator, the Spark twin."""

import datetime as dt
import json
import pickle
import shutil
import warnings

import pyarrow.compute as pc
import pytest

from taar.hashing import hash_client_id
from taar.profile import decode_payload, normalise_profile, row_to_payload
from taar.storage import ProfileWriteError, open_profile_store
from taar.storage.bigtable_profiles import BigtableProfileStore, gc_rule
from taar.storage.sqlite_profiles import SQLiteProfileStore
from taar_etl import sources
from taar_etl.cli import JobFailed
from taar_etl.taar_profile_bigtable import (
    EXTRACT_COLUMNS,
    BatchWriter,
    Staging,
    end_of_day_ms,
    main,
    profile_rows,
    sample_bucket,
    spark_sample_bucket,
)
from taar_web.profiles import ProfileFetcher
from tests.fixtures.spark import py_xxhash

pytestmark = pytest.mark.integration

D = dt.date(2026, 11, 20)
# End of D = 2026-11-21T00:00Z. 2026-01-01 is 56*365 + 14 leap days = 20454 days after the epoch; January to
# October add 31+28+31+30+31+30+31+31+30+31 = 304 and November 1 -> 21 adds 20: 20778 days * 86400 s * 1000.
TS_MS = 1_795_219_200_000
FAST = ["--retry-backoff", "0.001", "--progress-interval", "0.5"]


def addon(addon_id, **extra):
    return {"addon_id": addon_id, "is_system": False, "type": "extension", **extra}


ONE_ADDON = (addon("a@x"),)


def source_row(client_id, app_name="Firefox", addons=ONE_ADDON):
    return {"client_id": client_id, "app_name": app_name, "city": "Berlin", "locale": "de", "os": "Linux",
            "subsession_hours_sum": 1.5, "places_bookmarks_count_mean": 2.5,
            "scalar_parent_browser_engagement_tab_open_event_count_sum": 7,
            "scalar_parent_browser_engagement_total_uri_count_sum": None,
            "scalar_parent_browser_engagement_unique_domains_count_mean": 3.4,
            "active_addons": list(addons) if addons is not None else None}


# --------------------------------------------------------------------------- pure parts


def test_end_of_day_stamp():
    assert end_of_day_ms(D) == TS_MS


def test_profile_rows_keeps_firefox_clients_with_addons_not_opted_out():
    rows = [source_row("keep"), source_row(None), source_row("fennec", app_name="Fennec"),
            source_row("none", addons=()), source_row("null", addons=None), source_row("gone")]
    out = list(profile_rows(rows, seed=42, sample_rate=1.0, opted_out={"gone"}))
    assert [key for key, _ in out] == [hash_client_id("keep")]
    payload = decode_payload(out[0][1])
    assert payload == row_to_payload(rows[0])
    # 1.5 h -> 5400 s; bookmarks 2.5 -> 3 (half away from zero); null counter -> 0; 3.4 -> 3
    assert (payload["subsession_length"], payload["bookmark_count"], payload["total_uri"],
            payload["unique_tlds"]) == (5400, 3, 0, 3)
    assert "keep" not in out[0][1].decode("latin-1")  # only the hashed id is stored


def test_sampling_is_deterministic_and_nested():
    ids = [f"client-{i}" for i in range(4000)]
    kept = {rate: {c for c in ids if sample_bucket(42, c) < rate * 1_000_000} for rate in (0.1, 0.5, 1.0)}
    assert kept[0.1] <= kept[0.5] <= kept[1.0] == set(ids)
    assert 300 < len(kept[0.1]) < 500 and 1800 < len(kept[0.5]) < 2200  # 400 and 2000 expected
    assert [sample_bucket(42, c) for c in ids[:50]] == [py_xxhash(42, c) % 1_000_000 for c in ids[:50]]
    assert [sample_bucket(7, c) for c in ids[:20]] != [sample_bucket(42, c) for c in ids[:20]]
    rows = [source_row(c) for c in ids[:200]]
    sampled = {k for k, _ in profile_rows(rows, 42, 0.5, set())}
    assert sampled == {hash_client_id(c) for c in ids[:200] if c in kept[0.5]}


def test_batch_writer_retries_a_failed_batch(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    open_profile_store(uri).ensure_table()
    real, calls = SQLiteProfileStore.put_many, []

    def flaky(self, rows, ts_ms):
        calls.append(1)
        if len(calls) <= 2:
            raise ProfileWriteError(len(rows), len(rows))
        return real(self, rows, ts_ms)

    monkeypatch.setattr(SQLiteProfileStore, "put_many", flaky)
    rows = [(f"k{i}", b"p") for i in range(5)]
    assert BatchWriter(uri, TS_MS, batch_size=5, parallelism=1, retries=3, backoff_s=0.001).put(rows) == 5
    assert len(calls) == 3
    with pytest.raises(JobFailed, match="after 1 retries"):
        calls.clear()
        BatchWriter(uri, TS_MS, batch_size=5, parallelism=1, retries=1, backoff_s=0.001).put(rows)


def test_batch_writer_pickles_and_writes_the_same(tmp_path):
    rows = [(hash_client_id(str(i)), bytes([i])) for i in range(7)]
    uris = [f"sqlite:///{tmp_path / name}" for name in ("a.sqlite3", "b.sqlite3")]
    for uri in uris:
        open_profile_store(uri).ensure_table()
    writer = BatchWriter(uris[0], TS_MS, batch_size=3, parallelism=2)
    clone = pickle.loads(pickle.dumps(writer))
    assert clone == writer
    assert writer.put(rows) == clone.put(rows) == 7  # the clone writes to the same first store again
    copy = BatchWriter(uris[1], TS_MS, batch_size=3, parallelism=2)
    pickle.loads(pickle.dumps(copy)).put(rows)
    stores = [open_profile_store(u) for u in uris]
    assert all(stores[0].get(k, 1.0) == stores[1].get(k, 1.0) == p for k, p in rows)


# --------------------------------------------------------------------------- steps on local stores


def args(synthetic_small, etl, profile_store, *extra):
    return ["--date", D.isoformat(), "--source", str(synthetic_small.telemetry), "--etl-store", str(etl),
            "--profile-store", profile_store, *FAST, *extra]


def day_rows(synthetic_small):
    table = sources.read_table(str(synthetic_small.telemetry), "clients_last_seen",
                               ["client_id", "app_name", "active_addons"], D, D)
    keep = pc.and_(pc.equal(table["app_name"], "Firefox"), pc.greater(pc.list_value_length(table["active_addons"]), 0))
    return table.filter(pc.fill_null(keep, False))


def opted_out(synthetic_small):
    start = D - dt.timedelta(days=29)
    table = sources.read_table(str(synthetic_small.telemetry), "deletion_request", ["client_id"], start, D)
    return set(table["client_id"].to_pylist())


@pytest.fixture(scope="module")
def staged(synthetic_small, tmp_path_factory):
    """Extract run once on the small synthetic data; tests copy the staging before changing it."""
    etl = tmp_path_factory.mktemp("etl")
    assert main(args(synthetic_small, etl, "sqlite:///unused.sqlite3", "--steps", "extract")) == 0
    return etl


def test_extract_stages_every_eligible_client_once(staged, synthetic_small):
    staging = Staging(str(staged), f"taar_profile/{D:%Y%m%d}")
    manifest = staging.manifest()
    expected = {hash_client_id(c) for c in day_rows(synthetic_small)["client_id"].to_pylist()}
    expected -= {hash_client_id(c) for c in opted_out(synthetic_small)}
    keys = [k for k, _ in staging.rows()]
    assert manifest["date"] == "2026-11-20" and manifest["rows"] == len(keys) == len(set(keys))
    assert set(keys) == expected


def test_load_and_delete_opt_outs_on_sqlite(staged, synthetic_small, tmp_path):
    uri = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    store = open_profile_store(uri)
    store.ensure_table()
    gone = sorted(hash_client_id(c) for c in opted_out(synthetic_small))
    assert gone
    old_ms = TS_MS - 91 * 86_400_000
    store.put_many([(k, b"last week") for k in gone] + [("stale", b"x")], old_ms)  # loaded before they opted out
    store.put_many([("recent", b"y")], TS_MS - 89 * 86_400_000)
    assert main(args(synthetic_small, staged, uri, "--steps", "load,delete-opt-outs")) == 0
    assert all(store.get(k, 1.0) is None for k in gone)
    assert store.get("stale", 1.0) is None and store.get("recent", 1.0) == b"y"  # GC rule emulation: 90 days
    staging = Staging(str(staged), f"taar_profile/{D:%Y%m%d}")
    assert all(store.get(k, 1.0) == p for k, p in staging.rows())


def test_load_needs_a_manifest_and_checks_the_count(staged, synthetic_small, tmp_path):
    etl = tmp_path / "etl"
    shutil.copytree(staged, etl)
    uri = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    manifest = etl / "taar_profile" / "20261120" / "_manifest.json"
    content = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**content, "rows": content["rows"] + 1}))
    assert main(args(synthetic_small, etl, uri, "--steps", "load")) == 1
    assert main(args(synthetic_small, etl, uri, "--steps", "cleanup")) == 0
    assert list((etl / "taar_profile" / "20261120").iterdir()) == []
    assert main(args(synthetic_small, etl, uri, "--steps", "load")) == 1  # no manifest any more


def test_unknown_steps_are_usage_errors(synthetic_small, tmp_path):
    assert main(args(synthetic_small, tmp_path, "sqlite:///x.sqlite3", "--steps", "extract,publish")) == 2


# --------------------------------------------------------------------------- Bigtable emulator


def scan(uri):
    """Every row of a Bigtable table: hashed id -> [(value, timestamp ms), ...]."""
    from google.cloud.bigtable.data import BigtableDataClient, ReadRowsQuery

    project, instance, table = uri[len("bigtable://"):].split("/")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator")
        client = BigtableDataClient(project=project)
    try:
        rows = client.get_table(instance, table).read_rows(ReadRowsQuery())
        return {r.row_key.decode(): [(c.value, c.timestamp_micros // 1000) for c in r.cells] for r in rows}
    finally:
        client.close()


def staged_rows(staged):
    return dict(Staging(str(staged), f"taar_profile/{D:%Y%m%d}").rows())


def test_bigtable_load_creates_the_table_and_reload_is_idempotent(staged, synthetic_small, bigtable_profile_uri):
    from google.cloud import bigtable

    load = args(synthetic_small, staged, bigtable_profile_uri, "--steps", "load", "--batch-size", "200")
    assert main(load) == 0
    expected = {k: [(p, TS_MS)] for k, p in staged_rows(staged).items()}  # one cell per row, end of D
    assert scan(bigtable_profile_uri) == expected
    assert main(load) == 0
    assert scan(bigtable_profile_uri) == expected  # same rows, no duplicates, no second cell

    project, instance, table = bigtable_profile_uri[len("bigtable://"):].split("/")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator")
        client = bigtable.Client(project=project, admin=True)
        families = client.instance(instance).table(table).list_column_families()
        client.close()
    assert families["profile"].gc_rule.to_pb() == gc_rule().to_pb()


def test_bigtable_opt_out_deletion(staged, synthetic_small, bigtable_profile_uri):
    store = BigtableProfileStore(*bigtable_profile_uri[len("bigtable://"):].split("/"))
    store.ensure_table()
    gone = {hash_client_id(c) for c in opted_out(synthetic_small)}
    store.put_many([(k, b"from an earlier week") for k in gone], TS_MS - 7 * 86_400_000)
    assert main(args(synthetic_small, staged, bigtable_profile_uri, "--steps", "load,delete-opt-outs")) == 0
    rows = scan(bigtable_profile_uri)
    assert not gone & set(rows)
    assert rows == {k: [(p, TS_MS)] for k, p in staged_rows(staged).items()}  # the others untouched


def test_an_interrupted_load_rerun_ends_in_the_same_table(staged, synthetic_small, bigtable_profile_uri,
                                                          monkeypatch):
    real, calls = BigtableProfileStore.put_many, []

    def dies_after_three_batches(self, rows, ts_ms):
        calls.append(1)
        if len(calls) > 3:
            raise ProfileWriteError(len(rows), len(rows))
        return real(self, rows, ts_ms)

    monkeypatch.setattr(BigtableProfileStore, "put_many", dies_after_three_batches)
    load = args(synthetic_small, staged, bigtable_profile_uri, "--steps", "load", "--batch-size", "100",
                "--parallelism", "2", "--write-retries", "1")
    assert main(load) == 1
    assert 0 < len(scan(bigtable_profile_uri)) < len(staged_rows(staged))
    monkeypatch.undo()
    assert main(load) == 0
    assert scan(bigtable_profile_uri) == {k: [(p, TS_MS)] for k, p in staged_rows(staged).items()}


def test_the_service_reader_decodes_what_was_written(staged, synthetic_small, bigtable_profile_uri):
    assert main(args(synthetic_small, staged, bigtable_profile_uri, "--steps", "load")) == 0
    fetcher = ProfileFetcher(open_profile_store(bigtable_profile_uri), timeout_s=5.0)
    table = sources.read_table(str(synthetic_small.telemetry), "clients_last_seen", EXTRACT_COLUMNS, D, D)
    skip = opted_out(synthetic_small)
    rows = [r for r in table.to_pylist() if r["app_name"] == "Firefox" and r["active_addons"]
            and r["client_id"] not in skip][:25]
    for row in rows:
        hashed = hash_client_id(row["client_id"])
        assert fetcher.get(hashed) == normalise_profile(row_to_payload(row), client_id=hashed)
    assert fetcher.get("0" * 64) is None


# --------------------------------------------------------------------------- Spark twin


@pytest.mark.spark
def test_spark_sampling_equals_python(spark):
    ids = [f"client-{i}" for i in range(300)] + ["ü-ñ-☃", "", "0" * 64]
    seeds = (42, 7, -3)
    df = spark.createDataFrame([(c,) for c in ids], "client_id string")
    rows = df.select("client_id", *[spark_sample_bucket(s).alias(f"s{i}") for i, s in enumerate(seeds)]).collect()
    assert len(rows) == len(ids)
    for r in rows:
        assert [r.s0, r.s1, r.s2] == [sample_bucket(s, r.client_id) for s in seeds]


@pytest.mark.spark
def test_spark_engine_stages_and_loads_what_the_local_engine_does(spark, synthetic_small, tmp_path):
    sampled = ["--sample-rate", "0.5", "--seed", "7"]  # the Spark sampling column against the Python one
    assert main(args(synthetic_small, tmp_path / "local", "sqlite:///unused.sqlite3", "--steps", "extract",
                     *sampled)) == 0
    local = {k: decode_payload(p) for k, p in Staging(str(tmp_path / "local"), "taar_profile/20261120").rows()}
    uri = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    spark_args = args(synthetic_small, tmp_path / "etl", uri, "--steps", "extract,load", "--engine", "spark",
                      "--spark-master", "local[2]", "--parallelism", "2", *sampled)
    assert main(spark_args) == 0
    spark_staging = Staging(str(tmp_path / "etl"), f"taar_profile/{D:%Y%m%d}")
    assert spark_staging.manifest()["rows"] == len(local)
    assert {k: decode_payload(p) for k, p in spark_staging.rows()} == local
    assert 0.4 < len(local) / len(day_rows(synthetic_small)) < 0.6
    store = open_profile_store(uri)
    assert all(decode_payload(store.get(k, 1.0)) == v for k, v in local.items())


# --------------------------------------------------------------------------- thin boundaries


def test_bq_reads_select_the_columns_and_dates(monkeypatch):
    import pyarrow as pa

    calls = []
    start = D - dt.timedelta(days=29)
    every_day = [start + dt.timedelta(days=i) for i in range(30)]

    def fake_query(sql, params, project=None):
        calls.append((sql, params, project))
        return pa.table({"day": every_day}) if "DISTINCT" in sql else pa.table({"client_id": ["x"]})

    monkeypatch.setattr(sources, "query", fake_query)
    table = sources.read_table("bq", "deletion_request", ["client_id"], start, D, project="billing",
                               tables=sources.bq_tables('{"deletion_request": "p.d.deletions"}'))
    assert table.num_rows == 1
    where = "WHERE DATE(submission_timestamp) BETWEEN @start AND @end"
    assert calls == [  # the completeness check of every day of the window, then the read
        (f"SELECT DISTINCT DATE(submission_timestamp) AS day FROM `p.d.deletions` {where}",
         {"start": start, "end": D}, "billing"),
        (f"SELECT client_id FROM `p.d.deletions` {where}", {"start": start, "end": D}, "billing")]
    every_day.remove(D - dt.timedelta(days=2))
    with pytest.raises(sources.SourceError, match="missing partitions of deletion_request: 2026-11-18$"):
        sources.read_table("bq", "deletion_request", ["client_id"], start, D, project="billing")


def test_the_dataproc_driver_defaults_to_the_spark_engine(monkeypatch):
    import importlib.util
    from pathlib import Path

    import taar_etl.taar_profile_bigtable as job

    seen = []
    monkeypatch.setattr(job, "main", lambda argv: seen.append(argv) or 0)
    path = Path(__file__).parents[2] / "jobs" / "taar_profile_bigtable.py"
    spec = importlib.util.spec_from_file_location("driver", path)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)  # importing the driver runs nothing
    assert seen == []
    assert driver.main(["--date", "2026-11-20", "--steps", "load"]) == 0
    assert driver.main(["--engine=local", "--date", "2026-11-20"]) == 0
    assert seen == [["--engine", "spark", "--date", "2026-11-20", "--steps", "load"],
                    ["--engine=local", "--date", "2026-11-20"]]
