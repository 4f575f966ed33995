"""taar_lite_guidranking on hand-built ``addons`` rows: Python reference, pyarrow, the BigQuery SQL, the job."""

import datetime as dt
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taar.publishing import read_artifact
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


@pytest.mark.parametrize("channel, expected", [("release", RELEASE), ("all", ALL_CHANNELS)])
def test_python_reference(channel, expected):
    assert rank_rows(ROWS, channel) == expected


@pytest.mark.parametrize("channel, expected", [("release", RELEASE), ("all", ALL_CHANNELS)])
def test_pyarrow_aggregation(channel, expected):
    assert rank_table(pa.Table.from_pylist(ROWS, schema=SCHEMA), channel) == expected


@pytest.mark.parametrize("channel, expected", [("release", RELEASE), ("all", ALL_CHANNELS)])
def test_the_bigquery_sql_counts_the_same(channel, expected):
    # The production query, eligibility conditions included, run as-is on SQLite (same SQL subset).
    db = sqlite3.connect(":memory:")
    columns = ["submission_date", *SCHEMA.names]
    db.execute(f"CREATE TABLE `p.d.addons` ({', '.join(columns)})")
    rows = [(D.isoformat(), *r.values()) for r in ROWS] + [("2026-05-09", *row("c99", "old@x").values())]
    db.executemany(f"INSERT INTO `p.d.addons` VALUES ({', '.join('?' * len(columns))})", rows)
    params = {"date": D.isoformat(), "channel": channel}
    result = dict(db.execute(ranking_sql("p.d.addons", channel), params).fetchall())
    result.pop("null", None)  # the job drops it after the query, as it does locally
    assert result == expected


def write_partition(root, day, rows):
    folder = root / "addons" / f"submission_date={day.isoformat()}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / "part-00000.parquet")


def test_main_ranks_only_day_d_and_publishes(tmp_path):
    source, models = tmp_path / "telemetry", tmp_path / "models"
    write_partition(source, D, ROWS)
    write_partition(source, D - dt.timedelta(days=1), [row("c20", "a@x"), row("c21", "old@x")])
    assert main(["--date", "2026-05-10", "--source", str(source), "--model-store", str(models)]) == 0
    ranking, descriptor = read_artifact(open_model_store(str(models)), "ranking", date=D)
    assert ranking == RELEASE and descriptor.version == "20260510"


def test_no_eligible_row_fails_and_publishes_nothing(tmp_path):
    source, models = tmp_path / "telemetry", tmp_path / "models"
    write_partition(source, D, [row("c4", "b@x", user_disabled=True), row("c12", "null")])
    assert main(["--date", "2026-05-10", "--source", str(source), "--model-store", str(models)]) == 1
    assert open_model_store(str(models)).list() == []


def test_a_missing_partition_fails(tmp_path):
    source = tmp_path / "telemetry"
    write_partition(source, D - dt.timedelta(days=1), ROWS)
    assert main(["--date", "2026-05-10", "--source", str(source), "--model-store", str(tmp_path / "m")]) == 1


def test_bq_source_runs_the_aggregation_server_side(tmp_path, monkeypatch):
    calls = []

    def fake_query(sql, params, project=None):  # stands in for BigQuery at the Storage Read boundary
        calls.append((sql, params, project))
        return pa.table({"addon_id": ["b@x", None, "a@x", "null"], "installs": [2, 5, 7, 1]})

    monkeypatch.setattr(sources, "query", fake_query)
    models = tmp_path / "models"
    argv = ["--date", "2026-05-10", "--source", "bq", "--model-store", str(models), "--bq-project", "billing",
            "--bq-tables", '{"addons": "my-project.telemetry.addons_v2"}']
    assert main(argv) == 0
    assert calls == [(ranking_sql("my-project.telemetry.addons_v2", "release"), {"date": D, "channel": "release"},
                      "billing")]
    assert read_artifact(open_model_store(str(models)), "ranking")[0] == {"a@x": 7, "b@x": 2}
