"""taar_lite_guidguid: add-on co-installation counts for TAARlite (SPEC §8.8).

Submitted as a single PySpark script (``python jobs/taar_lite_guidguid.py --date D ...``
locally, ``gs://<artifacts>/taar/<ref>/jobs/taar_lite_guidguid.py`` on Dataproc).

Inputs
    ``clients_daily`` over the ``--days`` days ending at D (``--source``: ``bq`` or a
    Parquet root); ``amo_database`` dated D from the model store (the latest copy
    only with ``--allow-latest-inputs``), whose webextension GUIDs make an add-on valid.
    The curated whitelist is not used: TAARlite relates every listed add-on.

Method
    Filtered clients, sampled with ``xxhash64(seed, client_id) mod 10^6 <
    --sample-rate * 10^6``, one (latest) row each; their distinct eligible AMO
    webextension add-ons; clients with at least ``--min-addons`` of them. Every
    unordered pair {a, b} of a client's add-ons counts once, and ``C[a][b] = C[b][a]``
    is the number of clients having both (no self pairs). Pairs shared by fewer than
    ``--k-anonymity`` clients are suppressed in both directions; emptied rows vanish.
    ``--k-anonymity`` below the documented floor of 10 (SPEC §8.8) is refused (exit 2).

Artifacts
    ``coinstall`` (``taar/lite/guid_coinstallation.json.bz2`` + dated copy) and the
    metrics sidecar ``taar/lite/taar_lite_guidguid_metrics.json.bz2`` (``evaluation: null``).

Exit codes
    0 published; 1 runtime failure (no client or no pair left, every pair suppressed,
    missing input, write error); 2 usage error; 3 the model failed validation.
"""

from __future__ import annotations

import logging
import sys

from taar.eligibility import client_filter_column, eligible_column
from taar.publishing import producer_tag, publish
from taar.storage import open_model_store
from taar_etl.amo import webextension_guids
from taar_etl.cli import JobFailed, UsageError, base_parser, run_job, window
from taar_etl.spark.io import (
    add_source_arguments,
    job_session,
    latest_row_per_client,
    publish_job_metrics,
    read_input_artifact,
    read_source,
    sample_clients,
)

logger = logging.getLogger(__name__)

JOB = "taar_lite_guidguid"
METRICS_PREFIX = "taar/lite"
SOURCE_COLUMNS = ("client_id", "app_name", "normalized_channel", "active_addons", "submission_date")


#: Documented floor of the small-cell suppression (SPEC §8.8): weaker values are refused.
MIN_K_ANONYMITY = 10


def build_parser():
    p = base_parser(__doc__, spark=True, prog=JOB)
    add_source_arguments(p)
    p.add_argument("--days", type=int, default=1, help="days of clients_daily ending at D")
    p.add_argument("--sample-rate", type=float, default=1.0, help="share of clients kept (hash-based)")
    p.add_argument("--min-addons", type=int, default=2, help="valid add-ons a client needs")
    p.add_argument("--k-anonymity", type=int, default=10, help="suppress pairs shared by fewer clients")
    return p


def check_options(days: int, sample_rate: float, min_addons: int, k_anonymity: int) -> None:
    """Reject parameter values the method cannot use (exit 2)."""
    if days < 1:
        raise UsageError(f"--days must be >= 1, got {days}")
    if not 0 < sample_rate <= 1:
        raise UsageError(f"--sample-rate must be in (0, 1], got {sample_rate}")
    if min_addons < 2:
        raise UsageError(f"--min-addons must be >= 2 (a pair needs two add-ons), got {min_addons}")
    if k_anonymity < MIN_K_ANONYMITY:
        raise UsageError(f"--k-anonymity must be >= {MIN_K_ANONYMITY} (the documented floor), got {k_anonymity}")


# --------------------------------------------------------------------------- transforms (Spark)


def client_addons(daily, amo_webext, *, seed, sample_rate=1.0, min_addons=2, channel="release"):
    """``client_id, addons``: sorted distinct valid add-ons of each sampled client with enough of them.

    The AMO webextension set joins as a broadcast table rather than an ``isin``
    literal: production AMO has tens of thousands of GUIDs.
    """
    from pyspark.sql import functions as F

    spark = daily.sparkSession
    clients = sample_clients(daily.where(client_filter_column(channel)), sample_rate, seed)
    latest = latest_row_per_client(clients.select("client_id", "submission_date", "active_addons"))
    eligible = latest.select("client_id", F.explode(
        F.filter(F.coalesce(F.col("active_addons"), F.array()), lambda a: eligible_column(a))
    ).alias("addon"))
    webext = spark.createDataFrame([(g,) for g in sorted(amo_webext)], "addon_id string")
    valid = (eligible.select("client_id", F.col("addon.addon_id").alias("addon_id"))
             .join(F.broadcast(webext), "addon_id", "left_semi"))
    return (valid.groupBy("client_id").agg(F.array_sort(F.collect_set("addon_id")).alias("addons"))
            .where(F.size("addons") >= min_addons))


def pair_counts(clients):
    """``a, b, n`` with ``a < b``: the number of clients having both add-ons."""
    from pyspark.sql import functions as F

    firsts = clients.select(F.explode("addons").alias("a"), "addons")
    pairs = firsts.select("a", F.explode("addons").alias("b")).where(F.col("a") < F.col("b"))
    return pairs.groupBy("a", "b").agg(F.count(F.lit(1)).alias("n"))


# --------------------------------------------------------------------------- driver side


def coinstall_model(pairs, k_anonymity) -> dict:
    """``{a: {b: n}}`` in both directions from ``(a, b, n)`` rows, dropping pairs with ``n < k``."""
    model: dict[str, dict[str, int]] = {}
    for a, b, n in pairs:
        if n < k_anonymity or a == b:
            continue
        model.setdefault(a, {})[b] = int(n)
        model.setdefault(b, {})[a] = int(n)
    return model


def build_coinstall_model(daily, amo_webext, *, seed, sample_rate=1.0, min_addons=2, k_anonymity=10,
                          channel="release"):
    """The whole transform: ``clients_daily`` rows of the window -> ``(coinstall, stats)``."""
    from pyspark.sql import functions as F

    if not amo_webext:
        raise JobFailed("amo_database lists no webextension: no add-on can be valid")
    clients = client_addons(daily, amo_webext, seed=seed, sample_rate=sample_rate, min_addons=min_addons,
                            channel=channel).cache()
    try:
        n_clients = clients.count()
        if n_clients == 0:
            raise JobFailed(f"no sampled client in the window has >= {min_addons} valid add-ons")
        counts = pair_counts(clients).cache()  # at most (valid GUIDs)^2 / 2 rows
        try:
            n_pairs = counts.count()
            # Suppression runs in Spark, so only publishable pairs reach the driver.
            kept = counts.where(F.col("n") >= k_anonymity).collect()
        finally:
            counts.unpersist()
    finally:
        clients.unpersist()
    model = coinstall_model(((r["a"], r["b"], r["n"]) for r in kept), k_anonymity)
    if not model:
        raise JobFailed(f"all {n_pairs} add-on pairs of {n_clients} clients are shared by fewer than "
                        f"--k-anonymity {k_anonymity} clients")
    stats = {
        "inputs": {"clients": n_clients, "amo_webextensions": len(amo_webext)},
        "outputs": {"pairs_counted": n_pairs, "pairs_published": len(kept), "guids": len(model)},
    }
    return model, stats


def run(options) -> None:
    check_options(options.days, options.sample_rate, options.min_addons, options.k_anonymity)
    store = open_model_store(options.model_store)
    amo_db, _ = read_input_artifact(store, "amo_database", options.date, options.allow_latest_inputs)
    amo_webext = webextension_guids(amo_db)
    start, end = window(options.date, options.days)
    with job_session(JOB, options.spark_master, options.shuffle_partitions) as spark:
        daily = read_source(spark, options, "clients_daily", list(SOURCE_COLUMNS), start, end)
        model, stats = build_coinstall_model(
            daily, amo_webext, seed=options.seed, sample_rate=options.sample_rate,
            min_addons=options.min_addons, k_anonymity=options.k_anonymity, channel=options.channel,
        )
    logger.info("co-installation model built", extra={"fields": stats})
    publish(store, "coinstall", model, options.date, producer_tag(JOB), options.force_latest)
    sidecar_params = ("days", "sample_rate", "min_addons", "k_anonymity", "channel")
    publish_job_metrics(store, JOB, METRICS_PREFIX, options.date, options.seed,
                        {k: getattr(options, k) for k in sidecar_params}, stats["inputs"], stats["outputs"],
                        force_latest=options.force_latest)


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_job(run, options, JOB)


if __name__ == "__main__":
    sys.exit(main())
