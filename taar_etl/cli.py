"""Command-line plumbing shared by every ETL job (SPEC §8.0).

Every job, container or Spark, builds its parser from :func:`base_parser`, runs
its body through :func:`run_job`, and so gets the same flags, JSON-line logs and
exit codes: 0 success, 1 runtime failure, 2 usage error, 3 validation or
quality-gate refusal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time

from taar.logs import MozlogFormatter

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


class UsageError(Exception):
    """A flag value is unusable (exit code 2)."""


class ValidationError(Exception):
    """A model or input failed validation before publishing (exit code 3)."""


class JobFailed(RuntimeError):
    """The job cannot produce a correct result (empty input, incomplete crawl...) (exit code 1)."""


def parse_date(value: str) -> dt.date:
    """Parse ``YYYY-MM-DD`` or ``YYYYMMDD`` (argparse type)."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"invalid date {value!r}: expected YYYY-MM-DD or YYYYMMDD")


def end_of_day(date: dt.date) -> dt.datetime:
    """D+1 00:00:00 UTC, the end of logical date D."""
    return dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def window(date: dt.date, days: int) -> tuple[dt.date, dt.date]:
    """The closed window of ``days`` days ending at ``date``."""
    return date - dt.timedelta(days=days - 1), date


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 on usage errors, which is our code too
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Flag defaults in the help, and the job's docstring as written (inputs, method, exit codes)."""


def log_level(value: str) -> str:
    """A :mod:`logging` level name (argparse type): an unknown name is a usage error, not a traceback."""
    name = value.upper()
    if not isinstance(logging.getLevelName(name), int):
        raise argparse.ArgumentTypeError(f"unknown log level {value!r}: use DEBUG, INFO, WARNING or ERROR")
    return name


def base_parser(doc: str, spark: bool = False, prog: str | None = None) -> argparse.ArgumentParser:
    """Parser with the common flags of SPEC §8.0 (``spark`` adds the Spark ones).

    ``doc`` is the job's module docstring: its first line is the description and
    the rest is printed after the flags by ``--help``.
    """
    summary, _, details = doc.strip().partition("\n")
    p = _Parser(prog=prog, description=summary, epilog=details.strip() or None, formatter_class=_HelpFormatter)
    p.add_argument("--date", required=True, type=parse_date, help="logical date D (YYYY-MM-DD or YYYYMMDD)")
    p.add_argument("--model-store", default=os.environ.get("TAAR_MODEL_STORE", "./var/models"),
                   help="model store URI (directory or gs://bucket/prefix)")
    p.add_argument("--etl-store", default=os.environ.get("TAAR_ETL_STORE", "./var/etl"),
                   help="ETL scratch store URI (staging, checkpoints, reports)")
    p.add_argument("--source", default=os.environ.get("TAAR_SOURCE", "./var/telemetry"),
                   help="'bq' for BigQuery, else a local Parquet root")
    p.add_argument("--seed", type=int, default=42, help="seed of every random choice")
    p.add_argument("--log-level", default="INFO", type=log_level, help="logging level")
    p.add_argument("--force-latest", action="store_true",
                   help="replace latest objects even when D is older than their date (backfills)")
    p.add_argument("--allow-latest-inputs", action="store_true",
                   help="fall back to the latest input artifacts when the dated copy for D is absent")
    p.add_argument("--channel", default="release", help="normalized_channel to keep ('all' disables)")
    if spark:
        p.add_argument("--spark-master", default=os.environ.get("TAAR_SPARK_MASTER"),
                       help="Spark master (unset on Dataproc)")
        p.add_argument("--shuffle-partitions", type=int, default=None, help="spark.sql.shuffle.partitions")
    return p


def configure_logging(level: str = "INFO", job: str = "", date: dt.date | None = None, seed=None) -> None:
    """Send mozlog JSON lines (``taar.logs``, the service's shape) to stdout with the job, date and seed."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(MozlogFormatter({"job": job, "date": date.isoformat() if date else None, "seed": seed}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("py4j", "urllib3", "google", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the SPEC §8.0 exit code."""
    from taar.artifacts import ArtifactError
    from taar.evaluation import GateRefused

    refused = (ValidationError, ArtifactError, GateRefused)
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, refused):
        return EXIT_REFUSED
    return EXIT_FAILURE


def run_job(body, options, job: str) -> int:
    """Run ``body(options)`` with logging set up; return the exit code (never raises)."""
    configure_logging(getattr(options, "log_level", "INFO"), job, getattr(options, "date", None),
                      getattr(options, "seed", None))
    started = time.monotonic()
    try:
        body(options)
    except Exception as exc:  # the single place where failures become exit codes
        code = exit_code_for(exc)
        logger.error("%s failed (exit %d): %s", job, code, exc, exc_info=code == EXIT_FAILURE)
        return code
    logger.info("%s finished", job, extra={"fields": {"duration_s": round(time.monotonic() - started, 3)}})
    return EXIT_OK
