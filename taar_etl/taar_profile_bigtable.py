"""``python -m taar_etl.taar_profile_bigtable``: client profiles into the profile store (SPEC §8.5).

Steps (``--steps``, a comma list, always run in this order; each is idempotent):

* ``extract``: ``clients_last_seen`` at D; client id not null and Firefox; at
  least one active add-on; deterministic sampling ``xxhash64(seed, client_id) mod
  10⁶ < rate·10⁶``; minus the clients in ``deletion_request`` over
  [D − ``--deletion-window-days``, R], R being ``--run-date`` (the day of the run,
  default D; a backfill of an older D passes today's date, so a client who opted
  out after D is never written back); the SPEC §3.5 payload, zlib-compressed,
  keyed by the hashed client id. Written to staging Parquet ``(row_key STRING,
  payload BINARY)`` under ``--staging`` (default
  ``<etl-store>/taar_profile/<YYYYMMDD>/``), then ``_manifest.json`` (row count, D).
* ``load``: creates the table with its GC rule when missing, then writes the
  staged rows in batches of ``--batch-size``, ``--parallelism`` batches in
  flight, each failed batch retried 3 times with backoff, skipping the rows of
  clients with a deletion request in [D − window, R] (staging may predate the
  request); written + skipped must equal the manifest's count. Cells are
  stamped at the end of D, so a rerun rewrites the same cells. A SQLite store then drops rows older than D − 90 days (the GC
  rule's emulation).
* ``delete-opt-outs``: deletes the rows of every client in ``deletion_request``
  over [min(R − window, last + 1), R], where ``last`` is the run date recorded by
  the last successful delete in ``<etl-store>/taar_profile/_last_delete.json``
  (so a gap between runs loses no request), then records R there.
* ``cleanup``: deletes the staging prefix of D.

Every read of ``deletion_request`` needs a partition for each day of its window
(an empty one on a day without requests): a missing day fails the step naming
it, and the delete marker does not move. Within one invocation a failed extract
or load skips the remaining extract/load steps, but ``delete-opt-outs`` and
``cleanup`` still run; the job then exits 1 with the first error.

Engines: ``local`` runs in this process (pyarrow + a thread pool); ``spark``
(Dataproc, via ``jobs/taar_profile_bigtable.py``) runs extract and load with
Spark, each partition writing with its own clients. ``delete-opt-outs`` and
``cleanup`` always run locally. Raw client ids are never logged or stored.

Exit codes: 0 done; 1 input missing (a day of a window without a partition),
zero profiles, no manifest, failed writes or a count mismatch; 2 usage error.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice

from taar.eligibility import client_passes
from taar.hashing import SAMPLE_BUCKETS, hash_client_id
from taar.profile import SOURCE_COLUMNS, ZLIB_LEVEL, encode_payload, row_to_payload
from taar_etl.cli import JobFailed, UsageError, base_parser, end_of_day, parse_date, run_job
from taar_etl.parallel import Progress, bounded_map
from taar_etl.tables import SourceError

logger = logging.getLogger(__name__)

JOB = "taar_profile_bigtable"
STEPS = ("extract", "load", "delete-opt-outs", "cleanup")
#: Spark's ``xxhash64`` seed; the Python form chains the same way (see :func:`sample_bucket`).
SPARK_XXHASH_SEED = 42
GC_MAX_AGE = dt.timedelta(days=90)
MANIFEST = "_manifest.json"
#: Marker of the last successful delete-opt-outs, in the ETL store.
DELETE_MARKER = "taar_profile/_last_delete.json"
PART_ROWS = 100_000
EXTRACT_COLUMNS = (*SOURCE_COLUMNS, "app_name")


# --------------------------------------------------------------------------- pure transforms


def sample_bucket(seed: int, client_id: str) -> int:
    """``pmod(xxhash64(CAST(seed AS BIGINT), client_id), 10⁶)`` exactly as Spark computes it.

    Spark hashes each argument in turn, feeding the previous hash as the next
    seed and starting from 42: a BIGINT as its 8 little-endian bytes, a string as
    its UTF-8 bytes. The result is a signed 64-bit value; ``pmod`` keeps the
    bucket non-negative (Python's ``%`` does the same).
    """
    import xxhash

    h = xxhash.xxh64_intdigest(struct.pack("<q", seed), seed=SPARK_XXHASH_SEED)
    h = xxhash.xxh64_intdigest(client_id.encode("utf-8"), seed=h)
    signed = h - (1 << 64) if h >= (1 << 63) else h
    return signed % SAMPLE_BUCKETS


def spark_sample_bucket(seed: int, client_id_col: str = "client_id"):
    """The Spark column twin of :func:`sample_bucket`."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(F.lit(seed).cast("long"), F.col(client_id_col)), F.lit(SAMPLE_BUCKETS))


def sample_threshold(rate: float) -> int:
    """Buckets kept for ``rate``: ``rate · 10⁶`` (rate 1 keeps every bucket)."""
    return int(round(rate * SAMPLE_BUCKETS))


def profile_rows(rows: Iterable[Mapping], seed: int, sample_rate: float, opted_out: set[str],
                 zlib_level: int = ZLIB_LEVEL) -> Iterator[tuple[str, bytes]]:
    """``clients_last_seen`` rows → ``(hashed id, zlib payload)`` for the clients extract keeps."""
    threshold = sample_threshold(sample_rate)
    for row in rows:
        # the client filter without a channel rule, like the Spark extract (SPEC §7.4)
        if not client_passes(row, "all") or not row.get("active_addons"):
            continue
        client_id = row["client_id"]
        if client_id in opted_out or sample_bucket(seed, client_id) >= threshold:
            continue
        payload = row_to_payload(row)
        yield payload["client_id"], encode_payload(payload, zlib_level)


def end_of_day_ms(date: dt.date) -> int:
    """Cell timestamp of a load for D: the end of D in milliseconds since the epoch."""
    return int(end_of_day(date).timestamp()) * 1000


def batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class BatchWriter:
    """Writes rows (or deletes keys) in batches with bounded parallelism and retries.

    Holds only the store URI and numbers, so it pickles to Spark executors; each
    call opens one store per worker thread and closes them at the end.
    """

    uri: str
    ts_ms: int
    batch_size: int = 500
    parallelism: int = 8
    retries: int = 3
    backoff_s: float = 0.5

    def _run(self, items: Iterable, op: str, progress: Progress | None = None) -> int:
        from taar.storage import open_profile_store

        local, opened, lock = threading.local(), [], threading.Lock()

        def store():
            if getattr(local, "store", None) is None:
                local.store = open_profile_store(self.uri)
                with lock:
                    opened.append(local.store)
            return local.store

        def send(batch):
            for attempt in range(self.retries + 1):
                try:
                    if op == "put":
                        return store().put_many(batch, self.ts_ms)
                    return store().delete_many(batch)
                except Exception as exc:  # any failed batch is retried; the writes are idempotent
                    if attempt == self.retries:
                        raise JobFailed(f"{op} of a batch of {len(batch)} rows to {self.uri} failed after "
                                        f"{self.retries} retries: {exc}") from exc
                    delay = self.backoff_s * (2 ** attempt)
                    logger.warning("%s batch failed (%s); retry %d in %.2f s", op, exc, attempt + 1, delay)
                    time.sleep(delay)

        total = 0
        try:
            for sent in bounded_map(send, batches(items, self.batch_size), self.parallelism):
                total += sent
                if progress is not None:
                    progress.advance(sent)
        finally:
            for s in opened:
                if hasattr(s, "close"):
                    s.close()
        return total

    def put(self, rows: Iterable[tuple[str, bytes]], progress: Progress | None = None) -> int:
        """Write ``(row_key, payload)`` rows; return how many were written."""
        return self._run(rows, "put", progress)

    def delete(self, keys: Iterable[str], progress: Progress | None = None) -> int:
        """Delete rows by key; return how many keys were sent."""
        return self._run(keys, "delete", progress)

    def put_partition(self, rows) -> Iterator[int]:
        """``mapPartitions`` entry point: write a partition of Spark rows, yield the count."""
        yield self.put((r["row_key"], bytes(r["payload"])) for r in rows)


# --------------------------------------------------------------------------- staging


class Staging:
    """The staging Parquet parts and manifest of one date, under ``prefix`` of a store."""

    def __init__(self, store_uri: str, prefix: str):
        from taar.storage import open_model_store

        self.store = open_model_store(store_uri)
        self.prefix = prefix.rstrip("/") + "/"

    @classmethod
    def for_options(cls, options) -> Staging:
        if options.staging:
            parent, _, leaf = options.staging.rstrip("/").rpartition("/")
            parent = parent or "."
            if not leaf or parent in ("gs:", "gs:/"):
                raise UsageError(f"--staging {options.staging!r} must name a directory inside a store")
            return cls(parent, leaf)
        return cls(options.etl_store, f"taar_profile/{options.date:%Y%m%d}")

    @property
    def uri(self) -> str:
        return f"{self.store.uri}/{self.prefix}"

    def clear(self) -> int:
        return self.store.delete(self.prefix)

    def part_names(self) -> list[str]:
        return [n for n in self.store.list(self.prefix) if n.endswith(".parquet")]

    def write_part(self, index: int, table) -> None:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.store.write_bytes(f"{self.prefix}part-{index:05d}.parquet", buffer.getvalue())

    def rows(self) -> Iterator[tuple[str, bytes]]:
        import pyarrow.parquet as pq

        for name in self.part_names():
            table = pq.read_table(io.BytesIO(self.store.read_bytes(name)), columns=["row_key", "payload"])
            yield from zip(table.column("row_key").to_pylist(), table.column("payload").to_pylist(), strict=True)

    def manifest(self) -> dict | None:
        if self.store.stat(self.prefix + MANIFEST) is None:
            return None
        return json.loads(self.store.read_bytes(self.prefix + MANIFEST))

    def write_manifest(self, manifest: Mapping) -> None:
        self.store.write_bytes(self.prefix + MANIFEST, json.dumps(manifest, sort_keys=True).encode("utf-8"))


# --------------------------------------------------------------------------- steps


def deletion_window(date: dt.date, run_date: dt.date, window_days: int) -> tuple[dt.date, dt.date]:
    """Requests extract and load of ``date`` honour: ``[date - window_days, run_date]``."""
    return date - dt.timedelta(days=window_days), run_date


def delete_window(run_date: dt.date, window_days: int, last_delete: dt.date | None) -> tuple[dt.date, dt.date]:
    """Requests the delete step applies: the usual window, widened back to the day after the last
    successful delete (``last_delete``) when a run gap was longer."""
    start = run_date - dt.timedelta(days=window_days)
    if last_delete is not None:
        start = min(start, last_delete + dt.timedelta(days=1))
    return start, run_date


def read_last_delete(etl_store: str) -> dt.date | None:
    """The run date recorded by the last successful delete, or ``None`` before the first one."""
    from taar.storage import open_model_store

    store = open_model_store(etl_store)
    if store.stat(DELETE_MARKER) is None:
        return None
    return dt.date.fromisoformat(json.loads(store.read_bytes(DELETE_MARKER))["through"])


def write_last_delete(etl_store: str, run_date: dt.date, start: dt.date, deleted: int) -> None:
    from taar.storage import open_model_store

    previous = read_last_delete(etl_store)
    through = max(run_date, previous) if previous else run_date  # an older run never moves it back
    marker = {"through": through.isoformat(), "window_start": start.isoformat(), "deleted": deleted}
    open_model_store(etl_store).write_bytes(DELETE_MARKER, json.dumps(marker, sort_keys=True).encode("utf-8"))


def opted_out_ids(options, start: dt.date, end: dt.date) -> set[str]:
    """Raw client ids with a deletion request in ``[start, end]`` (kept in memory, never logged).

    Every day of the window must have a partition (:func:`taar_etl.sources.check_complete`),
    whatever ``--allow-missing-days`` says: a deletion cannot be skipped.
    """
    from taar_etl import sources

    table = sources.read_table(options.source, "deletion_request", ["client_id"], start, end,
                               project=options.bq_project, tables=sources.bq_tables(options.bq_tables))
    return {c for c in table.column("client_id").to_pylist() if c}


def extract_opted_out(options) -> set[str]:
    return opted_out_ids(options, *deletion_window(options.date, options.run_date, options.deletion_window_days))


def extract_local(options, staging: Staging) -> int:
    import pyarrow as pa

    from taar_etl import sources

    opted_out = extract_opted_out(options)
    staging.clear()
    schema = pa.schema([("row_key", pa.string()), ("payload", pa.binary())])
    tables = sources.bq_tables(options.bq_tables)
    source_rows = (row for batch in sources.iter_batches(options.source, "clients_last_seen", EXTRACT_COLUMNS, options.date,
                                                         options.date, project=options.bq_project, tables=tables,
                                                         allow_missing_days=options.allow_missing_days)
                   for row in batch.to_pylist())
    total, parts = 0, 0
    for part in batches(profile_rows(source_rows, options.seed, options.sample_rate, opted_out, options.zlib_level), PART_ROWS):
        keys, payloads = zip(*part, strict=True)
        staging.write_part(parts, pa.table([list(keys), list(payloads)], schema=schema))
        total, parts = total + len(part), parts + 1
    logger.info("extracted %d profiles (%d opt-outs in the window) into %d parts", total, len(opted_out), parts,
                extra={"fields": {"profiles": total, "opt_outs": len(opted_out), "parts": parts}})
    return total


def spark_opted_out(spark, options, tables, start: dt.date, end: dt.date):
    """Distinct ``client_id`` of the deletion requests in ``[start, end]``, every day's partition checked."""
    from pyspark.sql import functions as F

    from taar_etl import sources
    from taar_etl.spark.io import read_table

    requests = read_table(spark, options.source, "deletion_request", ["client_id", "submission_date"], start, end,
                          bq_tables=tables)
    if options.source == "bq":  # BigQuery has no empty partitions: a day without rows is missing
        present = {r["submission_date"] for r in requests.select("submission_date").distinct().collect()}
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        missing = [d for d in days if d not in present]
        if missing:
            raise SourceError(sources.missing_message("deletion_request", missing))
    else:
        sources.check_complete(options.source, "deletion_request", start, end)
    return requests.where(F.col("client_id").isNotNull()).select("client_id").distinct()


def extract_spark(options, staging: Staging, spark) -> int:
    import zlib

    from pyspark.sql import functions as F
    from pyspark.sql.types import BinaryType

    from taar.eligibility import client_filter_column
    from taar.profile import spark_payload_json_column
    from taar_etl import sources
    from taar_etl.spark.io import read_table

    tables = sources.bq_tables(options.bq_tables)
    level = options.zlib_level
    clients = (read_table(spark, options.source, "clients_last_seen", list(EXTRACT_COLUMNS), options.date, options.date,
                          bq_tables=tables)
               .where(client_filter_column("all")).where(F.size("active_addons") >= 1)
               .where(spark_sample_bucket(options.seed) < sample_threshold(options.sample_rate)))
    opted_out = spark_opted_out(spark, options, tables,
                                *deletion_window(options.date, options.run_date, options.deletion_window_days))
    # A plain (not Arrow) UDF: executors need no pyarrow for it.
    compress = F.udf(lambda s: zlib.compress(s.encode("utf-8"), level), BinaryType(), useArrow=False)
    # The opt-out list is small (a fraction of a percent of clients): broadcast it rather than shuffle both sides.
    rows = clients.join(F.broadcast(opted_out), "client_id", "left_anti").select(
        F.sha2("client_id", 256).alias("row_key"), compress(spark_payload_json_column()).alias("payload"))
    staging.clear()
    rows.write.mode("overwrite").parquet(staging.uri)
    return spark.read.parquet(staging.uri).count()


def run_extract(options, staging: Staging, spark=None) -> None:
    total = extract_spark(options, staging, spark) if spark is not None else extract_local(options, staging)
    if total == 0:
        raise JobFailed(f"no profiles to extract from clients_last_seen for {options.date}")
    staging.write_manifest({"date": options.date.isoformat(), "rows": total, "engine": options.engine, "seed": options.seed,
                            "sample_rate": options.sample_rate})


def writer_for(options) -> BatchWriter:
    parallelism = 1 if options.profile_store.startswith("sqlite:") else options.parallelism  # one SQLite writer at a time
    return BatchWriter(options.profile_store, end_of_day_ms(options.date), options.batch_size, parallelism, options.write_retries,
                       options.retry_backoff)


def run_load(options, staging: Staging, spark=None) -> None:
    from taar.storage import open_profile_store

    manifest = staging.manifest()
    if manifest is None:
        raise JobFailed(f"no {MANIFEST} under {staging.uri}: run --steps extract for {options.date} first")
    if manifest.get("date") != options.date.isoformat():
        raise JobFailed(f"staging {staging.uri} holds {manifest.get('date')}, not {options.date}")
    # Requests may postdate the extract (staging kept across a failure, a backfill): skip those rows.
    gone = frozenset(hash_client_id(c) for c in extract_opted_out(options))
    store = open_profile_store(options.profile_store)
    store.ensure_table()
    writer = writer_for(options)
    if spark is not None:
        staged = spark.read.parquet(staging.uri)
        kept = staged.where(~staged["row_key"].isin(sorted(gone))) if gone else staged
        written = kept.rdd.mapPartitions(writer.put_partition).sum()
        skipped = staged.count() - kept.count() if gone else 0
    else:
        progress = Progress("profiles loaded", manifest["rows"], options.progress_interval)
        counter = {"skipped": 0}

        def not_opted_out(rows):
            for key, payload in rows:
                if key in gone:
                    counter["skipped"] += 1
                else:
                    yield key, payload

        written = writer.put(not_opted_out(staging.rows()), progress)
        skipped = counter["skipped"]
        progress.finish()
    if written + skipped != manifest["rows"]:
        raise JobFailed(f"wrote {written} profiles and skipped {skipped} opted-out ones but the manifest lists "
                        f"{manifest['rows']}")
    if hasattr(store, "gc"):  # SQLite has no GC rule: emulate max age 90 days
        store.gc(end_of_day_ms(options.date) - int(GC_MAX_AGE.total_seconds()) * 1000)
    logger.info("loaded %d profiles into %s (%d skipped: deletion requested after the extract)", written,
                options.profile_store, skipped, extra={"fields": {"profiles": written, "skipped_opt_outs": skipped}})


def run_delete_opt_outs(options) -> None:
    from taar.storage import open_profile_store

    last = read_last_delete(options.etl_store)
    start, end = delete_window(options.run_date, options.deletion_window_days, last)
    keys = sorted({hash_client_id(c) for c in opted_out_ids(options, start, end)})
    open_profile_store(options.profile_store).ensure_table()
    deleted = writer_for(options).delete(keys)
    if deleted != len(keys):
        raise JobFailed(f"sent {deleted} deletions for {len(keys)} opted-out clients")
    write_last_delete(options.etl_store, options.run_date, start, deleted)
    logger.info("deleted the profiles of %d opted-out clients (requests of %s to %s; last delete: %s)", deleted,
                start, end, last, extra={"fields": {"deleted": deleted, "window_start": start.isoformat(),
                                                    "window_end": end.isoformat()}})


def build_parser():
    from taar_etl import sources  # pyarrow is imported only by the steps that read sources

    p = base_parser(__doc__, spark=True, prog="python -m taar_etl.taar_profile_bigtable")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    p.add_argument("--profile-store", default=os.environ.get("TAAR_PROFILE_STORE", "sqlite:///./var/profiles.sqlite3"),
                   help="sqlite:///path or bigtable://project/instance/table")
    p.add_argument("--staging", default=None, help="staging location (default <etl-store>/taar_profile/<YYYYMMDD>/)")
    p.add_argument("--sample-rate", type=float, default=1.0, help="share of clients kept (deterministic)")
    p.add_argument("--run-date", type=parse_date, default=None,
                   help="day of this run (default --date); deletion requests up to it are honoured")
    p.add_argument("--deletion-window-days", type=int, default=29, help="opt-outs from [D - n, run date]")
    p.add_argument("--engine", choices=("local", "spark"), default="local", help="extract/load engine")
    p.add_argument("--batch-size", type=int, default=500, help="rows per mutate_rows call")
    p.add_argument("--parallelism", type=int, default=8, help="batches in flight per writer")
    p.add_argument("--zlib-level", type=int, default=ZLIB_LEVEL, help="payload compression level")
    p.add_argument("--write-retries", type=int, default=3, help="retries of a failed batch")
    p.add_argument("--retry-backoff", type=float, default=0.5, help="first retry delay (s)")
    p.add_argument("--progress-interval", type=float, default=30.0, help="seconds between progress logs")
    sources.add_bq_arguments(p)
    sources.add_completeness_argument(p)
    return p


def parse_steps(value: str) -> list[str]:
    asked = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in asked if s not in STEPS]
    if unknown or not asked:
        raise UsageError(f"--steps {value!r}: expected a comma list of {', '.join(STEPS)}")
    return [s for s in STEPS if s in asked]


def run(options) -> None:
    steps = parse_steps(options.steps)
    if not 0 < options.sample_rate <= 1 or options.batch_size < 1 or options.parallelism < 1 or not 0 <= options.zlib_level <= 9:
        raise UsageError("need 0 < --sample-rate <= 1, --batch-size >= 1, --parallelism >= 1, --zlib-level 0-9")
    if options.deletion_window_days < 0 or options.write_retries < 0 or options.allow_missing_days < 0:
        raise UsageError("--deletion-window-days, --write-retries and --allow-missing-days must be >= 0")
    options.run_date = options.run_date or options.date
    if options.run_date < options.date:
        raise UsageError(f"--run-date {options.run_date} is before --date {options.date}")
    staging = Staging.for_options(options)
    spark = None
    if options.engine == "spark" and {"extract", "load"} & set(steps):
        from taar_etl.spark.io import build_spark_session

        if (options.spark_master or "").startswith("local"):  # executors must run this interpreter (its packages)
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = build_spark_session(JOB, options.spark_master, options.shuffle_partitions)
    failure: Exception | None = None
    for step in steps:
        if failure is not None and step in ("extract", "load"):
            logger.warning("step %s skipped: an earlier step failed", step)
            continue
        started = time.monotonic()
        try:
            if step == "extract":
                run_extract(options, staging, spark)
            elif step == "load":
                run_load(options, staging, spark)
            elif step == "delete-opt-outs":
                run_delete_opt_outs(options)
            else:
                logger.info("removed %d staging objects under %s", staging.clear(), staging.uri)
        except Exception as exc:  # deletion and cleanup run whatever happened before them
            if failure is None:
                failure = exc
            logger.error("step %s failed: %s", step, exc)
            continue
        logger.info("step %s done", step, extra={"fields": {"step": step,
                                                             "duration_s": round(time.monotonic() - started, 3)}})
    if failure is not None:
        raise failure


def main(argv: list[str] | None = None) -> int:
    return run_job(run, build_parser().parse_args(argv), JOB)


if __name__ == "__main__":
    sys.exit(main())
