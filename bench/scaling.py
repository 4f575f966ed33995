"""Scaling of the daily PySpark jobs: time, exponent, serial fraction and driver memory (issue 16).

    python -m bench.scaling [--clients 100000 1000000] [--jobs locale,similarity,lite_guidguid,collaborative]

For each client count: synthetic telemetry and the day's input artifacts exactly as
``bench/jobs.py`` prepares them (reused when already generated), then each job, one
at a time, as its own ``python jobs/taar_<job>.py ... --spark-master local[2]``
process with Spark's event log switched on (``spark.eventLog.enabled`` into a
per-run directory). Reported per job and size:

* ``wall_s``: the process's wall clock (JVM start included); ``cpu_s``: CPU seconds of
  its whole process tree (driver, JVM, Python workers), the figure that survives a
  shared machine;
* ``single_task_s`` / ``serial_pct``: wall time during which the only stages
  running had one task each, as a share of the application's time (Amdahl's serial
  part: a cluster cannot shorten it). The stages are listed by name;
* ``driver_only_pct``: application time with no stage running at all (planning,
  driver-side numpy, publishing): also serial, reported apart;
* ``jvm_peak_mb`` (VmHWM of the local-mode JVM: driver and executors share it),
  ``driver_py_peak_mb`` (VmHWM of the job's Python driver process), and the
  driver's JVM heap peak from the event log's executor metrics.

The scaling exponent of a job between two sizes is ``log(T2/T1) / log(N2/N1)``.
Results go to ``./var/bench/scaling.json``; the table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.jobs import DEFAULT_DATE, prepare_data, publish_inputs

REPO = Path(__file__).resolve().parent.parent
#: Job -> flags beyond the common ones: what the local DAG target passes.
JOBS = {
    "locale": [],
    "similarity": [],
    "lite_guidguid": [],
    "collaborative": ["--grid", "none"],
}


# --------------------------------------------------------------------------- memory


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class PeakMemory(threading.Thread):
    """Poll a process tree: the greatest VmHWM (peak RSS) per kind of process, and CPU seconds.

    CPU time is the last utime + stime seen of every process of the tree (so at most
    one polling interval per process is missed): unlike wall time it hardly depends
    on how many other processes share the machine.
    """

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peaks, self._done = pid, interval, {}, threading.Event()
        self.cpu: dict[int, float] = {}

    def _kind(self, pid: int) -> str:
        if pid == self.pid:
            return "driver_py"
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            return "other"
        if b"java" in cmd.split(b" ")[0]:
            return "jvm"
        return "workers_py" if b"pyspark" in cmd else "other"

    def run(self):
        while not self._done.is_set():
            todo, seen = [self.pid], set()
            while todo:
                pid = todo.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                todo += _children(pid)
                kind = self._kind(pid)
                self.peaks[kind] = max(self.peaks.get(kind, 0), _status_kb(pid, "VmHWM"))
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_s(pid))
            self._done.wait(self.interval)

    def stop(self) -> dict:
        self._done.set()
        self.join()
        return {"cpu_s": round(sum(self.cpu.values()), 1),
                **{f"{k}_peak_mb": round(v / 1024, 1) for k, v in sorted(self.peaks.items())}}


# --------------------------------------------------------------------------- event log


def _union(intervals) -> float:
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def parse_event_log(path: Path) -> dict:
    """Stage timings of one application's event log (JSON lines).

    ``serial`` time is the wall time covered by single-task stages and by no
    multi-task stage; ``driver_only`` is the time no stage runs at all.
    """
    app_start = app_end = None
    stages, driver_heap = [], 0
    with open(path) as f:
        for line in f:
            event = json.loads(line)
            kind = event.get("Event")
            if kind == "SparkListenerApplicationStart":
                app_start = event["Timestamp"]
            elif kind == "SparkListenerApplicationEnd":
                app_end = event["Timestamp"]
            elif kind == "SparkListenerStageCompleted":
                info = event["Stage Info"]
                if info.get("Submission Time") and info.get("Completion Time"):
                    stages.append({"id": info["Stage ID"], "name": info["Stage Name"], "tasks": info["Number of Tasks"],
                                   "start": info["Submission Time"], "end": info["Completion Time"]})
            elif kind == "SparkListenerStageExecutorMetrics" and event.get("Executor ID") == "driver":
                driver_heap = max(driver_heap, event.get("Executor Metrics", {}).get("JVMHeapMemory", 0))
    if app_start is None:
        raise ValueError(f"{path}: no application start event")
    app_end = app_end or max((s["end"] for s in stages), default=app_start)
    app_s = (app_end - app_start) / 1000
    multi = [(s["start"], s["end"]) for s in stages if s["tasks"] > 1]
    single = [s for s in stages if s["tasks"] == 1]
    # single-task stage time not overlapped by any multi-task stage
    single_s = max(0.0, _union([(s["start"], s["end"]) for s in single] + multi) - _union(multi)) / 1000
    busy_s = _union([(s["start"], s["end"]) for s in stages]) / 1000
    by_name: dict[str, list] = {}
    for s in single:
        by_name.setdefault(s["name"], []).append((s["end"] - s["start"]) / 1000)
    top = sorted(((round(sum(v), 2), len(v), k) for k, v in by_name.items()), reverse=True)[:6]
    return {"app_s": round(app_s, 1), "stages": len(stages), "single_task_stages": len(single),
            "single_task_s": round(single_s, 2), "serial_pct": round(100 * single_s / app_s, 2) if app_s else None,
            "driver_only_pct": round(100 * (app_s - busy_s) / app_s, 1) if app_s else None,
            "max_tasks": max((s["tasks"] for s in stages), default=0),
            "driver_jvm_heap_peak_mb": round(driver_heap / 2**20, 1),
            "single_task_top": [{"seconds": s, "stages": n, "name": name} for s, n, name in top]}


# --------------------------------------------------------------------------- runs


def run_job(job: str, telemetry: Path, models: Path, etl: Path, date: dt.date, seed: int, logs: Path,
            master: str, extra: list[str]) -> dict:
    """Run one job with the event log on; return its timings, memory and stage figures."""
    events = logs / f"events-{job}"
    events.mkdir(parents=True, exist_ok=True)
    for old in events.iterdir():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    conf = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": events.resolve().as_uri(),
            "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false",
            "spark.eventLog.logStageExecutorMetrics": "true"}
    submit = " ".join(f"--conf {k}={v}" for k, v in conf.items()) + " pyspark-shell"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO), "PYSPARK_SUBMIT_ARGS": submit}
    argv = [sys.executable, str(REPO / "jobs" / f"taar_{job}.py"), "--date", date.isoformat(),
            "--model-store", str(models), "--etl-store", str(etl), "--source", str(telemetry),
            "--spark-master", master, "--seed", str(seed), *JOBS[job], *extra]
    log_path = logs / f"{job}.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        memory = PeakMemory(proc.pid)
        memory.start()
        code = proc.wait()
    result = {"job": job, "ok": code == 0, "exit_code": code, "wall_s": round(time.monotonic() - started, 1),
              **memory.stop(), "log": str(log_path)}
    files = sorted(events.iterdir())
    if files:
        result.update(parse_event_log(files[-1]))
    return result


def exponent(t1: float, t2: float, n1: int, n2: int) -> float:
    """``b`` in ``T ∝ N^b`` through two points."""
    return math.log(t2 / t1) / math.log(n2 / n1)


def print_table(results: dict[int, list[dict]]) -> list[dict]:
    sizes = sorted(results)
    print(f"{'job':14}{'clients':>10}{'wall s':>9}{'CPU s':>8}{'stages':>8}{'1-task':>8}{'serial %':>10}{'driver-only %':>15}"
          f"{'JVM MB':>9}{'drv py MB':>11}{'heap MB':>9}")
    summary = []
    for job in dict.fromkeys(r["job"] for rs in results.values() for r in rs):
        row = {"job": job}
        for n in sizes:
            r = next((r for r in results[n] if r["job"] == job), None)
            if r is None:
                continue
            row[str(n)] = r
            print(f"{job:14}{n:>10,}{r['wall_s']:>9.1f}{r.get('cpu_s', 0):>8.0f}{r.get('stages', 0):>8}{r.get('single_task_stages', 0):>8}"
                  f"{r.get('serial_pct') or 0:>10.2f}{r.get('driver_only_pct') or 0:>15.1f}"
                  f"{r.get('jvm_peak_mb', 0):>9.0f}{r.get('driver_py_peak_mb', 0):>11.0f}"
                  f"{r.get('driver_jvm_heap_peak_mb', 0):>9.0f}{'' if r['ok'] else '  FAILED'}")
        ok = [n for n in sizes if str(n) in row and row[str(n)]["ok"]]
        if len(ok) >= 2:
            lo, hi = row[str(ok[0])], row[str(ok[-1])]
            row["exponent_wall"] = round(exponent(lo["wall_s"], hi["wall_s"], ok[0], ok[-1]), 2)
            row["exponent_cpu"] = round(exponent(lo["cpu_s"], hi["cpu_s"], ok[0], ok[-1]), 2)
            if lo.get("app_s") and hi.get("app_s"):
                row["exponent_app"] = round(exponent(lo["app_s"], hi["app_s"], ok[0], ok[-1]), 2)
            print(f"{'':14}scaling exponent {ok[0]:,} -> {ok[-1]:,}: wall {row['exponent_wall']}, "
                  f"CPU {row['exponent_cpu']}, Spark application {row.get('exponent_app')}")
        for n in ok:
            for s in row[str(n)].get("single_task_top", [])[:3]:
                print(f"{'':14}{n:>10,} 1-task: {s['seconds']:.2f} s in {s['stages']} x {s['name']}")
        summary.append(row)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[100_000, 1_000_000], help="client counts")
    p.add_argument("--jobs", default=",".join(JOBS), help=f"comma list of {', '.join(JOBS)}")
    p.add_argument("--date", type=dt.date.fromisoformat, default=DEFAULT_DATE, help="logical date D")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--master", default="local[2]", help="Spark master of every job")
    p.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench" / "scaling", help="data and stores")
    p.add_argument("--out", type=Path, default=REPO / "var" / "bench" / "scaling.json", help="results file")
    p.add_argument("--job-arg", action="append", default=[], metavar="JOB=FLAG",
                   help="extra flag for one job, e.g. collaborative=--num-blocks=8 (repeatable)")
    args = p.parse_args(argv)
    wanted = [j for j in args.jobs.split(",") if j]
    unknown = set(wanted) - set(JOBS)
    if unknown:
        p.error(f"unknown jobs {sorted(unknown)}")
    extra: dict[str, list[str]] = {}
    for item in args.job_arg:
        job, _, flag = item.partition("=")
        extra.setdefault(job, []).append(flag)

    results: dict[int, list[dict]] = {}
    for n in sorted(args.clients):
        work = args.work_dir / f"clients-{n}"
        print(f"== {n:,} clients ({work})", flush=True)
        telemetry, amo = prepare_data(work, n, args.date, args.seed)
        models, etl, logs = work / "models", work / "etl", work / "logs"
        publish_inputs(amo, models, args.date, logs)
        results[n] = []
        for job in wanted:  # one at a time: the machine is shared
            r = run_job(job, telemetry, models, etl, args.date, args.seed, logs, args.master, extra.get(job, []))
            print(f"  {job}: wall {r['wall_s']} s, CPU {r['cpu_s']} s, serial {r.get('serial_pct')} %, "
                  f"JVM peak {r.get('jvm_peak_mb')} MB{'' if r['ok'] else ' FAILED (see ' + r['log'] + ')'}",
                  flush=True)
            results[n].append(r)
    summary = print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": args.date.isoformat(), "master": args.master, "seed": args.seed,
                                    "cpus": os.cpu_count(), "results": summary}, indent=2))
    print(f"results: {args.out}")
    return 0 if all(r["ok"] for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
