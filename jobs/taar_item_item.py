"""taar_item_item: closed-form item-item (EASE) weights for the item-item recommender (SPEC §8.11).

Submitted as ``python jobs/taar_item_item.py --date D [--spark-master local[2]] ...``
(on Dataproc: the main file with the same arguments). The Gram matrix and the
closed form are :mod:`taar_etl.spark.ease`; items, interactions and the holdout
are the collaborative job's (:mod:`taar_etl.spark.interactions`).

Inputs
    The curated ``whitelist`` and the ``amo_database`` dated D from the model store
    (the latest copies only with ``--allow-latest-inputs``); ``clients_daily`` over
    the ``--window-days`` days ending at D (``--source``: Parquet root or ``bq``), read once:
    its client items are persisted until the indexed interactions are materialised.
Method
    Items and interactions exactly as ``taar_collaborative`` (SPEC §8.9 steps 1-3):
    whitelisted AMO webextensions in GUID order, each sampled client's eligible
    add-ons, leave-last-out holdout split by ``xxhash64(seed, client_id)`` parity
    into validation and test. More than ``--max-items`` items fails the run. The
    Gram matrix ``XᵀX`` of the training interactions is summed in Spark (integer
    pair counts) and collected; for every λ of ``--lambdas`` the driver computes
    ``B = I − P·diag(1/diag P)``, ``P = (XᵀX + λI)⁻¹``, keeps each row's
    ``--neighbours`` largest ``|B_ij|`` and scores validation users with the
    serving formula; the best validation NDCG@k wins (ties: HR@k, smaller λ).
Quality gate
    Test NDCG@k below the popularity baseline's -> refused: exit 3, nothing
    published, report under ``<etl-store>/reports/item_item/<YYYYMMDD>/``.
Outputs
    ``item_item`` (dated copy + latest), refitted with the selected λ on every
    interaction with ``--refit-full``; the metrics sidecar
    ``addon_recommender/taar_item_item_metrics.json.bz2`` with the evaluation block.
Reproducibility
    Same inputs, flags and ``--seed`` give byte-identical artifacts whatever the
    input partitioning: the Gram matrix is exact integer counts.
Exit codes
    0 published; 1 runtime failure (missing input, no item, no interaction, no
    test user, write error); 2 usage error; 3 refused by the quality gate, more
    than ``--max-items`` items, item id collision with ``--on-collision fail``,
    or an invalid artifact.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

import numpy as np

import taar
from taar.evaluation import GateRefused, at_k, passes_gate, sidecar_evaluation
from taar.publishing import producer_tag, publish
from taar.storage import open_model_store
from taar_etl.cli import JobFailed, UsageError, ValidationError, base_parser, run_job, window
from taar_etl.report import Table, write_evaluation_report
from taar_etl.spark import als, ease
from taar_etl.spark.interactions import (
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

JOB = "taar_item_item"
#: Where the metrics sidecar goes in the model store, and the ETL-store folder name.
METRICS_PREFIX = "addon_recommender"
ETL_NAME = "item_item"
SOURCE_COLUMNS = ("client_id", "sample_id", "app_name", "normalized_channel", "active_addons", "submission_date")
PARAMETERS = ("window_days", "sample_id_max", "lambdas", "neighbours", "max_items", "eval_k", "eval_users",
              "on_collision", "refit_full", "channel")


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, spark=True, prog=JOB)
    add_source_arguments(p)
    p.add_argument("--window-days", type=int, default=90, help="days of clients_daily ending at D")
    p.add_argument("--sample-id-max", type=int, default=100, help="keep clients with sample_id < this")
    p.add_argument("--lambdas", default="default",
                   help="'default' (SPEC grid) or a comma list of λ values > 0 (one value: no selection)")
    p.add_argument("--neighbours", type=int, default=50, help="weights kept per item (largest |B_ij|)")
    p.add_argument("--max-items", type=int, default=5000,
                   help="refuse more items than this (the driver holds a few dense items x items matrices)")
    p.add_argument("--eval-k", type=int, default=10, help="cut-off k of the evaluation metrics")
    p.add_argument("--eval-users", type=int, default=50000, help="cap on validation and on test users")
    p.add_argument("--on-collision", choices=("drop", "fail"), default="drop",
                   help="GUIDs sharing a 23-bit item id: drop them all, or fail the run (as taar_collaborative)")
    p.add_argument("--refit-full", action=argparse.BooleanOptionalAction, default=True,
                   help="recompute the weights with the selected λ on every interaction before publishing")
    return p


def check_options(options) -> tuple[float, ...]:
    """Reject unusable values (exit 2); return the λ grid."""
    for name in ("window_days", "neighbours", "max_items", "eval_k", "eval_users"):
        if getattr(options, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if not 1 <= options.sample_id_max <= 100:
        raise UsageError(f"--sample-id-max must be in [1, 100], got {options.sample_id_max}")
    try:
        return ease.parse_lambdas(options.lambdas)
    except ValueError as exc:
        raise UsageError(f"--lambdas: {exc}") from None


def build_artifact(guids: list[str], neighbours, lam: float, top_k: int) -> dict:
    """The ``item_item`` object (SPEC §2.8): GUIDs in order, each row's ``[column, weight]`` pairs."""
    rows = []
    for i in range(len(guids)):
        start, end = neighbours.indptr[i], neighbours.indptr[i + 1]
        rows.append([[int(j), float(w)] for j, w in zip(neighbours.indices[start:end].tolist(),
                                                         neighbours.data[start:end].tolist(), strict=True)])
    return {"guids": list(guids), "neighbours": rows, "lambda": float(lam), "top_k": int(top_k)}


# --------------------------------------------------------------------------- driver


@dataclass
class Outcome:
    """What :func:`train_and_evaluate` hands to publishing."""

    lam: float
    neighbours: object
    counts: dict
    selection: list
    test_metrics: dict


def run(options, fit=None) -> None:
    """The whole job; ``fit(gram, λ, top_k)`` builds a served model (default :func:`taar_etl.spark.ease.fit`)."""
    fit = fit or ease.fit
    lambdas = check_options(options)
    store = open_model_store(options.model_store)
    items = read_catalogue_items(store, options.date, options.allow_latest_inputs, options.on_collision)
    if len(items) > options.max_items:
        raise ValidationError(f"{len(items)} items exceed --max-items {options.max_items}: the driver would hold "
                              f"{len(items)}x{len(items)} dense matrices")
    guids = [i.guid for i in items]
    start, end = window(options.date, options.window_days)
    with job_session(JOB, options.spark_master, options.shuffle_partitions) as spark:
        daily = read_source(spark, options, "clients_daily", list(SOURCE_COLUMNS), start, end)
        with indexed_interactions(daily, guids, options.seed, options.channel, options.sample_id_max) as indexed:
            outcome = train_and_evaluate(indexed, len(guids), lambdas, options, fit)
    model = build_artifact(guids, outcome.neighbours, outcome.lam, options.neighbours)
    publish(store, "item_item", model, options.date, producer_tag(JOB), options.force_latest)
    outputs = {"items": len(guids), "neighbour_weights": int(outcome.neighbours.nnz),
               "selected_lambda": outcome.lam, "lambda_results": outcome.selection}
    publish_job_metrics(store, JOB, METRICS_PREFIX, options.date, options.seed,
                        {name: getattr(options, name) for name in PARAMETERS}, outcome.counts, outputs,
                        outcome.test_metrics, options.force_latest)


def train_and_evaluate(indexed, n_items: int, lambdas, options, fit) -> Outcome:
    """Holdout, Gram matrix, λ selection, gate, refit; raises GateRefused below popularity."""
    from pyspark.sql import functions as F

    k = options.eval_k
    with evaluation_split(indexed, n_items, options.eval_users, options.window_days) as (
            n_interactions, train, validation, test):
        gram = ease.gram_matrix(train, n_items)
    popularity = np.diag(gram).copy()
    best, selection = ease.select_lambda(gram, lambdas, validation, k=k, top_k=options.neighbours, fit=fit)
    counts = {"items": n_items, "items_trained": int(np.count_nonzero(popularity)),
              "clients": indexed.select("user").distinct().count(), "interactions": n_interactions,
              "training_interactions": int(popularity.sum()),
              "validation_users": len(validation) if validation is not None else 0, "test_users": len(test)}
    curves = {"item_item": ease.evaluate_curves(test, best.neighbours, k),
              "popularity": als.evaluate_curves(test, als.popularity_scorer(popularity), k)}
    model, baseline = at_k(curves["item_item"], k), at_k(curves["popularity"], k)
    logger.info("EASE λ=%s on test users: %s; popularity: %s", best.lam, model, baseline,
                extra={"fields": {"counts": counts}})
    if not passes_gate(model[f"ndcg@{k}"], baseline[f"ndcg@{k}"]):
        write_refusal_report(options, counts, selection, best.lam, curves)
        raise GateRefused(f"test ndcg@{k}", model[f"ndcg@{k}"], baseline[f"ndcg@{k}"], what="item-item model")
    final = best
    if options.refit_full:
        everything = indexed.select("user", "item", F.lit(1.0).alias("rating"))
        final = fit(ease.gram_matrix(everything, n_items), best.lam, options.neighbours)
    if final.neighbours.nnz == 0:
        raise JobFailed("empty output: no item pair co-occurs, every item-item weight is zero")
    return Outcome(final.lam, final.neighbours, counts, selection, sidecar_evaluation(k, model,
                                                                                      {"popularity": baseline}))


def write_refusal_report(options, counts, selection, lam, curves) -> None:
    """The refused run's report in ``<etl-store>/reports/item_item/<YYYYMMDD>/`` (SPEC §9.2)."""
    k = options.eval_k
    report = {"job": JOB, "date": options.date.isoformat(), "seed": options.seed,
              "package_version": taar.__version__, "decision": "refused",
              "parameters": {n: getattr(options, n) for n in PARAMETERS}, "selected": {"lambda": lam},
              "counts": counts, "grid": selection}
    rows = tuple((r["lambda"], *(r["validation"][f"{m}@{k}"] if r["validation"] else None for m in ("hr", "ndcg")))
                 for r in selection)
    grid_table = Table("Validation metrics per λ", ("λ", f"hr@{k}", f"ndcg@{k}"), rows)
    reason = (f"test NDCG@{k} {curves['item_item']['ndcg'][k - 1]:.4f} < popularity "
              f"{curves['popularity']['ndcg'][k - 1]:.4f}")
    write_evaluation_report(open_model_store(options.etl_store), f"reports/{ETL_NAME}/{options.date:%Y%m%d}",
                            report, curves, k, title=f"TAAR item-item evaluation {options.date} (refused)",
                            summary=[("decision", "refused"), ("reason", reason)], extra_tables=[grid_table])


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_job(run, options, JOB)


if __name__ == "__main__":
    sys.exit(main())
