"""Arrow schemas of the telemetry tables as the jobs read them (SPEC §7.2, §7.3).

One definition serves the synthetic generator and the tests' Parquet builders.
``TABLE_SCHEMAS`` are the logical tables (with ``submission_date`` where the
table has it); ``FILE_SCHEMAS`` are what a Parquet file holds, since
``submission_date`` lives in the Hive partition directory name.
"""

import pyarrow as pa

#: The 16-field ADDON struct, in schema order.
ADDON = pa.struct([
    ("addon_id", pa.string()),
    ("blocklisted", pa.bool_()),
    ("name", pa.string()),
    ("user_disabled", pa.bool_()),
    ("app_disabled", pa.bool_()),
    ("version", pa.string()),
    ("scope", pa.int64()),
    ("type", pa.string()),
    ("foreign_install", pa.bool_()),
    ("has_binary_components", pa.bool_()),
    ("install_day", pa.int64()),
    ("update_day", pa.int64()),
    ("signed_state", pa.int64()),
    ("is_system", pa.bool_()),
    ("is_web_extension", pa.bool_()),
    ("multiprocess_compatible", pa.bool_()),
])

#: Columns shared by ``clients_daily`` and ``clients_last_seen`` (without the date).
CLIENT_COLUMNS = [
    ("client_id", pa.string()),
    ("sample_id", pa.int64()),
    ("app_name", pa.string()),
    ("normalized_channel", pa.string()),
    ("locale", pa.string()),
    ("city", pa.string()),
    ("os", pa.string()),
    ("subsession_hours_sum", pa.float64()),
    ("places_bookmarks_count_mean", pa.float64()),
    ("scalar_parent_browser_engagement_tab_open_event_count_sum", pa.int64()),
    ("scalar_parent_browser_engagement_total_uri_count_sum", pa.int64()),
    ("scalar_parent_browser_engagement_unique_domains_count_mean", pa.float64()),
    ("active_addons", pa.list_(ADDON)),
]
ADDONS_COLUMNS = [
    ("client_id", pa.string()),
    ("sample_id", pa.int64()),
    ("normalized_channel", pa.string()),
    ("addon_id", pa.string()),
    ("is_system", pa.bool_()),
    ("user_disabled", pa.bool_()),
    ("app_disabled", pa.bool_()),
    ("type", pa.string()),
    ("foreign_install", pa.bool_()),
    ("blocklisted", pa.bool_()),
    ("signed_state", pa.int64()),
]
SUBMISSION_DATE = ("submission_date", pa.date32())

#: What a Parquet file of each table holds.
FILE_SCHEMAS: dict[str, pa.Schema] = {
    "clients_daily": pa.schema(CLIENT_COLUMNS),
    "clients_last_seen": pa.schema([*CLIENT_COLUMNS, ("days_since_seen", pa.int64())]),
    "addons": pa.schema(ADDONS_COLUMNS),
    "deletion_request": pa.schema([("submission_timestamp", pa.timestamp("us", tz="UTC")),
                                   ("client_id", pa.string())]),
}
#: The logical tables of SPEC §7.2 (``deletion_request`` is partitioned by its timestamp's date).
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    name: pa.schema([SUBMISSION_DATE, *schema]) if name != "deletion_request" else schema
    for name, schema in FILE_SCHEMAS.items()
}
