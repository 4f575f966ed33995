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
    observed locales x whitelist get i.i.d. Laplace(0, m/epsilon) noise; locales
    whose noisy client count is below ``--min-locale-clients`` are dropped; the rest
    are shifted by their minimum, normalised and cut to the top ``--num-addons``.

Noise key (SPEC §8.6 step 5)
    The noise generator is seeded with HMAC-SHA256(secret, "taar_locale/noise/v1|D|"
    + SHA-256 of the count grid): fresh and unpredictable for every release date,
    identical for a rerun of D on the same input, fresh again when a rerun sees
    different input (so two answers never share noise). ``--seed`` only picks the m
    add-ons per client; it is not a noise seed. The secret (at least 32 bytes)
    comes from the environment variable ``TAAR_LOCALE_NOISE_KEY``, which holds the
    key itself or a Secret Manager reference
    ``sm://projects/P/secrets/S/versions/V`` (also accepted from
    ``--noise-key-ref``), resolved at run time. It never appears on the command
    line, in logs, artifacts or the sidecar. ``--dev-noise-key`` uses a fixed,
    public development key (tests; also used on the local deploy target,
    ``TAAR_DEPLOY_TARGET=local``, when no key is set); it is refused with a
    ``gs://`` model store and on ``TAAR_DEPLOY_TARGET=gcp``. ``--no-noise``
    (exact counts, debugging) needs ``--dev-noise-key`` too. No key and no
    development key: exit 2.

Privacy guarantee
    Per release: epsilon-differential privacy for the add-on counts of one client
    (one client changes at most m cells by 1 each in total; Laplace scale
    m/epsilon). The locale threshold, shift, normalisation and top-k are
    post-processing. Per 28 days: the job publishes only on release days
    (``--cadence-days`` N: days a multiple of N days after Saturday 1970-01-03,
    so Saturdays, the weekly DAG's logical date, for N = 7; other days exit 0 and leave the published model in
    place, except once, to bootstrap a store with no locale model yet), so any
    28 days hold at most ceil(28/N) release dates (plus that one bootstrap
    release in a store's life) and, by basic composition, the total is
    ceil(28/N) x epsilon (defaults: N = 7, epsilon = 0.4 -> 4 x 0.4 = 1.6).
    Enforced floor (exit 2 on every target): 0 < epsilon <= 1.0 and
    ceil(28/N) x epsilon <= 2.0.

Artifacts
    ``locale`` (``taar/locale/top10_dict.json.bz2`` + dated copy) and the metrics
    sidecar ``taar/locale/taar_locale_metrics.json.bz2`` (``evaluation: null``).

Exit codes
    0 published, or not a release day; 1 runtime failure (no client or no contribution in the window,
    every locale below the threshold, missing input, write error); 2 usage error;
    3 the model failed validation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
import os
import sys

import numpy as np

from taar import artifacts
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

#: Environment variable holding the noise secret or an ``sm://`` Secret Manager reference.
NOISE_KEY_ENV = "TAAR_LOCALE_NOISE_KEY"
DEPLOY_TARGET_ENV = "TAAR_DEPLOY_TARGET"
SECRET_REF_PREFIX = "sm://"
#: The fixed development key of ``--dev-noise-key``: public, so it gives no privacy.
DEV_NOISE_KEY = b"taar-locale-development-noise-key (public, no privacy)"
MIN_KEY_BYTES = 32
#: Documented floor of the privacy parameters (SPEC §8.6): per release and per 28 days.
MAX_EPSILON = 1.0
MAX_EPSILON_28_DAYS = 2.0
BUDGET_DAYS = 28
#: A release day of every cadence: a Saturday, like the weekly DAG's logical date (SPEC §8.6).
CADENCE_ANCHOR = dt.date(1970, 1, 3)


def build_parser():
    p = base_parser(__doc__, spark=True, prog=JOB)
    add_source_arguments(p)
    p.add_argument("--window-days", type=int, default=28, help="days of clients_daily ending at D")
    p.add_argument("--num-addons", type=int, default=10, help="add-ons kept per locale")
    p.add_argument("--epsilon", type=float, default=0.4, help="privacy budget of the Laplace mechanism")
    p.add_argument("--addon-limit", type=int, default=1, help="add-ons counted per client (m)")
    p.add_argument("--min-locale-clients", type=float, default=500,
                   help="drop locales whose noisy client count is below this")
    p.add_argument("--cadence-days", type=int, default=7,
                   help="publish only on days a multiple of this many days after Saturday 1970-01-03")
    p.add_argument("--noise-key-ref", default=None,
                   help=f"Secret Manager reference {SECRET_REF_PREFIX}projects/P/secrets/S/versions/V of the "
                        f"noise key (default: env {NOISE_KEY_ENV}); never the key itself")
    p.add_argument("--dev-noise-key", action="store_true",
                   help="use the fixed public development key (local target and tests; refused for gs:// stores)")
    p.add_argument("--no-noise", action="store_true",
                   help="publish exact counts (debugging only; needs --dev-noise-key)")
    return p


def epsilon_28_days(epsilon: float, cadence_days: int) -> float:
    """Basic composition over any 28 days: at most ceil(28/N) release dates, each costing epsilon."""
    return math.ceil(BUDGET_DAYS / cadence_days) * epsilon


def is_release_day(date: dt.date, cadence_days: int) -> bool:
    """Release days: a multiple of ``cadence_days`` days after :data:`CADENCE_ANCHOR` (weekly: Saturdays)."""
    return (date - CADENCE_ANCHOR).days % cadence_days == 0


def check_options(*, window_days: int, num_addons: int, addon_limit: int, cadence_days: int, epsilon: float,
                  min_locale_clients: int, no_noise: bool, dev_noise_key: bool,
                  noise_key_ref: str | None) -> None:
    """Reject parameter values the method cannot use (exit 2)."""
    for flag, value in (("--window-days", window_days), ("--num-addons", num_addons),
                        ("--addon-limit", addon_limit), ("--cadence-days", cadence_days)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if not 0 < epsilon <= MAX_EPSILON:
        raise UsageError(f"--epsilon must be in (0, {MAX_EPSILON}] (the documented floor), got {epsilon}")
    total = epsilon_28_days(epsilon, cadence_days)
    if total > MAX_EPSILON_28_DAYS:
        raise UsageError(f"--epsilon {epsilon} every --cadence-days {cadence_days} spends "
                         f"{total:g} per {BUDGET_DAYS} days, above the documented floor {MAX_EPSILON_28_DAYS}")
    if min_locale_clients < 0:
        raise UsageError(f"--min-locale-clients must be >= 0, got {min_locale_clients}")
    if no_noise and not dev_noise_key:
        raise UsageError("--no-noise publishes exact counts: only allowed with --dev-noise-key")
    if noise_key_ref is not None and not noise_key_ref.startswith(SECRET_REF_PREFIX):
        raise UsageError(f"--noise-key-ref must be a {SECRET_REF_PREFIX}projects/P/secrets/S/versions/V "
                         "reference (the key itself never goes on the command line)")


# --------------------------------------------------------------------------- noise key


def access_secret(name: str) -> bytes:
    """The payload of Secret Manager version ``name`` (``projects/P/secrets/S/versions/V``)."""
    from google.cloud import secretmanager

    client = secretmanager.SecretManagerServiceClient()
    return client.access_secret_version(name=name).payload.data


def resolve_noise_key(ref: str | None, environ, dev: bool) -> tuple[bytes, str]:
    """``(key, source)``: the noise secret and where it came from (``dev``, ``env`` or ``secret-manager``).

    ``ref`` (``--noise-key-ref``) wins over ``environ[NOISE_KEY_ENV]``; a value
    starting with ``sm://`` is resolved through Secret Manager. Error messages
    never include the key.
    """
    if dev:
        return DEV_NOISE_KEY, "dev"
    value = ref or environ.get(NOISE_KEY_ENV)
    if not value:
        raise UsageError(f"no noise key: set {NOISE_KEY_ENV} (or --noise-key-ref), or pass --dev-noise-key "
                         "for local development")
    if value.startswith(SECRET_REF_PREFIX):
        name = value[len(SECRET_REF_PREFIX):]
        if not name.startswith("projects/") or "/secrets/" not in name:
            raise UsageError(f"malformed Secret Manager reference {value!r}")
        try:
            key, source = access_secret(name), "secret-manager"
        except Exception as exc:  # any client error: the job cannot add noise
            raise JobFailed(f"cannot read the noise key {value!r} from Secret Manager: {type(exc).__name__}") \
                from None
    else:
        key, source = value.encode("utf-8"), "env"
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(f"the noise key from {source} is shorter than {MIN_KEY_BYTES} bytes")
    return key, source


def noise_seed(key: bytes, date: dt.date, grid: np.ndarray) -> int:
    """HMAC-SHA256(key, date | SHA-256 of the grid) as a 256-bit integer seed for ``PCG64``."""
    digest = hashlib.sha256(np.ascontiguousarray(grid, dtype=np.float64).tobytes()
                            + repr(grid.shape).encode()).hexdigest()
    mac = hmac.new(key, f"taar_locale/noise/v1|{date.isoformat()}|{digest}".encode(), hashlib.sha256)
    return int.from_bytes(mac.digest(), "big")


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

    Callers pass the grid with locales and GUIDs sorted and the secret seed of
    :func:`noise_seed`, so the draw for each cell is fixed by key, date and grid.
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


def build_locale_model(daily, whitelist, *, seed, noise_key=None, date=None, epsilon=0.4, addon_limit=1,
                       min_locale_clients=500, num_addons=10, noise=True, channel="release"):
    """The whole transform: ``clients_daily`` rows of the window -> ``(locale model, stats)``.

    ``seed`` picks the contributions; the noise is seeded by :func:`noise_seed` of
    ``noise_key`` and ``date`` (both required unless ``noise`` is false).

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
    if noise:
        if noise_key is None or date is None:
            raise ValueError("noise needs noise_key and date")
        noisy = add_laplace_noise(grid, epsilon, addon_limit, noise_seed(noise_key, date, grid))
    else:
        noisy = grid
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


def wants_dev_key(flag: bool, ref: str | None, environ) -> bool:
    """``--dev-noise-key``, or the local deploy target (``TAAR_DEPLOY_TARGET=local``) without a real key.

    Raises :class:`UsageError` for ``--dev-noise-key`` on the gcp target.
    """
    target = environ.get(DEPLOY_TARGET_ENV)
    if flag and target == "gcp":
        raise UsageError(f"--dev-noise-key is public: refused on the gcp deploy target; set {NOISE_KEY_ENV}")
    return flag or (target == "local" and not ref and not environ.get(NOISE_KEY_ENV))


def run(options) -> None:
    check_options(window_days=options.window_days, num_addons=options.num_addons,
                  addon_limit=options.addon_limit, cadence_days=options.cadence_days, epsilon=options.epsilon,
                  min_locale_clients=options.min_locale_clients, no_noise=options.no_noise,
                  dev_noise_key=options.dev_noise_key, noise_key_ref=options.noise_key_ref)
    dev = wants_dev_key(options.dev_noise_key, options.noise_key_ref, os.environ)
    if dev and str(options.model_store).startswith("gs://"):
        raise UsageError("the development noise key is public: refused for a gs:// model store; set "
                         f"{NOISE_KEY_ENV} or --noise-key-ref")
    noise_key, key_source = resolve_noise_key(options.noise_key_ref, os.environ, dev)
    store = open_model_store(options.model_store)
    if not is_release_day(options.date, options.cadence_days):
        if store.stat(artifacts.get("locale").name) is not None:
            logger.info("%s is not a release day of --cadence-days %d: nothing published, the latest locale "
                        "model stays", options.date, options.cadence_days)
            return
        logger.warning("%s is not a release day of --cadence-days %d, but no locale model is published yet: "
                       "publishing once (bootstrap)", options.date, options.cadence_days)
    if options.no_noise:
        logger.warning("--no-noise: publishing exact counts without differential privacy")
    elif key_source == "dev":
        logger.warning("development noise key: the key is public, the model has no privacy guarantee")
    whitelist, _ = read_input_artifact(store, "whitelist", options.date, options.allow_latest_inputs)
    start, end = window(options.date, options.window_days)
    with job_session(JOB, options.spark_master, options.shuffle_partitions) as spark:
        daily = read_source(spark, options, "clients_daily", list(SOURCE_COLUMNS), start, end)
        model, stats = build_locale_model(
            daily, whitelist, seed=options.seed, noise_key=noise_key, date=options.date,
            epsilon=options.epsilon, addon_limit=options.addon_limit,
            min_locale_clients=options.min_locale_clients, num_addons=options.num_addons,
            noise=not options.no_noise, channel=options.channel,
        )
    del noise_key  # nothing below needs it; it must reach no log, artifact or sidecar
    logger.info("locale model built", extra={"fields": stats})
    publish(store, "locale", model, options.date, producer_tag(JOB), options.force_latest)
    # What the sidecar says about the noise: the mechanism and budget, never a seed or the key.
    stats["outputs"]["privacy"] = {
        "mechanism": "none" if options.no_noise else "laplace",
        "key": "hmac-sha256(secret, date, counts)", "key_source": key_source,
        "epsilon_per_release": None if options.no_noise else options.epsilon,
        f"epsilon_{BUDGET_DAYS}_days": None if options.no_noise else epsilon_28_days(options.epsilon,
                                                                                      options.cadence_days),
    }
    sidecar_params = ("window_days", "num_addons", "epsilon", "cadence_days",
                      "addon_limit", "min_locale_clients", "no_noise", "channel")
    publish_job_metrics(store, JOB, METRICS_PREFIX, options.date, options.seed,
                        {k: getattr(options, k) for k in sidecar_params}, stats["inputs"], stats["outputs"],
                        force_latest=options.force_latest)


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_job(run, options, JOB)


if __name__ == "__main__":
    sys.exit(main())
