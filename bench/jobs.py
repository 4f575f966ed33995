"""Runtime of the daily PySpark jobs on synthetic clients (SPEC §13 E1/E2, per job).

    python -m bench.jobs [--clients 100000 1000000] [--jobs locale,similarity,lite_guidguid,collaborative]

For each client count: generate synthetic telemetry and an AMO catalogue
(``taar_dev.synthetic``, reused when the manifest matches), publish the day's input
artifacts the way the DAG does (``taar_update_whitelist`` and ``taar_amodump``
against a loopback fake AMO), then run each job as the local DAG target does: a
separate ``python jobs/<job>.py ... --spark-master local[2]`` process. Each job is
timed twice: the wall clock of its process (JVM start included) and the job's own
``duration_s`` log field. The table ends with the scaling ratio T(largest) / T(smallest)
(target: T(1M) <= 12 x T(100k)). Results go to ``./var/bench/jobs.json``.

Collaborative: ``bench/jobs_collaborative.py`` (owned by the collaborative job)
provides ``run(...)``; :func:`bench_collaborative` calls it once for all sizes when
that module exists (it also measures Q1 on MovieLens-100k unless ``--no-movielens``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATE = dt.date(2026, 11, 20)
#: Job name -> extra flags beyond the common ones (defaults of SPEC §8 otherwise).
JOBS = {
    "locale": [],
    "similarity": [],
    "lite_guidguid": [],
}
ALL_JOBS = (*JOBS, "collaborative")

logger = logging.getLogger("bench.jobs")


def prepare_data(work: Path, clients: int, date: dt.date, seed: int) -> tuple[Path, Path]:
    """Synthetic telemetry + AMO catalogue for ``clients`` (reused when already generated)."""
    telemetry, amo = work / "telemetry", work / "amo"
    manifest = telemetry / "_synthetic" / "manifest.json"
    if manifest.exists():
        params = json.loads(manifest.read_text()).get("params", {})
        if params.get("clients") == clients and params.get("seed") == seed \
                and str(params.get("end_date")) == date.isoformat():
            print(f"  reusing synthetic data in {work}")
            return telemetry, amo
    started = time.monotonic()
    _run([sys.executable, "-m", "taar_dev.synthetic", "--out", str(telemetry), "--amo-out", str(amo),
          "--clients", str(clients), "--end-date", date.isoformat(), "--seed", str(seed), "--workers", "2"],
         work / "synthetic.log")
    print(f"  generated {clients} clients in {time.monotonic() - started:.1f} s")
    return telemetry, amo


def publish_inputs(amo: Path, models: Path, date: dt.date, log_dir: Path) -> None:
    """The curated whitelist and the AMO database dated D, from a loopback fake AMO."""
    from taar_dev.fake_amo import FakeAMO

    server = FakeAMO(amo)
    base = server.start()
    try:
        common = ["--date", date.isoformat(), "--model-store", str(models), "--amo-url", base]
        _run([sys.executable, "-m", "taar_etl.taar_update_whitelist", *common], log_dir / "whitelist.log")
        _run([sys.executable, "-m", "taar_etl.taar_amodump", *common], log_dir / "amodump.log")
    finally:
        server.stop()


def _run(argv, log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO)}
    with open(log_path, "w") as log:
        code = subprocess.call(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} exited {code}; see {log_path}")
    return code


def job_duration(log_path: Path) -> float | None:
    """The ``duration_s`` of the job's final "finished" JSON log line."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if line.startswith("{") and '"duration_s"' in line:
            try:
                return float(json.loads(line)["duration_s"])
            except (ValueError, KeyError):
                return None
    return None


def bench_job(job: str, telemetry: Path, models: Path, etl: Path, date: dt.date, master: str, seed: int,
              log_dir: Path) -> dict:
    """Run ``jobs/taar_<job>.py`` once in its own process; return its timings."""
    argv = [sys.executable, str(REPO / "jobs" / f"taar_{job}.py"), "--date", date.isoformat(),
            "--model-store", str(models), "--etl-store", str(etl), "--source", str(telemetry),
            "--spark-master", master, "--seed", str(seed), *JOBS[job]]
    log_path = log_dir / f"{job}.log"
    started = time.monotonic()
    try:
        _run(argv, log_path)
        ok = True
    except RuntimeError as exc:
        print(f"  {job}: FAILED ({exc})")
        ok = False
    return {"job": job, "ok": ok, "wall_s": round(time.monotonic() - started, 1),
            "job_s": job_duration(log_path), "log": str(log_path)}


def bench_collaborative(sizes, work_dir: Path, movielens: bool = True) -> dict[int, dict] | None:
    """Slot for the collaborative job: ``bench.jobs_collaborative.run(...)`` when that module exists.

    That module generates its own inputs, times ``jobs/taar_collaborative.py`` at each
    size (and, with ``movielens``, measures Q1 on MovieLens-100k), prints its figures
    and saves ``var/bench/jobs_collaborative.json``. Its runtimes join the table here.
    """
    try:
        module = importlib.import_module("bench.jobs_collaborative")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench.jobs_collaborative", "bench"):
            raise
        print("  collaborative: bench/jobs_collaborative.py not present, skipped")
        return None
    results = module.run(sizes=tuple(sizes), workdir=str(work_dir / "collaborative"), movielens=movielens)
    return {r["clients"]: {"job": "collaborative", "ok": r["exit_code"] == 0, "wall_s": r["seconds"],
                           "job_s": None, "log": None} for r in results.get("runtime", [])}


def _secs(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(results: dict[int, list[dict]]) -> list[dict]:
    """Per job: seconds at each size and the scaling ratio largest / smallest."""
    sizes = sorted(results)
    jobs = list(dict.fromkeys(r["job"] for rs in results.values() for r in rs))
    header = "job".ljust(16) + "".join(f"{f'{n:,} wall/job (s)':>26}" for n in sizes)
    if len(sizes) > 1:
        header += f"{f'ratio {sizes[-1]:,}/{sizes[0]:,}':>26}"
    print(header)
    summary = []
    for job in jobs:
        row = {"job": job}
        line = job.ljust(16)
        for n in sizes:
            r = next((r for r in results[n] if r["job"] == job), None)
            cell = "-" if r is None else ("failed" if not r["ok"] else f"{r['wall_s']:.1f} / {_secs(r.get('job_s'))}")
            line += f"{cell:>26}"
            row[str(n)] = r
        if len(sizes) > 1:
            lo = next((r for r in results[sizes[0]] if r["job"] == job and r["ok"]), None)
            hi = next((r for r in results[sizes[-1]] if r["job"] == job and r["ok"]), None)
            if lo and hi:
                ratio = hi["wall_s"] / lo["wall_s"]
                job_ratio = (hi["job_s"] / lo["job_s"]) if lo.get("job_s") and hi.get("job_s") else None
                row["ratio_wall"], row["ratio_job"] = round(ratio, 2), job_ratio and round(job_ratio, 2)
                line += f"{f'{ratio:.2f} (job {job_ratio:.2f})' if job_ratio else f'{ratio:.2f}':>26}"
        print(line)
        summary.append(row)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[100_000, 1_000_000], help="client counts")
    p.add_argument("--jobs", default=",".join(ALL_JOBS), help=f"comma list of {', '.join(ALL_JOBS)}")
    p.add_argument("--date", type=dt.date.fromisoformat, default=DEFAULT_DATE, help="logical date D")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--master", default="local[2]", help="Spark master of every job")
    p.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench" / "jobs", help="data and stores")
    p.add_argument("--no-movielens", action="store_true", help="skip the collaborative MovieLens-100k part")
    p.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "jobs.json", help="results file")
    args = p.parse_args(argv)
    wanted = [j for j in args.jobs.split(",") if j]
    unknown = set(wanted) - set(ALL_JOBS)
    if unknown:
        p.error(f"unknown jobs {sorted(unknown)}")

    results: dict[int, list[dict]] = {}
    own = [j for j in wanted if j in JOBS]
    for n in sorted(args.clients) if own else ():
        work = args.work_dir / f"clients-{n}"
        print(f"== {n:,} clients ({work})")
        telemetry, amo = prepare_data(work, n, args.date, args.seed)
        models, etl, logs = work / "models", work / "etl", work / "logs"
        publish_inputs(amo, models, args.date, logs)
        results[n] = []
        for job in own:
            r = bench_job(job, telemetry, models, etl, args.date, args.master, args.seed, logs)
            print(f"  {r['job']}: wall {r['wall_s']} s, job {r.get('job_s')} s{'' if r['ok'] else ' FAILED'}")
            results[n].append(r)
    if "collaborative" in wanted:
        print("== collaborative (bench/jobs_collaborative.py)")
        collaborative = bench_collaborative(sorted(args.clients), args.work_dir, not args.no_movielens)
        for n, r in (collaborative or {}).items():
            results.setdefault(n, []).append(r)
    summary = print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": args.date.isoformat(), "master": args.master, "seed": args.seed,
                                    "cpus": os.cpu_count(), "results": summary}, indent=2))
    print(f"results: {args.out}")
    return 0 if all(r["ok"] for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
