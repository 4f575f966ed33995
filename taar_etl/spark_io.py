"""SparkSession construction and table reading shared by the PySpark jobs (SPEC §7.1, §8.0).

A job's ``--source`` is either ``bq`` (BigQuery through the spark-bigquery
connector, production) or a local Parquet root laid out as SPEC §7.3. Either way
the reader selects only the requested columns and filters on the
``submission_date`` partition range before anything else is read.
"""

from __future__ import annotations

import datetime as dt
import logging
import os

logger = logging.getLogger(__name__)

#: Default fully qualified BigQuery tables (SPEC §7.1); override per job.
BQ_TABLES = {
    "clients_daily": "moz-fx-data-shared-prod.telemetry.clients_daily",
    "clients_last_seen": "moz-fx-data-shared-prod.telemetry.clients_last_seen",
    "addons": "moz-fx-data-shared-prod.telemetry.addons",
    "deletion_request": "moz-fx-data-shared-prod.telemetry.deletion_request",
}


class SourceError(RuntimeError):
    """An input table is missing or empty for the requested dates."""


def build_spark_session(app_name, master=None, shuffle_partitions=None, checkpoint_dir=None):
    """Return a SparkSession in UTC; local masters get the UI off and few shuffle partitions."""
    from pyspark.sql import SparkSession

    master = master or os.environ.get("TAAR_SPARK_MASTER")
    builder = SparkSession.builder.appName(app_name).config("spark.sql.session.timeZone", "UTC")
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (
            builder.config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", str(shuffle_partitions or 4))
            .config("spark.default.parallelism", str(shuffle_partitions or 4))
            .config("spark.driver.memory", os.environ.get("TAAR_SPARK_DRIVER_MEMORY", "2g"))
            .config("spark.sql.adaptive.enabled", "true")
        )
    elif shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    if checkpoint_dir:
        session.sparkContext.setCheckpointDir(checkpoint_dir)
    return session


def read_table(spark, source, table, columns, start, end, date_column="submission_date", bq_tables=None):
    """Read ``columns`` of ``table`` for the dates ``[start, end]`` (inclusive).

    ``source`` is ``"bq"`` or a Parquet root. Raises :class:`SourceError` when the
    local table has no partition in the range.
    """
    from pyspark.sql import functions as F

    if isinstance(start, dt.date):
        start = start.isoformat()
    if isinstance(end, dt.date):
        end = end.isoformat()
    if source == "bq":
        name = (bq_tables or BQ_TABLES)[table]
        bq_date = "DATE(submission_timestamp)" if table == "deletion_request" else date_column
        df = (
            spark.read.format("bigquery")
            .option("table", name)
            .option("viewsEnabled", "true")
            .option("filter", f"{bq_date} >= '{start}' AND {bq_date} <= '{end}'")
            .load()
        )
        if table == "deletion_request":
            df = df.withColumn(date_column, F.to_date("submission_timestamp"))
        return df.select(*columns)
    path = os.path.join(source, table)
    if not os.path.isdir(path):
        raise SourceError(f"input table {table!r} not found at {path}")
    df = spark.read.option("basePath", path).parquet(path)
    df = df.where((F.col(date_column) >= F.lit(start).cast("date")) & (F.col(date_column) <= F.lit(end).cast("date")))
    return df.select(*columns)
