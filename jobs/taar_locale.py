"""taar_locale: the most installed curated add-ons per locale, with differential privacy (SPEC §8.6).

Submitted as a single PySpark script (``python jobs/taar_locale.py --date D ...``
locally, ``gs://<artifacts>/taar/<ref>/jobs/taar_locale.py`` on Dataproc); the
logic lives in pure functions so tests run them on hand-built rows.

Inputs
    ``clients_daily`` over the ``--window-days`` days ending at D (``--source``:
    ``bq`` or a Parquet root); the curated ``whitelist`` dated D from the model
    store (the latest copy only with ``--allow-latest-inputs``).

Method
    Each client's latest row; its eligible whitelisted add-ons; at most
    ``--addon-limit`` (m) of them, picked by ``xxhash64(seed, client_id, addon_id)``
    order, so one client changes any count by at most m. Counts on the full grid of
    observed locales x whitelist get i.i.d. Laplace(0, m/epsilon) noise (numpy
    ``PCG64(--seed)``, locales then GUIDs in sorted order); locales whose noisy client
    count is below ``--min-locale-clients`` are dropped; the rest are shifted by their
    minimum, normalised and cut to the top ``--num-addons``. ``--no-noise`` turns the
    noise off (exact counts, for tests and debugging only).

Artifacts
    ``locale`` (``taar/locale/top10_dict.json.bz2`` + dated copy) and the metrics
    sidecar ``taar/locale/taar_locale_metrics.json.bz2`` (``evaluation: null``).

Exit codes
    0 published; 1 runtime failure (no client or no contribution in the window,
    every locale below the threshold, missing input, write error); 2 usage error;
    3 the model failed validation.
"""

from __future__ import annotations

import logging
import sys

import numpy as np

from taar.eligibility import client_filter_column, eligible_column
from taar.publishing import producer_tag, publish
from taar.storage import open_model_store
from taar_etl.cli import JobFailed, UsageError, base_parser, run_job, window
from taar_etl.spark.io import (
    add_source_arguments,
    job_session,
    latest_row_per_client,
    publish_job_metrics,
    read_input_artifact,
    read_source,
    xxhash_order,
)

logger = logging.getLogger(__name__)

JOB = "taar_locale"
METRICS_PREFIX = "taar/locale"
SOURCE_COLUMNS = ("client_id", "app_name", "normalized_channel", "locale", "active_addons", "submission_date")


def build_parser():
    p = base_parser(__doc__, spark=True, prog=JOB)
    add_source_arguments(p)
    p.add_argument("--window-days", type=int, default=28, help="days of clients_daily ending at D")
    p.add_argument("--num-addons", type=int, default=10, help="add-ons kept per locale")
    p.add_argument("--epsilon", type=float, default=0.4, help="privacy budget of the Laplace mechanism")
    p.add_argument("--addon-limit", type=int, default=1, help="add-ons counted per client (m)")
    p.add_argument("--min-locale-clients", type=float, default=500,
                   help="drop locales whose noisy client count is below this")
    p.add_argument("--no-noise", action="store_true", help="publish exact counts (tests/debugging only)")
    return p


def check_options(window_days: int, num_addons: int, addon_limit: int, epsilon: float,
                  min_locale_clients: int) -> None:
    """Reject parameter values the method cannot use (exit 2)."""
    for flag, value in (("--window-days", window_days), ("--num-addons", num_addons), ("--addon-limit", addon_limit)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if not epsilon > 0 or not np.isfinite(epsilon):
        raise UsageError(f"--epsilon must be a finite number > 0, got {epsilon}")
    if min_locale_clients < 0:
        raise UsageError(f"--min-locale-clients must be >= 0, got {min_locale_clients}")


# --------------------------------------------------------------------------- transforms (Spark)


def select_clients(daily, channel="release"):
    """Filtered clients with a usable locale, one (latest) row each: ``client_id, locale, active_addons``."""
    from pyspark.sql import functions as F

    locale = F.col("locale")
    usable = locale.isNotNull() & (locale != F.lit("")) & (locale != F.lit("null"))
    clients = daily.where(client_filter_column(channel) & usable)
    return latest_row_per_client(clients.select("client_id", "submission_date", "locale", "active_addons")) \
        .select("client_id", "locale", "active_addons")


def limited_contributions(clients, whitelist, addon_limit, seed):
    """``client_id, locale, addon_id``: at most ``addon_limit`` eligible whitelisted add-ons per client.

    The kept add-ons are those with the smallest ``xxhash64(seed, client_id, addon_id)``
    (ties by GUID), so the choice depends on the seed only, never on partitioning.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    valid = F.array_distinct(F.transform(
        F.filter(F.coalesce(F.col("active_addons"), F.array()), lambda a: eligible_column(a, whitelist=whitelist)),
        lambda a: a["addon_id"],
    ))
    exploded = clients.select("client_id", "locale", F.explode(valid).alias("addon_id"))
    order = Window.partitionBy("client_id").orderBy(xxhash_order(seed, "client_id", "addon_id"), "addon_id")
    return (exploded.withColumn("_rank", F.row_number().over(order))
            .where(F.col("_rank") <= addon_limit).drop("_rank"))


def locale_addon_counts(contributions) -> dict[tuple[str, str], int]:
    """``{(locale, guid): number of clients}`` from :func:`limited_contributions`."""
    rows = contributions.groupBy("locale", "addon_id").count().collect()
    return {(r["locale"], r["addon_id"]): int(r["count"]) for r in rows}


# --------------------------------------------------------------------------- transforms (driver, numpy)


def count_grid(counts, locales, whitelist) -> np.ndarray:
    """Dense ``len(locales) x len(whitelist)`` count matrix; cells absent from ``counts`` are 0."""
    row = {loc: i for i, loc in enumerate(locales)}
    col = {g: j for j, g in enumerate(whitelist)}
    grid = np.zeros((len(locales), len(whitelist)), dtype=np.float64)
    for (loc, guid), n in counts.items():
        if loc in row and guid in col:
            grid[row[loc], col[guid]] = n
    return grid


def add_laplace_noise(grid, epsilon, addon_limit, seed) -> np.ndarray:
    """``grid + Laplace(0, m/epsilon)`` i.i.d. per cell, drawn row-major from ``PCG64(seed)``.

    Callers pass the grid with locales and GUIDs sorted, so the draw for each cell
    is fixed by the seed and the grid's shape.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    return grid + rng.laplace(0.0, addon_limit / epsilon, size=grid.shape)


def top_addons(noisy, locales, whitelist, addon_limit, min_locale_clients, num_addons) -> dict:
    """Steps 6-7 of SPEC §8.6 on a (noisy) grid: threshold, shift, normalise, top ``num_addons``.

    Returns ``{locale: [[guid, weight], ...]}`` sorted by weight (ties GUID ascending).
    """
    guids = np.asarray(whitelist, dtype=object)
    model = {}
    for i, loc in enumerate(locales):
        row = noisy[i]
        if row.sum() / addon_limit < min_locale_clients:
            continue
        shifted = row - row.min()
        total = shifted.sum()
        if not total > 0:
            continue
        weights = shifted / total
        order = sorted(range(len(guids)), key=lambda j: (-weights[j], guids[j]))[:num_addons]
        model[loc] = [[str(guids[j]), float(weights[j])] for j in order]
    return model


def build_locale_model(daily, whitelist, *, seed, epsilon=0.4, addon_limit=1, min_locale_clients=500,
                       num_addons=10, noise=True, channel="release"):
    """The whole transform: ``clients_daily`` rows of the window -> ``(locale model, stats)``.

    Raises :class:`JobFailed` when no client passes the filters, when no client has an
    eligible whitelisted add-on, or when every locale is dropped.
    """
    whitelist = sorted(whitelist)
    clients = select_clients(daily, channel).cache()
    try:
        locales = sorted(r["locale"] for r in clients.select("locale").distinct().collect())
        if not locales:
            raise JobFailed("no clients_daily row in the window passed the client filter with a locale")
        n_clients = clients.count()
        contributions = limited_contributions(clients, whitelist, addon_limit, seed)
        counts = locale_addon_counts(contributions)
    finally:
        clients.unpersist()
    if not counts:
        raise JobFailed(f"none of the {n_clients} clients has an eligible whitelisted add-on")
    grid = count_grid(counts, locales, whitelist)
    noisy = add_laplace_noise(grid, epsilon, addon_limit, seed) if noise else grid
    model = top_addons(noisy, locales, whitelist, addon_limit, min_locale_clients, num_addons)
    if not model:
        raise JobFailed(f"all {len(locales)} locales fell below --min-locale-clients {min_locale_clients}")
    stats = {
        "inputs": {"clients": n_clients, "contributions": int(grid.sum()), "locales_observed": len(locales),
                   "whitelist_size": len(whitelist)},
        "outputs": {"locales": len(model), "entries": sum(len(v) for v in model.values())},
    }
    return model, stats


# --------------------------------------------------------------------------- driver


def run(options) -> None:
    check_options(options.window_days, options.num_addons, options.addon_limit, options.epsilon,
                  options.min_locale_clients)
    if options.no_noise:
        logger.warning("--no-noise: publishing exact counts without differential privacy")
    store = open_model_store(options.model_store)
    whitelist, _ = read_input_artifact(store, "whitelist", options.date, options.allow_latest_inputs)
    start, end = window(options.date, options.window_days)
    with job_session(JOB, options.spark_master, options.shuffle_partitions) as spark:
        daily = read_source(spark, options, "clients_daily", list(SOURCE_COLUMNS), start, end)
        model, stats = build_locale_model(
            daily, whitelist, seed=options.seed, epsilon=options.epsilon, addon_limit=options.addon_limit,
            min_locale_clients=options.min_locale_clients, num_addons=options.num_addons,
            noise=not options.no_noise, channel=options.channel,
        )
    logger.info("locale model built", extra={"fields": stats})
    publish(store, "locale", model, options.date, producer_tag(JOB), options.force_latest)
    sidecar_params = ("window_days", "num_addons", "epsilon",
                      "addon_limit", "min_locale_clients", "no_noise", "channel")
    publish_job_metrics(store, JOB, METRICS_PREFIX, options.date, options.seed,
                        {k: getattr(options, k) for k in sidecar_params}, stats["inputs"], stats["outputs"],
                        force_latest=options.force_latest)


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_job(run, options, JOB)


if __name__ == "__main__":
    sys.exit(main())
