"""Weekly ensemble weights: leave-last-out evaluation of the four recommenders (SPEC §8.10).

Submitted as ``python jobs/taar_ensemble.py --date D [--spark-master local[2]] ...``
(on Dataproc: the main file with the same arguments).

Inputs
    ``clients_last_seen`` at D (``--source``: Parquet root or ``bq``); the latest
    published ``whitelist``, ``item_matrix`` + ``addon_mapping``, ``item_item``, ``locale``,
    ``donors`` + ``lr_curves`` and, if any, the current ``ensemble_weights``.
Steps
    Sample clients by ``xxhash64(seed, client_id)``, keep those with at least
    ``--min-addons`` eligible curated add-ons (the ``--max-clients`` smallest
    hashes), hold out each client's newest one, score every client with the
    four recommenders on the executors (the engine is broadcast, i.e. pickled),
    split train/validation by another hash, search the weights on the training
    clients, compare on the validation clients (taar_etl.ensemble_eval).
Outputs
    ``taar/ensemble/ensemble_weight.json.bz2`` (+ dated copy) and the metrics
    sidecar ``taar/ensemble/taar_ensemble_metrics.json.bz2``; the report under
    ``taar/ensemble/reports/<YYYYMMDD>/`` (refused runs: also
    ``<etl-store>/reports/taar_ensemble/<YYYYMMDD>/``).
Decision (validation HR@k)
    below popularity -> refused, exit 3, nothing published; above the current
    weights by more than ``--min-improvement`` -> new weights published; else the
    current weights are re-published unchanged under D ("kept"), exit 0.
Exit codes
    0 published or kept; 1 runtime failure (missing model, no usable clients);
    2 usage error; 3 refused by the quality gate or invalid weights.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import time

import numpy as np

import taar
from taar import artifacts
from taar.evaluation import GateRefused, at_k, passes_gate, sidecar_evaluation
from taar.publishing import producer_tag, publish, read_artifact
from taar.recommenders import ENSEMBLE_MEMBERS, build_engine
from taar.storage import ArtifactNotFound, open_model_store
from taar_etl import ensemble_eval as ev
from taar_etl.cli import JobFailed, UsageError, base_parser, run_job
from taar_etl.report import Table, write_evaluation_report
from taar_etl.spark.io import (
    SAMPLE_BUCKETS,
    add_source_arguments,
    job_session,
    persisted,
    publish_job_metrics,
    read_source,
    xxhash_order,
)

logger = logging.getLogger("taar_etl.jobs.taar_ensemble")

JOB = "taar_ensemble"
PREFIX = "taar/ensemble"
REQUIRED_MODELS = ("whitelist", "item_matrix", "addon_mapping", "item_item", "locale", "donors", "lr_curves")
REPORT_MAX_K = 20
NEW, CURRENT, POPULARITY = "ensemble (new)", "ensemble (current)", "popularity"


def build_parser():
    p = base_parser(__doc__, spark=True,
                    prog="taar_ensemble")
    p.add_argument("--sample-rate", type=float, default=0.01, help="share of clients sampled by hash")
    p.add_argument("--max-clients", type=int, default=50000, help="cap on evaluated clients (smallest hashes)")
    p.add_argument("--min-addons", type=int, default=3, help="eligible curated add-ons a client needs")
    p.add_argument("--k", type=int, default=10, help="cut-off of HR@k / NDCG@k")
    p.add_argument("--candidates", type=int, default=50, help="results asked of each recommender (+ installed)")
    p.add_argument("--validation-fraction", type=float, default=0.3, help="share of clients in validation")
    p.add_argument("--min-improvement", type=float, default=0.0,
                   help="validation HR@k gain over the current weights needed to publish")
    add_source_arguments(p)
    return p


def check_options(o) -> None:
    """Reject unusable flag values (exit 2)."""
    problems = []
    if not 0 < o.sample_rate <= 1:
        problems.append(f"--sample-rate must be in (0, 1], got {o.sample_rate}")
    if not 0 < o.validation_fraction < 1:
        problems.append(f"--validation-fraction must be in (0, 1), got {o.validation_fraction}")
    for flag, value in (("--max-clients", o.max_clients), ("--min-addons", o.min_addons), ("--k", o.k),
                        ("--candidates", o.candidates)):
        if value < 1:
            problems.append(f"{flag} must be >= 1, got {value}")
    if not (math.isfinite(o.min_improvement) and o.min_improvement >= 0):
        problems.append(f"--min-improvement must be finite and >= 0, got {o.min_improvement}")
    if problems:
        raise UsageError("; ".join(problems))


# --------------------------------------------------------------------------- read


def load_models(store):
    """``(models, descriptors, current_weights)``: the latest service artifacts, normalised.

    A missing required model fails the job; missing or unreadable current
    weights mean 1.0 each (``current_weights`` is then None).
    """
    raw, descriptors = {}, {}
    for key in REQUIRED_MODELS:
        try:
            raw[key], descriptors[key] = read_artifact(store, key)
        except ArtifactNotFound as exc:
            raise JobFailed(f"required model {key!r} is not published in {store.uri}") from exc
    pair = {key: descriptors[key].version for key in ("item_matrix", "addon_mapping")}
    if len(set(pair.values())) != 1:  # a pair split across two dates maps item ids to the wrong GUIDs
        raise JobFailed(f"collaborative pair from two dates in {store.uri}: item_matrix {pair['item_matrix']}, "
                        f"addon_mapping {pair['addon_mapping']}")
    item_ids = [row.get("id") for row in raw["item_matrix"] if isinstance(row, dict)]
    models = {key: artifacts.normalise(key, obj, item_ids=item_ids if key == "addon_mapping" else None)
              for key, obj in raw.items()}
    current = None
    try:
        obj, descriptors["ensemble_weights"] = read_artifact(store, "ensemble_weights")
        current = dict(artifacts.normalise("ensemble_weights", obj)["ensemble_weights"])
    except ArtifactNotFound:
        logger.info("no ensemble weights published yet: current weights are 1.0 each")
    except (ValueError, artifacts.ArtifactError) as exc:
        logger.warning("current ensemble weights unusable (%s): comparing against 1.0 each", exc)
    return models, descriptors, current


def vocabulary(models) -> tuple[str, ...]:
    """Every GUID a model can recommend plus the whitelist, ascending (code = tie-break rank)."""
    guids = set(models["whitelist"])
    guids.update(entry["id"] for entry in models["addon_mapping"].values())
    guids.update(models["item_item"]["guids"])
    guids.update(g for rows in models["locale"].values() for g, _ in rows)
    guids.update(g for donor in models["donors"] for g in donor.get("active_addons") or ())
    return tuple(sorted(g for g in guids if isinstance(g, str) and g))


@contextlib.contextmanager
def select_clients(spark, options, whitelist):
    """Yield ``(clients DataFrame, counts)``: filtered, sampled, eligible, capped, with split flags.

    ``clients_last_seen`` is read once: each filtered row is reduced to its
    ``sampled``/``usable`` flags and, for usable rows only, its source columns, and
    that frame stays persisted (:func:`persisted`) for the ``with`` block, so the
    counts and the clients (collected inside the block) both come from it.
    """
    from pyspark.sql import functions as F

    from taar.eligibility import client_filter_column, eligible_column
    from taar.profile import SOURCE_COLUMNS

    columns = sorted({*SOURCE_COLUMNS, "app_name", "normalized_channel"})
    df = read_source(spark, options, "clients_last_seen", columns, options.date, options.date)
    df = df.where(client_filter_column(options.channel))
    sort_key = xxhash_order(options.seed, F.col("client_id"))
    eligible_ids = F.array_distinct(F.transform(
        F.filter(F.coalesce(F.col("active_addons"), F.array()), lambda a: eligible_column(a, whitelist=whitelist)),
        lambda a: a["addon_id"]))
    df = df.withColumn("sort_key", sort_key).withColumns({
        "sampled": F.pmod(sort_key, F.lit(SAMPLE_BUCKETS)) < F.lit(int(round(options.sample_rate * SAMPLE_BUCKETS))),
        "n_eligible": F.size(eligible_ids),
    })
    df = df.withColumn("usable", F.col("sampled") & (F.col("n_eligible") >= options.min_addons))
    # the counts need every filtered row, the scoring only the usable ones: the others keep two flags
    slim = df.select("sampled", "usable",
                     F.when(F.col("usable"), F.struct(*SOURCE_COLUMNS, "sort_key")).alias("client"))
    with persisted(slim, "clients_last_seen rows") as rows:
        row = rows.agg(F.count(F.lit(1)).alias("filtered"), F.sum(F.col("sampled").cast("long")).alias("sampled"),
                       F.sum(F.col("usable").cast("long")).alias("eligible")).first()
        counts = {"clients_filtered": int(row["filtered"] or 0), "clients_sampled": int(row["sampled"] or 0),
                  "clients_eligible": int(row["eligible"] or 0)}
        split_key = xxhash_order(options.seed, F.lit("validation"), F.col("client_id"))
        validation = F.pmod(split_key, F.lit(SAMPLE_BUCKETS)) < F.lit(int(round(options.validation_fraction
                                                                                * SAMPLE_BUCKETS)))
        clients = (rows.where("usable").select("client.*").orderBy("sort_key", "client_id")
                   .limit(options.max_clients)
                   .withColumn("is_validation", validation)
                   .select(*SOURCE_COLUMNS, "sort_key", "is_validation"))
        yield clients, counts


def score_clients(spark, clients, engine, vocab, whitelist, candidates: int):
    """Run the recommenders on the executors (engine broadcast by pickling); collect the blocks."""
    shared = spark.sparkContext.broadcast((engine, vocab, frozenset(whitelist)))
    parts = max(2, spark.sparkContext.defaultParallelism)
    fn = functools.partial(ev.score_partition_shared, shared=shared, candidates=candidates)
    try:
        return clients.repartition(parts).rdd.mapPartitions(fn).collect()
    finally:
        shared.unpersist()


# --------------------------------------------------------------------------- evaluate and decide


def evaluate(data: ev.EvalData, vocab, whitelist, current, k: int):
    """Search on training clients, measure every method on validation clients."""
    n_vocab = len(vocab)
    train = data.subset(np.flatnonzero(~data.is_validation))
    val = data.subset(np.flatnonzero(data.is_validation))
    if train.n == 0 or val.n == 0:
        raise JobFailed(f"need training and validation clients, got {train.n} and {val.n}")
    c_train, c_val = ev.candidate_matrices(train, n_vocab), ev.candidate_matrices(val, n_vocab)
    sigma = ev.scales(c_train.top1)
    objective = ev.RankObjective(c_train, sigma, k)
    search = ev.search_weights(objective, train.n)
    new = ev.published_weights(search.units, sigma)
    cur = current or dict.fromkeys(ENSEMBLE_MEMBERS, 1.0)
    max_k = max(REPORT_MAX_K, k)
    catalogue = np.zeros(n_vocab, dtype=bool)
    code = {g: i for i, g in enumerate(vocab)}
    catalogue[[code[g] for g in whitelist]] = True
    curves = {
        NEW: ev.combined_curves(c_val, [new[r] for r in ENSEMBLE_MEMBERS], max_k, n_vocab),
        CURRENT: ev.combined_curves(c_val, [cur[r] for r in ENSEMBLE_MEMBERS], max_k, n_vocab),
    }
    for i, name in enumerate(ENSEMBLE_MEMBERS):
        curves[name] = ev.combined_curves(c_val, np.eye(len(ENSEMBLE_MEMBERS))[i], max_k, n_vocab, only=i)
    curves[POPULARITY] = ev.popularity_curves(train, val, catalogue, max_k, n_vocab)
    training = {NEW: at_k(ev.training_curves(objective, search.units, k), k)}
    return {
        "train": train, "val": val, "sigma": sigma, "search": search, "new": new, "current": cur,
        "curves": curves, "training": training,
        "target_listed": float((c_val.target_col >= 0).mean()),
    }


def decide(curves, k: int, min_improvement: float) -> tuple[str, str]:
    """``(decision, reason)`` from validation HR@k (SPEC §8.10 step 8)."""
    new, cur, pop = (curves[m]["hr"][k - 1] for m in (NEW, CURRENT, POPULARITY))
    if not passes_gate(new, pop):
        return "refused", f"new weights HR@{k} {new:.4f} < popularity {pop:.4f}"
    if new > cur + min_improvement:
        return "published", f"new weights HR@{k} {new:.4f} > current {cur:.4f} + {min_improvement}"
    return "kept", f"new weights HR@{k} {new:.4f} <= current {cur:.4f} + {min_improvement}: current weights kept"


# --------------------------------------------------------------------------- run


def run(options) -> None:
    check_options(options)
    k, day = options.k, f"{options.date:%Y%m%d}"
    store = open_model_store(options.model_store)
    models, descriptors, current = load_models(store)
    whitelist = models["whitelist"]
    vocab = vocabulary(models)
    engine = build_engine(models, model_versions={key: d.version for key, d in descriptors.items()})
    started = time.monotonic()
    with job_session(JOB, options.spark_master, options.shuffle_partitions) as spark:
        with select_clients(spark, options, frozenset(whitelist)) as (clients, counts):
            blocks = score_clients(spark, clients, engine, {g: i for i, g in enumerate(vocab)}, whitelist,
                                   options.candidates)
    durations = {"select_and_score_s": round(time.monotonic() - started, 3)}
    started = time.monotonic()
    data = ev.merge_blocks(blocks)
    if data.n == 0:
        raise JobFailed(f"no client of clients_last_seen {options.date} has >= {options.min_addons} eligible "
                        f"curated add-ons after sampling at {options.sample_rate}")
    result = evaluate(data, vocab, whitelist, current, k)
    durations["search_and_evaluate_s"] = round(time.monotonic() - started, 3)
    curves = result["curves"]
    decision, reason = decide(curves, k, options.min_improvement)
    counts.update({"clients_evaluated": data.n, "train": result["train"].n, "validation": result["val"].n,
                   "can_recommend": {r: int(data.can[r].sum()) for r in ENSEMBLE_MEMBERS},
                   "validation_target_listed": result["target_listed"], "unknown_guids": data.unknown_guids})
    logger.info("ensemble %s: %s", decision, reason,
                extra={"fields": {"counts": counts, "decision": decision, "durations": durations}})

    producer = producer_tag(JOB)
    published_weights = {"published": result["new"], "kept": result["current"]}.get(decision)
    names = []
    if published_weights is not None:
        res = publish(store, "ensemble_weights", {"ensemble_weights": published_weights}, options.date, producer,
                      options.force_latest)
        names.append(res.dated_name)
        model_curves = curves[NEW] if decision == "published" else curves[CURRENT]
        names.append(publish_job_metrics(
            store, JOB, PREFIX, options.date, options.seed, parameters(options), counts,
            {"ensemble_weights": published_weights, "decision": decision},
            sidecar_evaluation(k, at_k(model_curves, k), {"popularity": at_k(curves[POPULARITY], k)}),
            options.force_latest).dated_name)

    report = build_report(options, descriptors, counts, result, decision, reason, published_weights, names)
    tables, summary = report_tables(result, decision, reason, k)
    title = f"TAAR ensemble evaluation {options.date}"
    write_evaluation_report(store, f"{PREFIX}/reports/{day}", report, curves, k, title=title, summary=summary,
                            extra_tables=tables)
    if decision == "refused":
        etl_store = open_model_store(options.etl_store)
        write_evaluation_report(etl_store, f"reports/{JOB}/{day}", report, curves, k, title=title,
                                summary=summary, extra_tables=tables)
        new_hr, pop_hr = curves[NEW]["hr"][k - 1], curves[POPULARITY]["hr"][k - 1]
        raise GateRefused(f"validation hr@{k}", new_hr, pop_hr, what="ensemble weights")


def parameters(options) -> dict:
    return {name: getattr(options, name) for name in (
        "sample_rate", "max_clients", "min_addons", "k", "candidates", "validation_fraction", "min_improvement",
        "channel", "source")}


def build_report(options, descriptors, counts, result, decision, reason, published_weights, names) -> dict:
    k, search = options.k, result["search"]
    return {
        "job": JOB, "date": options.date.isoformat(), "seed": options.seed, "package_version": taar.__version__,
        "models": {key: {"version": d.version, "sha256": d.sha256, "uri": d.uri} for key, d in descriptors.items()},
        "parameters": parameters(options),
        "counts": counts,
        "scales": dict(zip(ENSEMBLE_MEMBERS, result["sigma"].tolist(), strict=True)),
        "search": {"weights": dict(zip(ENSEMBLE_MEMBERS, search.weights, strict=True)),
                   f"train_hr@{k}": search.hr, f"train_ndcg@{k}": search.ndcg, "evaluations": search.evaluations},
        "weights": {"new": result["new"], "current": result["current"], "published": published_weights},
        "decision": decision, "reason": reason, "published_objects": names,
        "metrics": {"validation": {m: at_k(c, k) for m, c in result["curves"].items()},
                    "training": result["training"]},
    }


def report_tables(result, decision, reason, k):
    search = result["search"]
    rows = tuple((r, float(result["sigma"][i]), search.weights[i], result["new"][r], result["current"][r])
                 for i, r in enumerate(ENSEMBLE_MEMBERS))
    table = Table("Weights", ("recommender", "σ_r", "search w_r", "new W_r", "current W_r"), rows)
    summary = [("decision", decision), ("reason", reason), ("validation clients", result["val"].n),
               ("training clients", result["train"].n), (f"training HR@{k} (new)", search.hr)]
    return [table], summary


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_job(run, options, JOB)


if __name__ == "__main__":
    sys.exit(main())
