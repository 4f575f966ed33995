"""taar_collaborative: implicit-ALS item factors for the collaborative recommender (SPEC §8.9).

Submitted as ``python jobs/taar_collaborative.py --date D [--spark-master local[2]] ...``
(on Dataproc: the main file with the same arguments). It replaces the historical
Scala job and publishes the same artifacts; the training and evaluation core is
:mod:`taar_etl.spark.als`, shared with ``bench/jobs_collaborative.py``.

Inputs
    The curated ``whitelist`` and the ``amo_database`` dated D from the model store
    (the latest copies only with ``--allow-latest-inputs``); ``clients_daily`` over
    the ``--window-days`` days ending at D (``--source``: Parquet root or ``bq``), read once:
    its client items are persisted until the indexed interactions are materialised.
Method
    Items = whitelisted GUIDs that AMO lists as webextensions, numbered in GUID
    order, each with its 23-bit Java-hash item id (GUIDs sharing an id are dropped,
    or fail the run with ``--on-collision fail``). Interactions = each filtered,
    sampled (``sample_id < --sample-id-max``) client's latest row, its eligible
    add-ons among the items, rating 1.0. Users get dense indices in client-id
    order. Each user with two or more items loses its newest (``install_day``,
    ties GUID) to the holdout; holdout users split by ``xxhash64(seed, client_id)``
    parity into validation and test, each capped at ``--eval-users``. The ``--grid``
    is searched on a deterministic sample of about ``--search-users`` training users
    (``xxhash64(seed, user)``); the best validation NDCG@k wins (ties: HR@k, then the
    smaller rank) and is refitted on all training users. ALS is the block ALS of
    :mod:`taar_etl.spark.als` (users grouped by item set, ``--num-blocks`` tasks per
    sweep). Evaluation scores with the serving formula (user vector = sum of its
    training item factors).
Reproducibility
    Same inputs, flags and ``--seed`` give byte-identical artifacts, whatever the
    input partitioning and task timing: ALS sums in block order, never in task
    completion order (see :func:`taar_etl.spark.als.fit_als`). ``--num-blocks`` is
    part of that contract: keep it fixed for a given cluster (the gcp DAG sets it
    from the cluster size); another value changes the factors in the last bits.
Quality gate
    Test NDCG@k below the popularity baseline's -> refused: exit 3, nothing
    published, report under ``<etl-store>/reports/collaborative/<YYYYMMDD>/``.
Outputs
    ``item_matrix`` + ``addon_mapping`` published as a group (dated copy + latest),
    refitted on every interaction with ``--refit-full``; the metrics sidecar
    ``addon_recommender/taar_collaborative_metrics.json.bz2`` with the evaluation
    block and what the grid search cost (``params.search``); with ``--archive-model``
    a Spark ML ``ALSModel`` under ``<etl-store>/archive/collaborative/<YYYYMMDD>/als_model``.
Exit codes
    0 published; 1 runtime failure (missing input, no item, no interaction, no
    test user, write error); 2 usage error; 3 refused by the quality gate, item id
    collision with ``--on-collision fail``, or invalid artifacts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

import taar
from taar.evaluation import GateRefused, at_k, passes_gate, sidecar_evaluation
from taar.publishing import producer_tag, publish_group
from taar.storage import open_model_store
from taar_etl.cli import JobFailed, UsageError, base_parser, run_job, window
from taar_etl.report import Table, write_evaluation_report
from taar_etl.spark import als
from taar_etl.spark.interactions import (
    Item,
    evaluation_split,
    indexed_interactions,
    read_catalogue_items,
)
from taar_etl.spark.io import (
    add_source_arguments,
    job_session,
    publish_job_metrics,
    read_source,
)

logger = logging.getLogger(__name__)

JOB = "taar_collaborative"
#: Where the metrics sidecar goes in the model store, and the ETL-store folder name.
METRICS_PREFIX = "addon_recommender"
ETL_NAME = "collaborative"
SOURCE_COLUMNS = ("client_id", "sample_id", "app_name", "normalized_channel", "active_addons", "submission_date")


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, spark=True,
                    prog=JOB)
    add_source_arguments(p)
    p.add_argument("--window-days", type=int, default=90, help="days of clients_daily ending at D")
    p.add_argument("--sample-id-max", type=int, default=100, help="keep clients with sample_id < this")
    p.add_argument("--grid", default="default",
                   help="'default' (SPEC grid), 'none' (--rank/--reg-param/--alpha) or 'rank=..;reg=..;alpha=..'")
    p.add_argument("--rank", type=int, default=32, help="ALS rank with --grid none")
    p.add_argument("--reg-param", type=float, default=0.1, help="ALS regParam with --grid none")
    p.add_argument("--alpha", type=float, default=10.0, help="ALS implicit confidence alpha with --grid none")
    p.add_argument("--max-iter", type=int, default=20, help="ALS iterations")
    p.add_argument("--num-blocks", type=int, default=4,
                   help="ALS parallelism: item-set blocks and item slices per sweep (set it to the cluster's "
                        "executor cores; artifacts are byte-identical for a fixed value)")
    p.add_argument("--search-users", type=int, default=als.SEARCH_USERS,
                   help="the grid search fits on a deterministic sample of about this many training users; "
                        "the winner is refitted on all")
    p.add_argument("--eval-k", type=int, default=10, help="cut-off k of the evaluation metrics")
    p.add_argument("--eval-users", type=int, default=50000, help="cap on validation and on test users")
    p.add_argument("--on-collision", choices=("drop", "fail"), default="drop",
                   help="GUIDs sharing a 23-bit item id: drop them all, or fail the run")
    p.add_argument("--archive-model", action=argparse.BooleanOptionalAction, default=True,
                   help="save the Spark model under <etl-store>/archive/collaborative/<YYYYMMDD>/als_model")
    p.add_argument("--refit-full", action=argparse.BooleanOptionalAction, default=True,
                   help="refit the selected configuration on every interaction before publishing")
    return p


def check_options(options) -> tuple[als.AlsParams, ...]:
    """Reject unusable values (exit 2); return the ALS grid."""
    for name in ("window_days", "max_iter", "eval_k", "eval_users", "num_blocks", "search_users"):
        if getattr(options, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if not 1 <= options.sample_id_max <= 100:
        raise UsageError(f"--sample-id-max must be in [1, 100], got {options.sample_id_max}")
    try:
        return als.parse_grid(options.grid, options.rank, options.reg_param, options.alpha)
    except ValueError as exc:
        raise UsageError(f"--grid: {exc}") from None


# --------------------------------------------------------------------------- artifacts (driver)


def build_artifacts(items: list[Item], factors: np.ndarray, known: np.ndarray) -> dict:
    """``{"item_matrix": [...], "addon_mapping": {...}}`` for the items that have factors, in GUID order."""
    matrix, mapping = [], {}
    for j, item in enumerate(items):
        if not known[j]:
            continue
        matrix.append({"id": item.item_id, "features": [float(x) for x in factors[j]]})
        mapping[str(item.item_id)] = {"id": item.guid, "name": item.name, "isWebextension": True}
    return {"item_matrix": matrix, "addon_mapping": mapping}


def spark_path(uri: str, *parts: str) -> str:
    """A path under the ETL store for Spark: absolute for local directories, the URI itself for gs://."""
    base = uri if "://" in uri else os.path.abspath(uri)
    return "/".join([base.rstrip("/"), *parts])


# --------------------------------------------------------------------------- driver


def run(options, fit=None) -> None:
    """The whole job; ``fit`` is the ALS trainer (default :func:`taar_etl.spark.als.fit_als`)."""
    fit = fit or als.fit_als
    grid = check_options(options)
    store = open_model_store(options.model_store)
    items = read_catalogue_items(store, options.date, options.allow_latest_inputs, options.on_collision)
    guids = [i.guid for i in items]
    start, end = window(options.date, options.window_days)
    with job_session(JOB, options.spark_master, options.shuffle_partitions) as spark:
        daily = read_source(spark, options, "clients_daily", list(SOURCE_COLUMNS), start, end)
        with indexed_interactions(daily, guids, options.seed, options.channel, options.sample_id_max) as indexed:
            outcome = train_and_evaluate(indexed, items, grid, options, fit)
        publish_outcome(store, outcome, options)  # archiving the model needs the session


@dataclass
class Outcome:
    """What :func:`train_and_evaluate` hands to publishing."""

    items: list
    final: als.FittedAls
    counts: dict
    selection: list
    test_metrics: dict
    search: dict


def train_and_evaluate(indexed, items, grid, options, fit) -> Outcome:
    """Holdout, grid search, gate, refit (SPEC §8.9 steps 3-7); raises GateRefused below popularity."""
    from pyspark.sql import functions as F

    n_items, k = len(items), options.eval_k
    with evaluation_split(indexed, n_items, options.eval_users, options.window_days) as (
            n_interactions, train, validation, test):
        popularity = als.item_counts(train, n_items)
        fit_options = {"max_iter": options.max_iter, "seed": options.seed, "num_blocks": options.num_blocks}
        n_users = indexed.select("user").distinct().count()  # every user keeps >= 1 training item
        best, selection, search = search_grid(train, grid, validation, n_items, n_users, options, fit,
                                               fit_options)
        counts = {"items": n_items, "items_trained": int(best.known_items.sum()),
                  "clients": n_users, "interactions": n_interactions,
                  "training_interactions": int(popularity.sum()),
                  "validation_users": len(validation) if validation is not None else 0, "test_users": len(test)}
    candidates = best.known_items
    curves = {"collaborative": als.evaluate_curves(test, als.item_sum_scorer(best.item_factors), k, candidates),
              "popularity": als.evaluate_curves(test, als.popularity_scorer(popularity), k, candidates)}
    model, baseline = at_k(curves["collaborative"], k), at_k(curves["popularity"], k)
    logger.info("ALS %s on test users: %s; popularity: %s", best.params.as_dict(), model, baseline,
                extra={"fields": {"counts": counts}})
    if not passes_gate(model[f"ndcg@{k}"], baseline[f"ndcg@{k}"]):
        best.release()
        write_refusal_report(options, counts, selection, best.params, curves)
        raise GateRefused(f"test ndcg@{k}", model[f"ndcg@{k}"], baseline[f"ndcg@{k}"], what="ALS model")
    final = best
    if options.refit_full:
        best.release()
        everything = indexed.select("user", "item", F.lit(1.0).cast("float").alias("rating"))
        final = fit(everything, best.params, n_items=n_items, **fit_options)
    test_metrics = sidecar_evaluation(k, model, {"popularity": baseline})
    return Outcome(items, final, counts, selection, test_metrics, search)


def search_grid(train, grid, validation, n_items, n_users, options, fit, fit_options):
    """Grid search on a deterministic sample of training users, winner refitted on all training users.

    Returns ``(best, selection, search)``. ``search`` goes to the sidecar: the sample,
    the work the search did (fits, ALS sweeps, interactions swept) and the choice. It
    holds no wall-clock figure, so a rerun's sidecar stays byte-identical; the seconds
    are logged.
    """
    # a single configuration has nothing to choose: fit it on every training user straight away
    cap = options.search_users if len(grid) > 1 else max(n_users, 1)
    sample, info = als.search_sample(train, cap, options.seed, n_users)
    sample_interactions = sample.count() if info["sampled"] else None
    started = time.monotonic()
    best, selection = als.grid_search(sample, grid, validation, n_items=n_items, k=options.eval_k, fit=fit,
                                      **fit_options)
    seconds = {"search_s": round(time.monotonic() - started, 1)}
    if sample_interactions is None:
        sample_interactions = train.count()
    search = {**info, "sample_interactions": sample_interactions, "fits": len(grid),
              "sweeps": len(grid) * options.max_iter,
              "interaction_sweeps": sample_interactions * len(grid) * options.max_iter,
              "selected": best.params.as_dict(), "refitted_on_all_training_users": info["sampled"]}
    if info["sampled"]:
        best.release()
        started = time.monotonic()
        best = fit(train, best.params, n_items=n_items, **fit_options)
        seconds["refit_s"] = round(time.monotonic() - started, 1)
    logger.info("grid search on %s of %d training users: %s", f"{info['rate']:.2%}", n_users, best.params.as_dict(),
                extra={"fields": {"search": search, **seconds}})
    return best, selection, search


def parameters(options) -> dict:
    return {name: getattr(options, name) for name in (
        "window_days", "sample_id_max", "grid", "rank", "reg_param", "alpha", "max_iter",
        "num_blocks", "search_users", "eval_k", "eval_users", "on_collision", "refit_full", "channel")}


def write_refusal_report(options, counts, selection, params, curves) -> None:
    """The refused run's report in ``<etl-store>/reports/collaborative/<YYYYMMDD>/`` (SPEC §9.2)."""
    k = options.eval_k
    report = {"job": JOB, "date": options.date.isoformat(), "seed": options.seed,
              "package_version": taar.__version__, "decision": "refused", "parameters": parameters(options),
              "selected": params.as_dict(), "counts": counts, "grid": selection}
    rows = tuple((str(r["params"]), *(r["validation"][f"{m}@{k}"] if r["validation"] else None
                                      for m in ("hr", "ndcg"))) for r in selection)
    grid_table = Table("Validation metrics per ALS configuration", ("params", f"hr@{k}", f"ndcg@{k}"), rows)
    reason = (f"test NDCG@{k} {curves['collaborative']['ndcg'][k - 1]:.4f} < popularity "
              f"{curves['popularity']['ndcg'][k - 1]:.4f}")
    write_evaluation_report(open_model_store(options.etl_store), f"reports/{ETL_NAME}/{options.date:%Y%m%d}",
                            report, curves, k, title=f"TAAR collaborative evaluation {options.date} (refused)",
                            summary=[("decision", "refused"), ("reason", reason)], extra_tables=[grid_table])


def publish_outcome(store, outcome: Outcome, options) -> None:
    """Archive the model, publish the collaborative group, then the metrics sidecar."""
    final = outcome.final
    models = build_artifacts(outcome.items, final.item_factors, final.known_items)
    if not models["item_matrix"]:
        raise JobFailed("empty output: no item has ALS factors")
    if options.archive_model:
        path = spark_path(options.etl_store, "archive", ETL_NAME, f"{options.date:%Y%m%d}", "als_model")
        final.model.save(path)
        logger.info("archived the ALS model at %s", path)
    producer = producer_tag(JOB)
    publish_group(store, models, options.date, producer, options.force_latest)
    params = {**parameters(options), "selected": final.params.as_dict(), "grid_results": outcome.selection,
              "search": outcome.search}
    outputs = {"item_matrix_rows": len(models["item_matrix"]), "rank": final.params.rank}
    publish_job_metrics(store, JOB, METRICS_PREFIX, options.date, options.seed, params, outcome.counts, outputs,
                        outcome.test_metrics, options.force_latest)
    final.release()


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_job(run, options, JOB)


if __name__ == "__main__":
    sys.exit(main())
