"""taar_etl.sources completeness (SPEC §7.3): every day of a window needs a partition."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taar_etl import sources
from taar_etl.tables import SourceError

pytestmark = pytest.mark.unit

D = dt.date(2026, 5, 10)
SCHEMA = pa.schema([("client_id", pa.string())])


def partition(root, day, rows=()):
    folder = root / "addons" / f"submission_date={day.isoformat()}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"client_id": c} for c in rows], schema=SCHEMA), folder / "part-0.parquet")


@pytest.fixture
def root(tmp_path):
    """Five days D-4..D; D-3 and D-1 are missing, D-2 is an empty (but present) partition."""
    for back, rows in ((4, ["a"]), (2, []), (0, ["b", "c"])):
        partition(tmp_path, D - dt.timedelta(days=back), rows)
    (tmp_path / "addons" / f"submission_date={D - dt.timedelta(days=1)}").mkdir()  # no Parquet file: missing
    return str(tmp_path)


def test_missing_days_are_named_in_order(root):
    start = D - dt.timedelta(days=4)
    assert sources.missing_days(root, "addons", start, D) == [dt.date(2026, 5, 7), dt.date(2026, 5, 9)]
    with pytest.raises(SourceError, match=r"^missing partitions of addons: 2026-05-07, 2026-05-09$"):
        sources.read_table(root, "addons", ["client_id"], start, D)


def test_allow_missing_days_tolerates_up_to_n(root):
    start = D - dt.timedelta(days=4)
    with pytest.raises(SourceError, match=r"2026-05-07, 2026-05-09 \(--allow-missing-days 1\)"):
        sources.read_table(root, "addons", ["client_id"], start, D, allow_missing_days=1)
    table = sources.read_table(root, "addons", ["client_id"], start, D, allow_missing_days=2)
    assert sorted(table["client_id"].to_pylist()) == ["a", "b", "c"]


def test_an_empty_partition_counts_as_present(root):
    day = D - dt.timedelta(days=2)
    assert sources.read_table(root, "addons", ["client_id"], day, day).num_rows == 0


# --------------------------------------------------------------------------- BigQuery side
# BigQuery cannot run here: the double replaces ``sources.query`` (the one call that reaches
# BigQuery) and answers as BigQuery would, from a list of rows: it applies the statement's
# date filter with the bound @start/@end and returns an Arrow table, the shape ``query`` returns.


class FakeBigQuery:
    """Rows per table name; records every statement and its parameters."""

    def __init__(self, rows_by_table: dict[str, list[dict]]):
        self.rows_by_table = rows_by_table
        self.calls = []

    def __call__(self, sql, params, project=None):
        self.calls.append((sql, dict(params), project))
        name = sql.split("`")[1]
        rows = self.rows_by_table[name]
        key = "submission_timestamp" if "DATE(submission_timestamp)" in sql else "submission_date"

        def day(row):
            value = row[key]
            return value.date() if isinstance(value, dt.datetime) else value

        kept = [row for row in rows if params["start"] <= day(row) <= params["end"]]
        if sql.startswith("SELECT DISTINCT"):
            return pa.table({"day": pa.array(sorted({day(r) for r in kept}), pa.date32())})
        columns = sql[len("SELECT "):sql.index(" FROM")].split(", ")
        return pa.Table.from_pylist([{c: r[c] for c in columns} for r in kept])


@pytest.fixture
def bigquery(monkeypatch):
    """clients_daily holds D-4, D-2 and D (D-3 and D-1 missing); deletion_request holds D-1 only."""
    fake = FakeBigQuery({
        "moz-fx-data-shared-prod.telemetry.clients_daily": [
            {"submission_date": D - dt.timedelta(days=back), "client_id": client}
            for back, client in ((4, "a"), (2, "b"), (0, "c"), (0, "d"), (7, "outside"))],
        "moz-fx-data-shared-prod.telemetry.deletion_request": [
            {"submission_timestamp": dt.datetime(2026, 5, 9, 23, 59), "client_id": "gone"}],
    })
    monkeypatch.setattr(sources, "query", fake)
    return fake


def test_bigquery_missing_days_are_named_and_nothing_is_read(bigquery):
    start = D - dt.timedelta(days=4)
    with pytest.raises(SourceError, match=r"^missing partitions of clients_daily: 2026-05-07, 2026-05-09$"):
        sources.read_table("bq", "clients_daily", ["client_id"], start, D, project="p")
    # one query, for the days present: the table itself is never read when days are missing
    assert len(bigquery.calls) == 1
    sql, params, project = bigquery.calls[0]
    assert sql == ("SELECT DISTINCT submission_date AS day FROM `moz-fx-data-shared-prod.telemetry.clients_daily` "
                   "WHERE submission_date BETWEEN @start AND @end")
    assert (params, project) == ({"start": start, "end": D}, "p")


def test_bigquery_allow_missing_days_reads_what_is_there(bigquery):
    start = D - dt.timedelta(days=4)
    with pytest.raises(SourceError, match=r"\(--allow-missing-days 1\)$"):
        sources.read_table("bq", "clients_daily", ["client_id"], start, D, allow_missing_days=1)
    table = sources.read_table("bq", "clients_daily", ["client_id"], start, D, allow_missing_days=2)
    assert sorted(table["client_id"].to_pylist()) == ["a", "b", "c", "d"]  # not "outside" (D-7)
    assert sources.check_complete("bq", "clients_daily", start, D, allow_missing_days=2) == [
        dt.date(2026, 5, 7), dt.date(2026, 5, 9)]


def test_bigquery_deletion_request_days_come_from_its_timestamp(bigquery):
    day = D - dt.timedelta(days=1)
    assert sources.missing_days("bq", "deletion_request", day, day) == []
    assert sources.missing_days("bq", "deletion_request", D, D) == [D]
    sql = bigquery.calls[0][0]
    assert "DATE(submission_timestamp) BETWEEN @start AND @end" in sql


def test_bigquery_table_names_can_be_overridden(bigquery):
    bigquery.rows_by_table["my-project.sandbox.clients_daily_copy"] = [{"submission_date": D, "client_id": "x"}]
    tables = {"clients_daily": "my-project.sandbox.clients_daily_copy"}
    assert sources.missing_days("bq", "clients_daily", D - dt.timedelta(days=1), D, tables=tables) == [
        D - dt.timedelta(days=1)]
    assert "FROM `my-project.sandbox.clients_daily_copy`" in bigquery.calls[-1][0]
