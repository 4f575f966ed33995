"""taar_lite_guidranking on hand-built ``addons`` rows: Python reference, pyarrow, the BigQuery SQL, the job."""

import datetime as dt
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taar.publishing import producer_tag, publish, read_artifact
from taar.storage import open_model_store
from taar_etl import sources
from taar_etl.taar_lite_guidranking import main, rank_rows, rank_table, ranking_sql

pytestmark = pytest.mark.unit

D = dt.date(2026, 5, 10)
FLAGS = ("is_system", "user_disabled", "app_disabled", "foreign_install", "blocklisted")
SCHEMA = pa.schema([("client_id", pa.string()), ("normalized_channel", pa.string()), ("addon_id", pa.string()),
                    *[(f, pa.bool_()) for f in FLAGS], ("type", pa.string()), ("signed_state", pa.int64())])


def row(client, addon, channel="release", type="extension", signed_state=2, **flags):
    return {"client_id": client, "normalized_channel": channel, "addon_id": addon,
            **{f: flags.get(f) for f in FLAGS}, "type": type, "signed_state": signed_state}


ROWS = [
    row("c1", "a@x"), row("c1", "a@x"),  # the same client twice counts once
    row("c2", "a@x"),
    row("c3", "a@x", channel="beta"),  # other channel
    row("c13", "a@x", channel=None),  # unknown channel
    row(None, "a@x"),  # no client id
    row("c1", "b@x"),
    row("c4", "b@x", user_disabled=True),
    row("c5", "b@x", signed_state=None),  # unsigned state unknown: passes
    row("c6", "b@x", signed_state=1),
    row("c7", "sys@x", is_system=True),
    row("c8", "theme@x", type="theme"),
    row("c14", "c@x", type=None),
    row("c15", "c@x", blocklisted=False, foreign_install=None),
    row("c9", None), row("c10", ""), row("c12", "null"),
    row("c11", "pioneer-opt-in@mozilla.org"),
]
# release: a@x = {c1, c2} -> 2; b@x = {c1, c5} -> 2; c@x = {c15} -> 1
RELEASE = {"a@x": 2, "b@x": 2, "c@x": 1}
# every channel: a@x adds c3 (beta) and c13 (null channel) -> 4
ALL_CHANNELS = {"a@x": 4, "b@x": 2, "c@x": 1}
#: Every GUID of ROWS as if AMO listed them all (the filters under test are then the eligibility rules).
EVERY_GUID = {r["addon_id"] for r in ROWS if r["addon_id"]}


@pytest.mark.parametrize("channel, expected", [("release", RELEASE), ("all", ALL_CHANNELS)])
def test_python_reference(channel, expected):
    assert rank_rows(ROWS, EVERY_GUID, 1, channel) == expected


@pytest.mark.parametrize("channel, expected", [("release", RELEASE), ("all", ALL_CHANNELS)])
def test_pyarrow_aggregation(channel, expected):
    assert rank_table(pa.Table.from_pylist(ROWS, schema=SCHEMA), EVERY_GUID, 1, channel) == expected


@pytest.mark.parametrize("listed, min_installs, channel, expected", [
    ({"a@x", "b@x"}, 1, "release", {"a@x": 2, "b@x": 2}),  # c@x is not on AMO
    (EVERY_GUID, 2, "release", {"a@x": 2, "b@x": 2}),  # c@x has 1 install < 2
    (EVERY_GUID, 3, "all", {"a@x": 4}),  # b@x 2, c@x 1 < 3
    ({"b@x"}, 3, "all", {}),
])
def test_unlisted_and_rare_guids_are_dropped(listed, min_installs, channel, expected):
    assert rank_rows(ROWS, listed, min_installs, channel) == expected
    assert rank_table(pa.Table.from_pylist(ROWS, schema=SCHEMA), listed, min_installs, channel) == expected


@pytest.mark.parametrize("channel, min_installs, expected", [
    ("release", 1, RELEASE), ("all", 1, ALL_CHANNELS),
    ("release", 2, {"a@x": 2, "b@x": 2}), ("all", 3, {"a@x": 4}),  # HAVING drops c@x (1), then b@x (2)
])
def test_the_bigquery_sql_counts_the_same(channel, min_installs, expected):
    # The production query, eligibility conditions included, run as-is on SQLite (same SQL subset).
    db = sqlite3.connect(":memory:")
    columns = ["submission_date", *SCHEMA.names]
    db.execute(f"CREATE TABLE `p.d.addons` ({', '.join(columns)})")
    rows = [(D.isoformat(), *r.values()) for r in ROWS] + [("2026-05-09", *row("c99", "old@x").values())]
    db.executemany(f"INSERT INTO `p.d.addons` VALUES ({', '.join('?' * len(columns))})", rows)
    params = {"date": D.isoformat(), "channel": channel, "min_installs": min_installs}
    result = dict(db.execute(ranking_sql("p.d.addons", channel), params).fetchall())
    result.pop("null", None)  # the job drops it after the query, as it does locally
    assert result == expected


def write_partition(root, day, rows):
    folder = root / "addons" / f"submission_date={day.isoformat()}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / "part-00000.parquet")


def amo_models(path, guids=("a@x", "b@x", "c@x", "old@x"), date=D):
    """A model store holding an ``amo_database`` dated ``date`` that lists ``guids``."""
    store = open_model_store(str(path))
    record = {"first_create_date": "2020-01-01T00:00:00Z", "current_version": {"files": [{"is_webextension": True}]}}
    publish(store, "amo_database", {g: {"guid": g, **record} for g in guids}, date, producer_tag("test"))
    return store


def ten_times(rows):
    """Each row for ten clients (c1#0..c1#9): every count of RELEASE times 10."""
    return [{**r, "client_id": None if r["client_id"] is None else f"{r['client_id']}#{i}"}
            for r in rows for i in range(10)]


def test_main_ranks_only_day_d_and_publishes(tmp_path):
    source, models = tmp_path / "telemetry", amo_models(tmp_path / "models")
    write_partition(source, D, ten_times(ROWS))
    write_partition(source, D - dt.timedelta(days=1), ten_times([row("c20", "a@x"), row("c21", "old@x")]))
    assert main(["--date", "2026-05-10", "--source", str(source), "--model-store", models.uri]) == 0
    ranking, descriptor = read_artifact(models, "ranking", date=D)
    # default --min-installs 10: a@x 20, b@x 20, c@x 10 all stay
    assert ranking == {"a@x": 20, "b@x": 20, "c@x": 10} and descriptor.version == "20260510"


def test_main_drops_unlisted_and_rare_guids(tmp_path):
    source, models = tmp_path / "telemetry", amo_models(tmp_path / "models", guids=("a@x", "c@x"))
    write_partition(source, D, ten_times(ROWS))
    # b@x (20 installs) is not on AMO; c@x (10) is below --min-installs 11
    assert main(["--date", "2026-05-10", "--source", str(source), "--model-store", models.uri,
                 "--min-installs", "11"]) == 0
    assert read_artifact(models, "ranking")[0] == {"a@x": 20}


def test_main_needs_the_dated_amo_database_and_the_floor(tmp_path, capsys):
    source = tmp_path / "telemetry"
    write_partition(source, D, ten_times(ROWS))
    models = amo_models(tmp_path / "models", date=D - dt.timedelta(days=1))
    argv = ["--date", "2026-05-10", "--source", str(source), "--model-store", models.uri]
    assert main(argv) == 1
    assert "'amo_database' for 2026-05-10 is missing" in capsys.readouterr().out
    assert main([*argv, "--allow-latest-inputs", "--min-installs", "9"]) == 2
    assert main([*argv, "--allow-latest-inputs"]) == 0


def test_no_eligible_row_fails_and_publishes_nothing(tmp_path):
    source, models = tmp_path / "telemetry", amo_models(tmp_path / "models")
    write_partition(source, D, [row("c4", "b@x", user_disabled=True), row("c12", "null")])
    assert main(["--date", "2026-05-10", "--source", str(source), "--model-store", models.uri]) == 1
    assert models.stat("taar/lite/guid_install_ranking.json.bz2") is None


def test_a_missing_partition_fails(tmp_path, capsys):
    source = tmp_path / "telemetry"
    write_partition(source, D - dt.timedelta(days=1), ROWS)
    models = amo_models(tmp_path / "m")
    assert main(["--date", "2026-05-10", "--source", str(source), "--model-store", models.uri]) == 1
    assert "missing partitions of addons: 2026-05-10" in capsys.readouterr().out


def test_bq_source_runs_the_aggregation_server_side(tmp_path, monkeypatch):
    calls = []

    def fake_query(sql, params, project=None):  # stands in for BigQuery at the Storage Read boundary
        calls.append((sql, params, project))
        if " AS day " in sql:  # the completeness check of D
            return pa.table({"day": [D]})
        return pa.table({"addon_id": ["b@x", None, "a@x", "null", "x@unlisted"], "installs": [12, 50, 70, 10, 99]})

    monkeypatch.setattr(sources, "query", fake_query)
    models = amo_models(tmp_path / "models")
    argv = ["--date", "2026-05-10", "--source", "bq", "--model-store", models.uri, "--bq-project", "billing",
            "--bq-tables", '{"addons": "my-project.telemetry.addons_v2"}']
    assert main(argv) == 0
    assert [c[0].split("\n")[0] for c in calls] == [
        "SELECT DISTINCT submission_date AS day FROM `my-project.telemetry.addons_v2` WHERE submission_date "
        "BETWEEN @start AND @end", "SELECT addon_id, COUNT(DISTINCT client_id) AS installs"]
    assert calls[1] == (ranking_sql("my-project.telemetry.addons_v2", "release"),
                        {"date": D, "min_installs": 10, "channel": "release"}, "billing")
    assert read_artifact(models, "ranking")[0] == {"a@x": 70, "b@x": 12}  # x@unlisted is not on AMO
