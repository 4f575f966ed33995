"""Container-side readers of the source tables (SPEC §7.1, §7.3), as Arrow data.

``--source`` is either ``bq`` or a local Parquet root. Locally a pyarrow dataset
over ``<root>/<table>/submission_date=YYYY-MM-DD/`` is read with the partition
filter applied to directory names (other days' files are never opened) and only
the requested columns. For ``bq`` a parameterised query selects the same columns
and dates and is downloaded through the BigQuery Storage Read API; that path is
kept to a few lines because everything after it works on Arrow either way.
:func:`query` runs server-side aggregations (the TAARlite ranking).

Completeness (SPEC §7.3): a required read checks that every day of its window
has a partition (locally a ``submission_date=`` directory with a Parquet file,
even an empty one; in BigQuery at least one row that day) and fails naming the
missing days, ``missing partitions of <table>: YYYY-MM-DD, ...``, unless
``allow_missing_days`` (the jobs' ``--allow-missing-days N``) tolerates that many.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.dataset as ds

from taar_etl.tables import BQ_TABLES, SourceError, add_bq_table_arguments, parse_bq_tables

logger = logging.getLogger(__name__)

DATE_COLUMN = "submission_date"
DEFAULT_BATCH_ROWS = 65_536


def add_bq_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags naming the BigQuery billing project and the source tables (one format for every job)."""
    parser.add_argument("--bq-project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"),
                        help="BigQuery project that runs the queries (--source bq)")
    add_bq_table_arguments(parser)


def add_completeness_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-missing-days N``: days of an input window that may lack a partition (default 0)."""
    parser.add_argument("--allow-missing-days", type=int, default=0,
                        help="days of an input window allowed to have no partition")


def bq_tables(option: str | Mapping | None) -> dict[str, str]:
    """The default table names with the ``--bq-tables`` overrides applied."""
    return parse_bq_tables(option)


def _dataset(root: str, table: str) -> ds.Dataset:
    path = os.path.join(root, table)
    if not os.path.isdir(path):
        raise SourceError(f"input table {table!r} not found at {path}")
    partitioning = ds.partitioning(pa.schema([(DATE_COLUMN, pa.date32())]), flavor="hive")
    return ds.dataset(path, format="parquet", partitioning=partitioning)


def _date_filter(start: dt.date, end: dt.date):
    field = ds.field(DATE_COLUMN)
    return (field >= pa.scalar(start, pa.date32())) & (field <= pa.scalar(end, pa.date32()))


def local_partitions(root: str, table: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """Dates in ``[start, end]`` that have a partition directory with a Parquet file."""
    path = os.path.join(root, table)
    found = []
    for entry in sorted(os.listdir(path)) if os.path.isdir(path) else ():
        key, _, value = entry.partition("=")
        if key != DATE_COLUMN:
            continue
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            continue
        if start <= day <= end and any(f.endswith(".parquet") for f in os.listdir(os.path.join(path, entry))):
            found.append(day)
    return found


def missing_days(source: str, table: str, start: dt.date, end: dt.date, project: str | None = None,
                 tables: Mapping[str, str] | None = None) -> list[dt.date]:
    """The days of ``[start, end]`` without a partition of ``table``, ascending."""
    if source == "bq":
        present = set(_bq_days(table, start, end, project, tables))
    else:
        present = set(local_partitions(source, table, start, end))
    days = (start + dt.timedelta(days=i) for i in range((end - start).days + 1))
    return [d for d in days if d not in present]


def missing_message(table: str, days: Sequence[dt.date]) -> str:
    """The one shape of the message (shared with the Spark jobs): ``missing partitions of <table>: <days>``."""
    return f"missing partitions of {table}: {', '.join(d.isoformat() for d in days)}"


def check_complete(source: str, table: str, start: dt.date, end: dt.date, allow_missing_days: int = 0,
                   project: str | None = None, tables: Mapping[str, str] | None = None) -> list[dt.date]:
    """Raise :class:`SourceError` naming the missing days when more than ``allow_missing_days`` lack a
    partition (a missing day is an upstream failure, not an empty day); return the tolerated ones."""
    missing = missing_days(source, table, start, end, project, tables)
    message = missing_message(table, missing)
    if len(missing) > allow_missing_days:
        raise SourceError(message + (f" (--allow-missing-days {allow_missing_days})" if allow_missing_days else ""))
    if missing:
        logger.warning("%s (tolerated by --allow-missing-days %d)", message, allow_missing_days)
    return missing


def iter_batches(source: str, table: str, columns: Sequence[str], start: dt.date, end: dt.date,
                 required: bool = True, batch_rows: int = DEFAULT_BATCH_ROWS, project: str | None = None,
                 tables: Mapping[str, str] | None = None, allow_missing_days: int = 0) -> Iterator[pa.RecordBatch]:
    """Yield ``columns`` of ``table`` for dates ``[start, end]`` as record batches.

    ``required``: first check that every day has a partition (:func:`check_complete`).
    """
    if required:
        check_complete(source, table, start, end, allow_missing_days, project, tables)
    if source == "bq":
        yield from _bq_table(table, columns, start, end, project, tables).to_batches(batch_rows)
        return
    if not os.path.isdir(os.path.join(source, table)):
        return
    scanner = _dataset(source, table).scanner(columns=list(columns), filter=_date_filter(start, end),
                                              batch_size=batch_rows)
    for batch in scanner.to_batches():
        if batch.num_rows:
            yield batch


def read_table(source: str, table: str, columns: Sequence[str], start: dt.date, end: dt.date,
               required: bool = True, project: str | None = None,
               tables: Mapping[str, str] | None = None, allow_missing_days: int = 0) -> pa.Table:
    """``columns`` of ``table`` for ``[start, end]`` as one Arrow table (see :func:`iter_batches`)."""
    if source == "bq":
        if required:
            check_complete(source, table, start, end, allow_missing_days, project, tables)
        return _bq_table(table, columns, start, end, project, tables)
    batches = list(iter_batches(source, table, columns, start, end, required, allow_missing_days=allow_missing_days))
    if batches:
        return pa.Table.from_batches(batches)
    if not os.path.isdir(os.path.join(source, table)):
        raise SourceError(f"input table {table!r} not found at {os.path.join(source, table)}")
    schema = _dataset(source, table).schema
    return pa.Table.from_batches([], pa.schema([schema.field(c) for c in columns]))


# --------------------------------------------------------------------------- BigQuery (thin)


def _bq_date_expr(table: str) -> str:
    return "DATE(submission_timestamp)" if table == "deletion_request" else DATE_COLUMN


def query(sql: str, params: Mapping[str, object], project: str | None = None) -> pa.Table:
    """Run ``sql`` with named ``@params`` (dates, strings, ints) and download the result via Storage Read."""
    from google.cloud import bigquery

    kinds = {dt.date: "DATE", str: "STRING", int: "INT64", float: "FLOAT64", bool: "BOOL"}
    parameters = [bigquery.ScalarQueryParameter(k, kinds[type(v)], v) for k, v in params.items()]
    client = bigquery.Client(project=project)
    try:
        job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=parameters))
        table = job.result().to_arrow(create_bqstorage_client=True)
    finally:
        client.close()
    logger.info("BigQuery returned %d rows (%s bytes processed)", table.num_rows, job.total_bytes_processed)
    return table


def _bq_days(table, start, end, project, tables) -> list[dt.date]:
    """Days of ``[start, end]`` with at least one row (BigQuery has no empty partitions)."""
    name = (tables or BQ_TABLES)[table]
    date = _bq_date_expr(table)
    sql = f"SELECT DISTINCT {date} AS day FROM `{name}` WHERE {date} BETWEEN @start AND @end"
    return list(query(sql, {"start": start, "end": end}, project).column("day").to_pylist())


def _bq_table(table, columns, start, end, project, tables) -> pa.Table:
    name = (tables or BQ_TABLES)[table]
    sql = (f"SELECT {', '.join(columns)} FROM `{name}` "
           f"WHERE {_bq_date_expr(table)} BETWEEN @start AND @end")
    return query(sql, {"start": start, "end": end}, project)
