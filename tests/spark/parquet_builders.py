"""Hand-built telemetry rows written as a Parquet root in the SPEC §7.3 layout.

Spark tests describe their input as a few Python dicts and get back a root that
``taar_etl.spark.io.read_table`` reads exactly like the synthetic generator's
output or a BigQuery table: ``<root>/<table>/submission_date=YYYY-MM-DD/part-00000.parquet``
with the column names and types of SPEC §7.2 (the partition column lives in the
directory name, not in the files). Written with pyarrow, so no Spark is needed to
build an input.

    root = write_tables(tmp_path, clients_daily=[
        client_row("c1", "2026-03-04", active_addons=[addon("a@x"), addon("b@x", user_disabled=True)]),
    ])

Missing columns are null; :func:`addon` and :func:`client_row` fill in values that
pass the client filter and the eligibility predicate, so each test only spells out
what it is about.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from taar_dev.telemetry_schema import ADDON, FILE_SCHEMAS

ADDON_TYPE = ADDON
#: File schemas per table (SPEC §7.2), without the ``submission_date`` partition column.
SCHEMAS = FILE_SCHEMAS

def addon(addon_id: str | None, **fields) -> dict:
    """An ADDON struct that passes every rule of SPEC §7.4 unless ``fields`` say otherwise."""
    record = {
        "addon_id": addon_id, "blocklisted": False, "name": addon_id, "user_disabled": False,
        "app_disabled": False, "version": "1.0", "scope": 1, "type": "extension", "foreign_install": False,
        "has_binary_components": False, "install_day": 19000, "update_day": 19000, "signed_state": 2,
        "is_system": False, "is_web_extension": True, "multiprocess_compatible": True,
    }
    unknown = set(fields) - set(record)
    if unknown:
        raise ValueError(f"unknown ADDON fields {sorted(unknown)}")
    record.update(fields)
    return record


def client_row(client_id: str | None, submission_date: str | dt.date, active_addons=(), **fields) -> dict:
    """A ``clients_daily``/``clients_last_seen`` row of a release Firefox client."""
    row = {
        "submission_date": submission_date, "client_id": client_id, "sample_id": 0, "app_name": "Firefox",
        "normalized_channel": "release", "locale": "en-US", "city": "Rome", "os": "Linux",
        "subsession_hours_sum": 1.0, "places_bookmarks_count_mean": 10.0,
        "scalar_parent_browser_engagement_tab_open_event_count_sum": 20,
        "scalar_parent_browser_engagement_total_uri_count_sum": 100,
        "scalar_parent_browser_engagement_unique_domains_count_mean": 5.0,
        "active_addons": list(active_addons) if active_addons is not None else None,
    }
    row.update(fields)
    return row


def _partition_date(table: str, row: Mapping) -> str:
    if table == "deletion_request":
        value = row["submission_timestamp"]
        return value.date().isoformat() if isinstance(value, dt.datetime) else str(value)[:10]
    value = row["submission_date"]
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def write_table(root: str | Path, table: str, rows: Iterable[Mapping]) -> Path:
    """Write ``rows`` of ``table`` under ``root`` (one file per date partition); return the table dir."""
    schema = SCHEMAS[table]
    table_dir = Path(root) / table
    by_date: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        unknown = set(row) - set(schema.names) - {"submission_date"}
        if unknown:
            raise ValueError(f"{table}: unknown columns {sorted(unknown)}")
        by_date[_partition_date(table, row)].append({k: v for k, v in row.items() if k != "submission_date"})
    for date, date_rows in sorted(by_date.items()):
        part = table_dir / f"submission_date={date}"
        part.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(date_rows, schema=schema), part / "part-00000.parquet")
    table_dir.mkdir(parents=True, exist_ok=True)
    return table_dir


def write_tables(root: str | Path, **tables: Iterable[Mapping]) -> str:
    """Write several tables (``clients_daily=[...]``, ...) under ``root``; return the root as a string."""
    for table, rows in tables.items():
        write_table(root, table, rows)
    return str(root)
