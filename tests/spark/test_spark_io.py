"""taar_etl.spark.io: Parquet reading, seeded ordering/sampling, latest rows, job sessions, dated inputs."""

import datetime as dt

import pytest

from taar.publishing import producer_tag, publish
from taar.storage import open_model_store
from taar_etl.cli import JobFailed
from taar_etl.spark.io import (
    SourceError,
    job_session,
    latest_row_per_client,
    persisted,
    read_input_artifact,
    read_table,
    sample_clients,
    xxhash_order,
)
from tests.fixtures.parquet_builders import addon, client_row, write_tables
from tests.fixtures.spark import py_xxhash

pytestmark = pytest.mark.spark

D = dt.date(2026, 3, 4)




@pytest.fixture(scope="module")
def root(tmp_path_factory):
    rows = [
        client_row("c1", "2026-03-02", locale="de"),
        client_row("c1", "2026-03-04", locale="fr", active_addons=[addon("a@x")]),
        client_row("c2", "2026-03-03", locale="it"),
        client_row("c3", "2026-03-01", locale="es"),  # outside [03-02, 03-04]
    ]
    return write_tables(tmp_path_factory.mktemp("telemetry"), clients_daily=rows)


def test_read_table_selects_columns_and_date_range(spark, root):
    df = read_table(spark, root, "clients_daily", ["client_id", "locale", "submission_date"],
                    dt.date(2026, 3, 2), D)
    assert df.columns == ["client_id", "locale", "submission_date"]
    got = sorted((r.client_id, r.locale, r.submission_date) for r in df.collect())
    assert got == [("c1", "de", dt.date(2026, 3, 2)), ("c1", "fr", D), ("c2", "it", dt.date(2026, 3, 3))]


def test_read_table_keeps_the_addon_struct_schema(spark, root):
    df = read_table(spark, root, "clients_daily", ["client_id", "active_addons"], D, D)
    [row] = df.collect()
    assert row.active_addons[0].addon_id == "a@x" and row.active_addons[0].signed_state == 2
    assert df.schema["active_addons"].dataType.elementType.fieldNames()[0] == "addon_id"


def test_read_table_missing_table_is_a_source_error(spark, root):
    with pytest.raises(SourceError, match="clients_last_seen"):
        read_table(spark, root, "clients_last_seen", ["client_id"], D, D)


@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    """clients_daily on 03-01, 03-02 and 03-04 (03-03 missing), plus days outside [03-02, 03-04] that
    would break any reader that looked at them: 02-20 holds a corrupt file under a conflicting
    partition layout, 03-05 a file that is not Parquet."""
    rows = [client_row("c1", day, locale=loc) for day, loc in
            (("2026-03-01", "es"), ("2026-03-02", "de"), ("2026-03-04", "fr"), ("2026-02-20", "it"),
             ("2026-03-05", "pt"))]
    root = tmp_path_factory.mktemp("gappy")
    write_tables(root, clients_daily=rows)
    table = root / "clients_daily"
    bad_layout = table / "submission_date=2026-02-20"
    (bad_layout / "part-00000.parquet").rename(bad_layout / "moved")
    (bad_layout / "extra=1").mkdir()
    (bad_layout / "extra=1" / "part-00000.parquet").write_bytes(b"not parquet")
    (table / "submission_date=2026-03-05" / "part-00000.parquet").write_bytes(b"PAR1 garbage")
    return str(root)


def test_missing_day_in_the_window_fails_naming_it(spark, gappy):
    with pytest.raises(SourceError, match=r"^missing partitions of clients_daily: 2026-03-03\b"):
        read_table(spark, gappy, "clients_daily", ["client_id"], dt.date(2026, 3, 2), D)


def test_every_missing_day_is_named_in_order(spark, gappy):
    with pytest.raises(SourceError) as info:
        read_table(spark, gappy, "clients_daily", ["client_id"], dt.date(2026, 2, 27), D, allow_missing_days=2)
    # [02-27, 03-04] = 6 days; present 03-01, 03-02, 03-04 -> 3 missing, 2 tolerated
    assert str(info.value).startswith("missing partitions of clients_daily: 2026-02-27, 2026-02-28, 2026-03-03 ")


def test_allow_missing_days_tolerates_up_to_n_and_discovery_touches_only_the_window(spark, gappy):
    df = read_table(spark, gappy, "clients_daily", ["locale", "submission_date"], dt.date(2026, 3, 2), D,
                    allow_missing_days=1)
    # the corrupt 02-20 layout and the garbage 03-05 file are outside the window: a reader that listed the
    # whole table fails on the conflicting partition columns, one that read them fails on the bytes
    assert sorted((r.locale, r.submission_date.isoformat()) for r in df.collect()) == [
        ("de", "2026-03-02"), ("fr", "2026-03-04")]
    listed = {f.split("/submission_date=")[1].split("/")[0] for f in df.inputFiles()}
    assert listed == {"2026-03-02", "2026-03-04"}


def test_whole_table_listing_would_have_hit_the_corrupt_days(spark, gappy):
    # guards the test above: the planted out-of-window damage really breaks a whole-table read
    with pytest.raises(Exception, match="(?i)conflicting|partition"):
        spark.read.option("basePath", f"{gappy}/clients_daily").parquet(f"{gappy}/clients_daily").count()


def test_allow_missing_days_flag_is_a_non_negative_integer():
    import argparse

    from taar_etl.spark.io import add_source_arguments

    parser = add_source_arguments(argparse.ArgumentParser())
    assert parser.parse_args([]).allow_missing_days == 0
    assert parser.parse_args(["--allow-missing-days", "3"]).allow_missing_days == 3
    for bad in ("-1", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--allow-missing-days", bad])


def test_xxhash_order_matches_an_independent_xxh64(spark):
    df = spark.createDataFrame([("c1", "a@x"), ("c2", "b@x"), ("ü-client", "{1234}")], ["client_id", "addon_id"])
    got = {(r.client_id, r.addon_id): r.h
           for r in df.select("client_id", "addon_id", xxhash_order(7, "client_id", "addon_id").alias("h")).collect()}
    assert got == {k: py_xxhash(7, *k) for k in got}


def test_sample_clients_keeps_hash_buckets_below_the_rate(spark):
    ids = [f"client-{i}" for i in range(40)]
    df = spark.createDataFrame([(c,) for c in ids], ["client_id"])
    kept = {r.client_id for r in sample_clients(df, 0.25, seed=3).collect()}
    # rate 0.25 -> keep pmod(h, 10^6) < 250000, computed independently
    expected = {c for c in ids if py_xxhash(3, c) % 1_000_000 < 250_000}
    assert kept == expected
    assert 0 < len(kept) < 40
    assert sample_clients(df, 1.0, seed=3).count() == 40


@pytest.mark.parametrize("rate", [0, -0.1, 1.5])
def test_sample_clients_rejects_rates_outside_0_1(spark, rate):
    df = spark.createDataFrame([("c",)], ["client_id"])
    with pytest.raises(ValueError, match="sample rate"):
        sample_clients(df, rate, seed=1)


def test_latest_row_per_client_takes_the_newest_date(spark, root):
    df = read_table(spark, root, "clients_daily", ["client_id", "locale", "submission_date"],
                    dt.date(2026, 3, 1), D)
    got = sorted((r.client_id, r.locale) for r in latest_row_per_client(df).collect())
    assert got == [("c1", "fr"), ("c2", "it"), ("c3", "es")]


def test_latest_row_per_client_same_date_tie_does_not_depend_on_partitioning(spark):
    rows = [("c1", dt.date(2026, 3, 4), loc) for loc in ("de", "fr", "it", "es", "pl", "nl")]
    df = spark.createDataFrame(rows, ["client_id", "submission_date", "locale"])
    picks = {latest_row_per_client(df.repartition(n)).collect()[0].locale for n in (1, 3, 6)}
    picks |= {latest_row_per_client(spark.createDataFrame(rows[::-1], df.schema)).collect()[0].locale}
    assert len(picks) == 1


def test_job_session_reuses_the_active_session_and_restores_its_settings(spark):
    before = spark.conf.get("spark.sql.shuffle.partitions")
    with job_session("x", master="local[2]", shuffle_partitions=1) as session:
        assert session is spark
        assert session.conf.get("spark.sql.shuffle.partitions") == "1"
    assert spark.conf.get("spark.sql.shuffle.partitions") == before
    assert spark.range(3).count() == 3  # still running


def test_persisted_materialises_the_frame_so_later_actions_never_read_the_source(spark, tmp_path):
    spark.range(6).write.parquet(str(tmp_path / "t"))
    df = spark.read.parquet(str(tmp_path / "t"))
    with persisted(df, "t") as frame:
        for path in (tmp_path / "t").glob("*.parquet"):
            path.unlink()
        # the source files are gone: these actions can only be answered from the persisted copy
        assert sorted(r.id for r in frame.collect()) == [0, 1, 2, 3, 4, 5]
        assert frame.where("id % 2 = 0").count() == 3
        assert frame.storageLevel.useMemory and frame.storageLevel.useDisk  # MEMORY_AND_DISK
    assert not frame.is_cached


def test_persisted_unpersists_when_the_block_raises(spark):
    with pytest.raises(RuntimeError, match="boom"):
        with persisted(spark.range(3)) as frame:
            assert frame.is_cached
            raise RuntimeError("boom")
    assert not frame.is_cached


@pytest.fixture()
def store(tmp_path):
    s = open_model_store(str(tmp_path / "models"))
    publish(s, "whitelist", ["a@x", "b@x"], dt.date(2026, 3, 3), producer_tag("test"))
    return s


def test_read_input_artifact_reads_the_dated_copy(store):
    publish(store, "whitelist", ["c@x"], D, producer_tag("test"))
    obj, descriptor = read_input_artifact(store, "whitelist", D)
    assert obj == ["c@x"] and descriptor.version == "20260304"


def test_read_input_artifact_missing_dated_copy_fails_naming_it(store):
    with pytest.raises(JobFailed, match="whitelist.*2026-03-04.*--allow-latest-inputs"):
        read_input_artifact(store, "whitelist", D)


def test_read_input_artifact_falls_back_to_latest_only_when_allowed(store):
    obj, descriptor = read_input_artifact(store, "whitelist", D, allow_latest=True)
    assert obj == ["a@x", "b@x"] and descriptor.version == "20260303"


def test_bq_table_overrides_and_their_usage_errors():
    import argparse

    from taar_etl.cli import UsageError
    from taar_etl.spark.io import BQ_TABLES, add_source_arguments, bq_tables_from

    parser = add_source_arguments(argparse.ArgumentParser())
    options = parser.parse_args(["--bq-tables", '{"clients_daily": "p.d.cd"}', "--bq-materialization-dataset", "tmp"])
    assert bq_tables_from(options) == BQ_TABLES | {"clients_daily": "p.d.cd"}
    assert options.bq_materialization_dataset == "tmp"
    for bad in ("clients_daily", '{"nope": "p.d.t"}', '{"clients_daily": "p.d"}', '["clients_daily"]'):
        with pytest.raises(UsageError, match="--bq-tables"):
            bq_tables_from(parser.parse_args(["--bq-tables", bad]))


def test_metrics_sidecar_document():
    from taar_etl.spark.io import metrics_sidecar

    doc = metrics_sidecar("taar_x", D, 7, {"k": 1}, {"clients": 3}, {"rows": 2})
    assert doc["job"] == "taar_x" and doc["date"] == "2026-03-04" and doc["seed"] == 7
    assert doc["evaluation"] is None and doc["params"] == {"k": 1} and doc["package_version"]
