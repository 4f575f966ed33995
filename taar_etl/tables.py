"""The source tables every job reads (SPEC §7.1), shared by the container and the Spark readers."""

from __future__ import annotations

import json

#: Default fully qualified BigQuery tables (SPEC §7.1); override per job.
BQ_TABLES = {
    "clients_daily": "moz-fx-data-shared-prod.telemetry.clients_daily",
    "clients_last_seen": "moz-fx-data-shared-prod.telemetry.clients_last_seen",
    "addons": "moz-fx-data-shared-prod.telemetry.addons",
    "deletion_request": "moz-fx-data-shared-prod.telemetry.deletion_request",
}


class SourceError(RuntimeError):
    """An input table is missing or empty for the requested dates."""


def add_bq_table_arguments(parser) -> None:
    """The one BigQuery table flag format of every job, Spark and container alike (SPEC §7.1): the same JSON
    the DAGs' Variable ``taar_bq_tables`` holds, and the dataset views are materialised into."""
    parser.add_argument("--bq-tables", default="{}", metavar="JSON",
                        help='JSON {"table": "project.dataset.table"} overriding the default source tables '
                             f"({', '.join(BQ_TABLES)})")
    parser.add_argument("--bq-materialization-dataset", default=None,
                        help="dataset BigQuery views are materialised into (empty: none)")


def parse_bq_tables(option) -> dict[str, str]:
    """:data:`BQ_TABLES` with the ``--bq-tables`` overrides (JSON text or a mapping) applied.

    Raises ``ValueError`` naming the flag for anything but a JSON object of known tables to
    ``project.dataset.table`` names.
    """
    try:
        overrides = json.loads(option) if isinstance(option, str) else dict(option or {})
    except ValueError as exc:
        raise ValueError(f"--bq-tables is not JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--bq-tables must be a JSON object, got {option!r}")
    for table, name in overrides.items():
        if table not in BQ_TABLES or not isinstance(name, str) or len(name.split(".")) != 3 or not all(
                name.split(".")):
            raise ValueError(f"--bq-tables {table!r}: {name!r}: expected a table of {', '.join(BQ_TABLES)} "
                             "named project.dataset.table")
    return {**BQ_TABLES, **overrides}
