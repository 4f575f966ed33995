"""SparkSession construction and table reading shared by the PySpark jobs (SPEC §7.1, §8.0).

A job's ``--source`` is either ``bq`` (BigQuery through the spark-bigquery
connector, production) or a local Parquet root laid out as SPEC §7.3. Either way
the reader selects only the requested columns and filters on the
``submission_date`` partition range before anything else is read.

The helpers below are shared by every Spark job so they select and sample the
same way: :func:`job_session` (reuse an active session, stop only one it made),
:func:`xxhash_order` (seeded ordering key instead of ``rand()``),
:func:`sample_clients`, :func:`latest_row_per_client`,
:func:`read_input_artifact` (dated input artifacts of the same DAG run),
:func:`add_source_arguments` / :func:`read_source` (``--bq-tables`` overrides and
the views' materialisation dataset), :func:`persisted` (read a source once, SPEC
§8.0) and :func:`publish_job_metrics` (SPEC §9.3).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys

from taar.hashing import SAMPLE_BUCKETS
from taar_etl.tables import BQ_TABLES, SourceError, add_bq_table_arguments, parse_bq_tables

logger = logging.getLogger(__name__)


def build_spark_session(app_name, master=None, shuffle_partitions=None, checkpoint_dir=None):
    """Return a SparkSession in UTC; local masters get the UI off and few shuffle partitions."""
    from pyspark.sql import SparkSession

    master = master or os.environ.get("TAAR_SPARK_MASTER")
    builder = SparkSession.builder.appName(app_name).config("spark.sql.session.timeZone", "UTC")
    if master:
        builder = builder.master(master)
    if master and master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # local Python workers must run this interpreter (the venv with pyarrow, xxhash, taar), not
        # whatever `python3` is first on PATH
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
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


def window_days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day of the closed range ``[start, end]``, oldest first."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def check_window(table: str, days, present, allow_missing_days: int = 0) -> list[dt.date]:
    """Raise :class:`SourceError` when more than ``allow_missing_days`` of ``days`` have no partition.

    The message names every missing day: ``missing partitions of <table>: YYYY-MM-DD, ...``
    (SPEC §8.0). Returns the missing days (logged as a warning when tolerated).
    """
    present = set(present)
    missing = [d for d in days if d not in present]
    if not missing:
        return missing
    named = f"missing partitions of {table}: {', '.join(d.isoformat() for d in missing)}"
    if len(missing) > allow_missing_days:
        hint = f" (--allow-missing-days {allow_missing_days} tolerates at most {allow_missing_days})" \
            if allow_missing_days else ""
        raise SourceError(named + hint)
    logger.warning("%s (tolerated by --allow-missing-days %d)", named, allow_missing_days)
    return missing


def local_partitions(path: str, date_column: str, days) -> dict[dt.date, str]:
    """The partition directories of ``days`` under the table directory ``path``.

    Each day's directory is looked up by name (``<date_column>=YYYY-MM-DD``), so
    discovery costs one ``stat`` per day of the window and never lists the table:
    days outside the window are not touched, however many the table holds.
    """
    found = {}
    for day in days:
        candidate = os.path.join(path, f"{date_column}={day.isoformat()}")
        if os.path.isdir(candidate):
            found[day] = candidate
    return found


def read_table(spark, source, table, columns, start, end, date_column="submission_date", bq_tables=None,
               materialization_dataset=None, allow_missing_days=0):
    """Read ``columns`` of ``table`` for the dates ``[start, end]`` (inclusive).

    ``source`` is ``"bq"`` or a Parquet root. Every day of the range must have a
    partition: more than ``allow_missing_days`` missing days raise
    :class:`SourceError` naming them (SPEC §8.0), as does a local table that does
    not exist. Locally only the range's partition directories are handed to Spark
    (:func:`local_partitions`); on BigQuery the partition filter is pushed down and
    the days present are the distinct dates of that filtered read.
    ``materialization_dataset`` is the BigQuery dataset the connector materialises
    views into (``bq`` only).
    """
    from pyspark.sql import functions as F

    if isinstance(start, str):
        start = dt.date.fromisoformat(start)
    if isinstance(end, str):
        end = dt.date.fromisoformat(end)
    days = window_days(start, end)
    if source == "bq":
        name = (bq_tables or BQ_TABLES)[table]
        bq_date = "DATE(submission_timestamp)" if table == "deletion_request" else date_column
        reader = (
            spark.read.format("bigquery")
            .option("table", name)
            .option("viewsEnabled", "true")
            .option("filter", f"{bq_date} >= '{start}' AND {bq_date} <= '{end}'")
        )
        if materialization_dataset:
            reader = reader.option("materializationDataset", materialization_dataset)
        df = reader.load()
        if table == "deletion_request":
            df = df.withColumn(date_column, F.to_date("submission_timestamp"))
        present = [r[0] for r in df.select(date_column).distinct().collect()]
        check_window(table, days, present, allow_missing_days)
        return df.select(*columns)
    path = os.path.join(source, table)
    if not os.path.isdir(path):
        raise SourceError(f"input table {table!r} not found at {path}")
    partitions = local_partitions(path, date_column, days)
    check_window(table, days, partitions, allow_missing_days)
    if not partitions:
        raise SourceError(f"no partition of {table} in [{start}, {end}]")
    # only the window's directories: Spark lists and reads nothing else (basePath keeps the
    # partition column)
    df = spark.read.option("basePath", path).parquet(*partitions.values())
    df = df.where((F.col(date_column) >= F.lit(start.isoformat()).cast("date"))
                  & (F.col(date_column) <= F.lit(end.isoformat()).cast("date")))
    return df.select(*columns)


# --------------------------------------------------------------------------- helpers shared by the jobs


@contextlib.contextmanager
def job_session(app_name, master=None, shuffle_partitions=None, checkpoint_dir=None):
    """Yield the SparkSession a job runs in; stop it on exit only if this call created it.

    When a session is already active (a test run's shared session, a notebook) it is
    reused: ``shuffle_partitions`` is applied for the duration of the job and then
    restored, and the session is left running for its owner.
    """
    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()
    if existing is None:
        session = build_spark_session(app_name, master, shuffle_partitions, checkpoint_dir)
        try:
            yield session
        finally:
            session.stop()
        return
    key = "spark.sql.shuffle.partitions"
    previous = existing.conf.get(key)
    if shuffle_partitions:
        existing.conf.set(key, str(shuffle_partitions))
    if checkpoint_dir:
        existing.sparkContext.setCheckpointDir(checkpoint_dir)
    try:
        yield existing
    finally:
        existing.conf.set(key, previous)


def xxhash_order(seed, *cols):
    """``xxhash64(seed, key...)``: the seeded, partitioning-independent ordering key (SPEC §8.0).

    The seed is hashed first as a 64-bit integer, then each key column in turn
    (Spark's ``xxhash64`` chains each value's hash into the next as its seed).
    Sort by it, ties broken by the keys, instead of ever calling ``rand()``.
    """
    from pyspark.sql import functions as F

    return F.xxhash64(F.lit(int(seed)).cast("long"), *cols)


def sample_clients(df, rate, seed, column="client_id"):
    """Keep the rows whose ``xxhash64(seed, client_id) mod 10^6 < rate * 10^6`` (SPEC §8.5).

    The same client is kept or dropped whatever the partitioning; ``rate >= 1``
    keeps every row without hashing.
    """
    from pyspark.sql import functions as F

    if not 0 < rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {rate!r}")
    if rate >= 1:
        return df
    threshold = int(round(rate * SAMPLE_BUCKETS))
    return df.where(F.pmod(xxhash_order(seed, F.col(column)), F.lit(SAMPLE_BUCKETS)) < F.lit(threshold))



def latest_row_per_client(df, date_column="submission_date", client_column="client_id"):
    """Each client's row with the greatest ``date_column``.

    Two rows of one client on the same date (should not happen in ``clients_daily``)
    are ordered by a hash of the whole row, so the choice never depends on input
    order or partitioning.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    others = [c for c in df.columns if c not in (client_column, date_column)]
    order = [F.col(date_column).desc()]
    if others:
        order.append(F.xxhash64(*others).desc())
    w = Window.partitionBy(client_column).orderBy(*order)
    return df.withColumn("_latest_rank", F.row_number().over(w)).where("_latest_rank = 1").drop("_latest_rank")


def read_input_artifact(store, key, date, allow_latest=False):
    """Read an input artifact produced earlier in the same DAG run (SPEC §8.0).

    The dated copy for ``date`` is required; only with ``allow_latest`` does a
    missing dated copy fall back (with a warning) to the latest object. The object
    goes through the service-side normalisation (legacy shapes repaired, structure
    checked), so an unusable input raises :class:`taar.artifacts.ArtifactError`.
    Raises :class:`taar_etl.cli.JobFailed` naming the object when it is absent.
    """
    from taar.artifacts import normalise
    from taar.publishing import read_artifact
    from taar.storage import ArtifactNotFound
    from taar_etl.cli import JobFailed

    try:
        obj, descriptor = read_artifact(store, key, date=date)
    except ArtifactNotFound as exc:
        if not allow_latest:
            raise JobFailed(f"input {key!r} for {date:%Y-%m-%d} is missing ({exc}); "
                            "pass --allow-latest-inputs to use the latest copy") from exc
        obj, descriptor = read_artifact(store, key)
        logger.warning("input %s: no dated copy for %s, using the latest object (version %s)",
                       key, date, descriptor.version)
    logger.info("input %s version %s (%s, %d bytes)", key, descriptor.version, descriptor.uri, descriptor.size)
    return normalise(key, obj), descriptor


def add_source_arguments(parser):
    """Add the BigQuery flags every Spark job shares: ``--bq-tables`` (JSON, the container jobs' format too)
    and the views' materialisation dataset."""
    add_bq_table_arguments(parser)
    parser.add_argument("--allow-missing-days", type=non_negative_int, default=0, metavar="N",
                        help="tolerate up to N days of the input window without a partition (SPEC §8.0)")
    return parser


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0 (anything else is a usage error, exit 2)."""
    import argparse

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def bq_tables_from(options) -> dict[str, str]:
    """The table names in force: :data:`BQ_TABLES` with the ``--bq-tables`` overrides applied."""
    from taar_etl.cli import UsageError

    try:
        return parse_bq_tables(getattr(options, "bq_tables", None))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def read_source(spark, options, table, columns, start, end):
    """:func:`read_table` from the job's ``--source`` and BigQuery flags."""
    return read_table(spark, options.source, table, columns, start, end, bq_tables=bq_tables_from(options),
                      materialization_dataset=getattr(options, "bq_materialization_dataset", None),
                      allow_missing_days=getattr(options, "allow_missing_days", 0))


@contextlib.contextmanager
def persisted(df, what="input"):
    """Persist ``df`` (``MEMORY_AND_DISK``), materialise it with one ``count()``, yield it; unpersist on exit.

    The way a job reads its telemetry source once (SPEC §8.0): ``df`` is the smallest
    projection of the source that every later use shares; each of those uses then
    scans the persisted copy instead of the source (several BigQuery read sessions,
    and no common snapshot, otherwise). ``MEMORY_AND_DISK`` because a production
    window need not fit in executor memory: spilled blocks stay readable, where
    evicted ones would be recomputed from the source.

    A result derived from ``df`` and cached by the caller must be materialised by an
    action inside the ``with`` block: ``cache()`` is lazy, and a cache first filled
    after ``df`` is unpersisted would read the source again. Unpersisted also when
    the block raises.
    """
    from pyspark import StorageLevel

    frame = df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rows = frame.count()
        logger.info("%s persisted: %d rows", what, rows, extra={"fields": {"persisted": what, "rows": rows}})
        yield frame
    finally:
        frame.unpersist()


def publish_job_metrics(store, job, prefix, date, seed, params, inputs, outputs, evaluation=None,
                        force_latest=False):
    """Build the SPEC §9.3 sidecar of a job run (:func:`metrics_sidecar`) and publish it.

    Every Spark job's sidecar goes through here. Returns the
    :class:`taar.publishing.PublishResult` of the sidecar.
    """
    from taar.publishing import producer_tag, publish_metrics

    sidecar = metrics_sidecar(job, date, seed, params, inputs, outputs, evaluation)
    return publish_metrics(store, job, prefix, sidecar, date, producer_tag(job), force_latest)


def metrics_sidecar(job, date, seed, params, inputs, outputs, evaluation=None) -> dict:
    """The SPEC §9.3 metrics sidecar document (``evaluation`` is ``None`` for jobs without one)."""
    import taar

    return {"job": job, "date": date.isoformat(), "seed": seed, "package_version": taar.__version__,
            "params": dict(params), "inputs": dict(inputs), "outputs": dict(outputs), "evaluation": evaluation}
