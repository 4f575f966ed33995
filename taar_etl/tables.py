"""The source tables every job reads (SPEC §7.1), shared by the container and the Spark readers."""

from __future__ import annotations

#: Default fully qualified BigQuery tables (SPEC §7.1); override per job.
BQ_TABLES = {
    "clients_daily": "moz-fx-data-shared-prod.telemetry.clients_daily",
    "clients_last_seen": "moz-fx-data-shared-prod.telemetry.clients_last_seen",
    "addons": "moz-fx-data-shared-prod.telemetry.addons",
    "deletion_request": "moz-fx-data-shared-prod.telemetry.deletion_request",
}


class SourceError(RuntimeError):
    """An input table is missing or empty for the requested dates."""
