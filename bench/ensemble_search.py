"""Cost of the ensemble weight search (SPEC §8.10 steps 5-6) on the driver.

Run: ``python -m bench.ensemble_search [--clients 35000] [--width 150]``. Prints one
JSON object and writes it to ``var/bench/ensemble_search.json``. The candidate
matrices are random but shaped like the job's: ``--clients`` training clients
(70 % of the default ``--max-clients`` 50000) with ``--width`` candidate GUIDs
each (one list per ensemble member, four of ``--candidates`` 50 minus overlaps), a
held-out GUID listed for 90 % of them, and members whose scores carry a little signal.
Figures: packing time, seconds per objective evaluation, points evaluated, and
the whole search.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from taar.recommenders import ENSEMBLE_MEMBERS
from taar_etl import ensemble_eval as ev


def synthetic_data(n_clients: int, width: int, n_vocab: int = 2000, seed: int = 42) -> ev.EvalData:
    rng = np.random.default_rng(seed)
    recs, targets = {}, np.empty(n_clients, dtype=np.int64)
    n = len(ENSEMBLE_MEMBERS)
    per_list = width // n + 10
    guids = np.stack([rng.choice(n_vocab, per_list * n, replace=False) for _ in range(n_clients)])
    targets[:] = guids[:, 0]
    unlisted = rng.random(n_clients) < 0.1
    targets[unlisted] = (guids[unlisted, 0] + 1) % n_vocab
    for r, name in enumerate(ENSEMBLE_MEMBERS):
        idx = guids[:, r * (per_list - 10): r * (per_list - 10) + per_list]
        score = rng.normal(size=idx.shape) + (idx == targets[:, None]) * (0.5 + r * 0.3)
        ptr = np.arange(n_clients + 1, dtype=np.int64) * per_list
        recs[name] = ev.Lists(ptr, idx.ravel(), score.ravel())
    empty = ev.Lists(np.zeros(n_clients + 1, dtype=np.int64), np.empty(0, dtype=np.int64))
    return ev.EvalData([str(i) for i in range(n_clients)], np.zeros(n_clients, dtype=bool), targets, empty, empty,
                       recs, {}, 0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=35000)
    p.add_argument("--width", type=int, default=150)
    p.add_argument("--k", type=int, default=10)
    options = p.parse_args(argv)
    data = synthetic_data(options.clients, options.width)
    started = time.perf_counter()
    cands = ev.candidate_matrices(data, 2000)
    packed = time.perf_counter() - started
    sigma = ev.scales(cands.top1)
    objective = ev.RankObjective(cands, sigma, options.k)
    started = time.perf_counter()
    objective((40,) * len(ENSEMBLE_MEMBERS))
    one = time.perf_counter() - started
    objective.cache.clear()
    started = time.perf_counter()
    result = ev.search_weights(objective, data.n)
    search = time.perf_counter() - started
    figures = {
        "clients": options.clients, "candidate_width": int(cands.guid.shape[1]), "k": options.k,
        "pack_s": round(packed, 3), "evaluation_s": round(one, 4), "evaluations": result.evaluations,
        "search_s": round(search, 2), "weights": result.weights, f"train_hr@{options.k}": round(result.hr, 4),
    }
    print(json.dumps(figures, indent=2))
    out = Path("var/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble_search.json").write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
