"""The capacity model of ``docs/capacity.md``, applied to ``bench/scaling.py`` results.

    python -m bench.capacity_model [var/bench/scaling-run3.json]

Per job, from the measured CPU seconds of the job's process tree at each client
count: a least-squares line ``CPU(N) = F + c·N`` (``F`` fixed CPU: JVM, planning,
small stages; ``c`` marginal CPU seconds per synthetic client). A production run
of ``N`` clients on ``W`` workers of ``CORES_PER_WORKER`` cores then takes

    T(N) = T_FIXED + S + c·N·rows / (W·CORES_PER_WORKER·EFFICIENCY)

where ``rows`` is the job's production-to-synthetic work per client and ``S`` the
measured single-task stage seconds at the largest size (constant: none of the
remaining single-task stages grows with clients, see docs/capacity.md); the cost is
``(T + CLUSTER_OVERHEAD_S) × (W·WORKER_USD_H + MASTER_USD_H) / 3600``. Every
constant below that is not measured is an estimate (see docs/capacity.md).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# ---- estimates (not measured here)
#: Cluster shape: 1 × n2-standard-4 master, W × n2-highmem-8 workers (8 vCPU, 64 GB), 500 GB pd-balanced each.
CORES_PER_WORKER = 8
#: us-central1 on-demand list prices (USD/hour): n2-highmem-8 0.524 + Dataproc 8 × 0.01 + disk 0.07;
#: n2-standard-4 0.194 + 4 × 0.01 + disk 0.07.
WORKER_USD_H = 0.524 + 0.08 + 0.07
MASTER_USD_H = 0.194 + 0.04 + 0.07
#: Share of the cluster's cores doing useful work (network shuffles, stragglers, Python serialisation).
EFFICIENCY = 0.6
#: Driver-side wall time that does not shrink with the cluster (session start, planning, publishing).
T_FIXED_S = 60.0
#: Cluster creation + deletion billed per run (Dataproc bills per second, 1 minute minimum).
CLUSTER_OVERHEAD_S = 180.0
#: Production input rows per client over synthetic ones: clients_daily has ~0.4 rows/client/day in
#: production (DAU/MAU ~0.4) against 0.033 in the synthetic data (3 active days in 90); a
#: clients_last_seen day has one row per client in both.
#: collaborative: only its input stages (~35 % of its stage time at 1M in the event log) see the 12x;
#: the ALS part grows with distinct item sets, not rows: 0.35·12 + 0.65 ≈ 5.
ROWS = {"locale": 12.0, "similarity": 1.0, "lite_guidguid": 12.0, "collaborative": 5.0}
#: Workers per scale (the plan's named cluster sizes).
PLAN = {10_000_000: 4, 50_000_000: 8, 150_000_000: 16}


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``(F, c)`` of ``y = F + c·x``."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    c = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - c * mx, c


def project(job: str, per_client: float, single_task_s: float, n: int, workers: int) -> dict:
    work = per_client * n * ROWS[job]
    seconds = T_FIXED_S + single_task_s + work / (workers * CORES_PER_WORKER * EFFICIENCY)
    usd = (seconds + CLUSTER_OVERHEAD_S) * (workers * WORKER_USD_H + MASTER_USD_H) / 3600
    return {"minutes": seconds / 60, "usd": usd, "core_hours": work / 3600}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else REPO / "var" / "bench" / "scaling-run3.json"
    results = json.loads(path.read_text())["results"]
    print(f"measured ({path.name}): CPU(N) = F + c·N per job")
    print("| job | F (CPU s) | c (CPU µs / client) | serial % at largest N | "
          + " | ".join(f"{n // 1_000_000}M: min / USD ({w}×8 cores)" for n, w in PLAN.items()) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(PLAN))
    total = {n: [0.0, 0.0] for n in PLAN}
    for row in results:
        job = row["job"]
        points = sorted((int(k), v["cpu_s"]) for k, v in row.items() if k.isdigit() and v.get("ok"))
        if len(points) < 2:
            continue
        fixed, per_client = fit_line(points)
        largest = row[str(points[-1][0])]
        serial = (largest.get("serial_pct") or 0.0) / 100
        cells = []
        for n, workers in PLAN.items():
            p = project(job, per_client, largest.get("single_task_s") or 0.0, n, workers)
            total[n][0] += p["minutes"]
            total[n][1] += p["usd"]
            cells.append(f"{p['minutes']:.1f} / {p['usd']:.2f}")
        print(f"| {job} | {fixed:.0f} | {per_client * 1e6:.1f} | {100 * serial:.2f} | " + " | ".join(cells) + " |")
    print("| all four (sequential) | | | | " + " | ".join(f"{m:.1f} / {u:.2f}" for m, u in total.values()) + " |")
    exp = {row["job"]: row.get("exponent_cpu") for row in results}
    print("CPU scaling exponents (smallest -> largest N):", exp)
    if not all(math.isfinite(v) for v, _ in total.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
