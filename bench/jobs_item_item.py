"""Benchmark of the item-item (EASE) model: MovieLens-100k quality, and its weight in the ensemble.

Two parts, printed and saved as JSON under ``./var/bench/jobs_item_item.json``:

* **movielens** — MovieLens-100k with the loading and the split of
  ``bench/jobs_collaborative.py`` (every rating an implicit interaction, per-user
  random 75/25 split with ``PCG64(42)``, full ranking over the items outside each
  user's training set). Every hyperparameter is chosen on a *validation* split
  carved from the training part only (the same per-user 75/25 rule applied to the
  training pairs, ``PCG64(43)``): the ALS grid (user-factor scoring) and EASE's λ.
  The selected configuration is then refitted on the whole training part and
  measured once on the test part. ALS (Spark ML, :mod:`taar_etl.spark.als`, scored
  with its user factors and with the serving formula), EASE (:mod:`taar_etl.spark.ease`:
  the full dense ``B``, and the served form, rows cut to the top-50 neighbours and
  rounded, which includes that truncation in its fit time), co-occurrence and
  popularity in one table: NDCG@10, HR@10, precision@10 and fit time (the refit;
  EASE's includes ``XᵀX``).
  The data is the ``ml-100k.inter`` file of the ``recbole`` wheel, installed with
  ``pip install --no-deps recbole==1.2.1`` when absent (see jobs_collaborative).
* **ensemble** — on synthetic clients (``taar_dev.synthetic``, default 100 000):
  the day's inputs (``taar_update_whitelist`` and ``taar_amodump`` against the fake
  AMO), then ``jobs/taar_{locale,similarity,collaborative,item_item}.py`` as
  separate processes (collaborative with ``--grid none``), then the ensemble job's
  own steps in this process (:mod:`jobs.taar_ensemble`: client selection, scoring
  on the executors, train/validation split): weights searched over the four
  members and, on the *same* clients and split, over the three historical members
  (item_item fixed at 0). Both validation NDCG@10 / HR@10 are reported.

``python -m bench.jobs_item_item [--no-movielens] [--clients 100000] [--no-ensemble]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.jobs_collaborative import ensure_movielens, load_interactions, split_per_user

ROOT = Path(__file__).resolve().parents[1]
DATE = dt.date(2026, 11, 20)
K = 10
#: ALS grid explored on the validation split (15 iterations, like jobs_collaborative's Q1 figure).
ALS_GRID = "rank=32,64;reg=0.1;alpha=1,2,5"
ALS_ITERATIONS = 15
EASE_LAMBDAS = (50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0)
EASE_TOP_K = 50


# --------------------------------------------------------------------------- MovieLens-100k


def _lists(n_users, users, items):
    out = [[] for _ in range(n_users)]
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        out[u].append(i)
    return out


def _ratings(spark, users, items):
    import pandas as pd

    return spark.createDataFrame(pd.DataFrame({"user": users.astype("int32"), "item": items.astype("int32"),
                                               "rating": np.ones(users.size, dtype="float32")}))


def _binary(n_users, n_items, users, items):
    x = np.zeros((n_users, n_items))
    x[users, items] = 1.0
    return x


def _dense_scorer(weights: np.ndarray):
    """``x_u · B`` with the dense, untruncated B: every item is a candidate."""
    def score(train_rows, rows):
        return np.asarray(train_rows @ weights)
    return score


def movielens(spark, path: Path, seed: int = 42) -> dict:
    """The table of the module docstring, as a dict (selection on validation, metrics on test)."""
    from taar import evaluation
    from taar_etl.spark import als, ease

    users, items, n_users, n_items = load_interactions(path)
    train_u, train_i, tests = split_per_user(users, items, seed=seed)
    fit_u, fit_i, vals = split_per_user(train_u, train_i, seed=seed + 1)  # carved from training only
    everyone = list(range(n_users))
    test_set = als.eval_set_from_lists(everyone, _lists(n_users, train_u, train_i), tests, n_items)
    keep = [u for u in everyone if vals[u]]  # users with a validation item
    fit_lists = _lists(n_users, fit_u, fit_i)
    val_set = als.eval_set_from_lists(keep, [fit_lists[u] for u in keep], [vals[u] for u in keep], n_items)
    out = {"users": n_users, "items": n_items, "interactions": int(users.size), "k": K,
           "split": "per-user random 75/25 PCG64(42); validation = same rule on the training pairs, PCG64(43)",
           "validation_users": len(val_set), "test_users": len(test_set), "selection": {}, "methods": {}}

    # ALS: grid on validation (user-factor scoring), refit on the whole training part
    fit_ratings = _ratings(spark, fit_u, fit_i)
    rows = []
    for params in als.parse_grid(ALS_GRID, 32, 0.1, 1.0):
        fitted = als.fit_als(fit_ratings, params, n_items=n_items, max_iter=ALS_ITERATIONS, seed=seed)
        uf = fitted.user_factors(n_users)[keep]
        fitted.release()
        m = als.evaluate(val_set, als.user_factor_scorer(uf, fitted.item_factors), K)
        rows.append({"params": params.as_dict(), "ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]})
        print(f"  ALS {params.as_dict()}: validation NDCG@10 {m['ndcg@10']:.4f}", flush=True)
    best_als = max(rows, key=lambda r: (r["ndcg@10"], r["hr@10"], -r["params"]["rank"]))
    out["selection"]["als"] = {"grid": rows, "selected": best_als["params"]}
    started = time.monotonic()
    fitted = als.fit_als(_ratings(spark, train_u, train_i), als.AlsParams(**best_als["params"]), n_items=n_items,
                         max_iter=ALS_ITERATIONS, seed=seed)
    als_s = time.monotonic() - started
    user_factors = fitted.user_factors(n_users)
    fitted.release()

    # EASE: λ on validation (served top-k rows), refit on the whole training part
    gram_fit = (lambda x: x.T @ x)(_binary(n_users, n_items, fit_u, fit_i))
    best_served, lam_rows = ease.select_lambda(gram_fit, EASE_LAMBDAS, val_set, k=K, top_k=EASE_TOP_K)
    full_rows = []
    for lam in EASE_LAMBDAS:  # the full dense B, unrounded (the figure)
        m = als.evaluate(val_set, _dense_scorer(ease.ease_weights(gram_fit, lam)), K)
        full_rows.append({"lambda": lam, "ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]})
    best_full = max(full_rows, key=lambda r: (r["ndcg@10"], r["hr@10"], -r["lambda"]))
    out["selection"]["ease_full"] = {"grid": full_rows, "selected": best_full["lambda"]}
    out["selection"]["ease_served"] = {"grid": [{"lambda": r["lambda"], "ndcg@10": r["validation"]["ndcg@10"]}
                                                for r in lam_rows], "selected": best_served.lam}
    x_train = _binary(n_users, n_items, train_u, train_i)
    started = time.monotonic()
    full = ease.ease_weights(x_train.T @ x_train, best_full["lambda"])
    ease_s = time.monotonic() - started
    started = time.monotonic()
    served = ease.fit(x_train.T @ x_train, best_served.lam, EASE_TOP_K)
    served_s = time.monotonic() - started

    started = time.monotonic()
    cooc = evaluation.cooccurrence_scores(test_set.train)
    cooc_s = time.monotonic() - started
    started = time.monotonic()
    pop = evaluation.popularity_scores(test_set.train)
    pop_s = time.monotonic() - started
    scorers = {
        "ALS (user factors)": (als.user_factor_scorer(user_factors, fitted.item_factors), als_s),
        "ALS (serving: sum of item factors)": (als.item_sum_scorer(fitted.item_factors), als_s),
        f"EASE λ={best_full['lambda']:g} (full B)": (_dense_scorer(full), ease_s),
        f"EASE λ={best_served.lam:g} (served, top {EASE_TOP_K})": (ease.neighbour_scorer(served.neighbours), served_s),
        "co-occurrence": (als.matrix_scorer(cooc), cooc_s),
        "popularity": (als.popularity_scorer(pop), pop_s),
    }
    for name, (scorer, seconds) in scorers.items():
        m = als.evaluate(test_set, scorer, K)
        out["methods"][name] = {**{key: m[key] for key in ("ndcg@10", "hr@10", "precision@10")},
                                "fit_seconds": round(seconds, 2)}
    return out


# --------------------------------------------------------------------------- synthetic ensemble


def _run(argv, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as fh:
        code = subprocess.call(argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise RuntimeError(f"{' '.join(map(str, argv[:3]))} exited {code}; see {log}")


def prepare_models(work: Path, clients: int, seed: int = 42) -> tuple[Path, Path]:
    """Telemetry + the daily models of every member for ``clients`` (each step skipped when already done)."""
    from bench.jobs import prepare_data, publish_inputs

    telemetry, amo = prepare_data(work, clients, DATE, seed)
    models, etl, logs = work / "models", work / "etl", work / "logs"
    if not (models / "addon_recommender" / f"only_guids_top_200.json.{DATE:%Y%m%d}.bz2").exists():
        publish_inputs(amo, models, DATE, logs)
    done = {"locale": "taar/locale/top10_dict.json", "similarity": "taar/similarity/donors.json",
            "collaborative": "addon_recommender/item_matrix.json", "item_item": "addon_recommender/item_item.json"}
    for job, base in done.items():
        if (models / f"{base}.{DATE:%Y%m%d}.bz2").exists():
            continue
        extra = ["--grid", "none", "--no-archive-model"] if job == "collaborative" else []
        started = time.monotonic()
        _run([sys.executable, str(ROOT / "jobs" / f"taar_{job}.py"), "--date", DATE.isoformat(),
              "--model-store", str(models), "--etl-store", str(etl), "--source", str(telemetry),
              "--spark-master", "local[2]", "--seed", str(seed), *extra], logs / f"{job}.log")
        print(f"  {job}: {time.monotonic() - started:.0f} s", flush=True)
    return telemetry, models


def ensemble_comparison(telemetry: Path, models: Path, seed: int = 42, sample_rate: float = 1.0) -> dict:
    """Validation metrics of the four-member and the three-member weights on the same clients and split."""
    from jobs import taar_ensemble as job
    from taar.evaluation import at_k
    from taar.recommenders import ENSEMBLE_MEMBERS, build_engine
    from taar.storage import open_model_store
    from taar_etl import ensemble_eval as ev
    from taar_etl.spark.io import job_session

    options = job.build_parser().parse_args([
        "--date", DATE.isoformat(), "--model-store", str(models), "--source", str(telemetry),
        "--seed", str(seed), "--sample-rate", str(sample_rate), "--spark-master", "local[2]"])
    store = open_model_store(str(models))
    loaded, _, _ = job.load_models(store)
    whitelist, vocab = loaded["whitelist"], job.vocabulary(loaded)
    engine = build_engine(loaded)
    with job_session("bench-item-item-ensemble", "local[2]") as spark:
        with job.select_clients(spark, options, frozenset(whitelist)) as (clients, counts):
            blocks = job.score_clients(spark, clients, engine, {g: i for i, g in enumerate(vocab)}, whitelist,
                                       options.candidates)
    data = ev.merge_blocks(blocks)
    result = job.evaluate(data, vocab, whitelist, None, options.k)
    four = at_k(result["curves"][job.NEW], K)
    # three members, same training clients / validation clients / scales: item_item pinned at 0
    train, val, sigma = result["train"], result["val"], result["sigma"]
    c_train, c_val = ev.candidate_matrices(train, len(vocab)), ev.candidate_matrices(val, len(vocab))
    objective = ev.RankObjective(c_train, sigma, options.k)
    search3 = ev.search_weights(lambda w: objective((*w, 0)), train.n, n=3)
    weights3 = ev.published_weights((*search3.units, 0), sigma)
    three = at_k(ev.combined_curves(c_val, [weights3[r] for r in ENSEMBLE_MEMBERS], K, len(vocab)), K)
    members = {name: at_k(result["curves"][name], K) for name in ENSEMBLE_MEMBERS}
    popularity = at_k(result["curves"][job.POPULARITY], K)
    return {"clients_evaluated": data.n, "training_clients": train.n, "validation_clients": val.n,
            "counts": counts, "weights_four": result["new"], "weights_three": weights3,
            "four_members": four, "three_members": three, "members": members, "popularity": popularity}


# --------------------------------------------------------------------------- entry point


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-movielens", action="store_true", help="skip the MovieLens-100k table")
    p.add_argument("--no-ensemble", action="store_true", help="skip the synthetic ensemble comparison")
    p.add_argument("--clients", type=int, default=100_000, help="synthetic clients of the ensemble part")
    p.add_argument("--sample-rate", type=float, default=1.0, help="ensemble --sample-rate (1.0: every client)")
    p.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench" / "item_item", help="data and stores")
    p.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "jobs_item_item.json", help="results")
    options = p.parse_args(argv)
    results: dict = {}
    if not options.no_movielens:
        path = ensure_movielens()
        if path is None:
            print("MovieLens-100k: skipped (recbole could not be installed)")
        else:
            from taar_etl.spark.io import job_session

            with job_session("bench-item-item", "local[2]", 4, str(options.workdir / "checkpoints")) as spark:
                results["movielens"] = q = movielens(spark, path)
            print(f"MovieLens-100k ({q['users']} users, {q['items']} items; {q['split']}; "
                  f"ALS {q['selection']['als']['selected']}, EASE λ {q['selection']['ease_full']['selected']:g} "
                  f"(served: {q['selection']['ease_served']['selected']:g}), chosen on validation)")
            print(f"  {'method':48s} {'NDCG@10':>8s} {'HR@10':>8s} {'P@10':>8s} {'fit s':>7s}")
            for name, m in q["methods"].items():
                print(f"  {name:48s} {m['ndcg@10']:8.4f} {m['hr@10']:8.4f} {m['precision@10']:8.4f} "
                      f"{m['fit_seconds']:7.2f}")
    if not options.no_ensemble:
        work = options.workdir / f"c{options.clients}"
        print(f"== ensemble on {options.clients:,} synthetic clients ({work})", flush=True)
        telemetry, models = prepare_models(work, options.clients)
        results["ensemble"] = e = ensemble_comparison(telemetry, models, sample_rate=options.sample_rate)
        print(f"  validation clients {e['validation_clients']} (training {e['training_clients']})")
        for name in ("four_members", "three_members"):
            m = e[name]
            print(f"  {name.replace('_', ' '):14s} NDCG@10 {m['ndcg@10']:.4f}  HR@10 {m['hr@10']:.4f}  "
                  f"weights {e['weights_four' if name == 'four_members' else 'weights_three']}")
        for name, m in {**e["members"], "popularity": e["popularity"]}.items():
            print(f"  {name:14s} NDCG@10 {m['ndcg@10']:.4f}  HR@10 {m['hr@10']:.4f}")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
