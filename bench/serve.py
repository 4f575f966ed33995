"""Serving benchmark: the SPEC §13 targets against gunicorn as in production (issue 11 sizes).

Run: ``python -m bench.serve [--duration 10] [--connections 16] [--profiles 20000] [--profile-requests 2000]``.
Prints a summary (ratios, p99, single-request median, CPU ms per request, an
in-process cProfile summary of the per-user route) and writes every figure to
``var/bench/serve.json``.

What it does, all on 127.0.0.1:

1. Models: synthetic ones at production-like sizes (``bench.recommenders.synthetic_models``:
   200 whitelist GUIDs, 5 000 x 32 item factors, 1 000 donors x 1 000 LR points, an EASE
   item-item model over the whitelist (50 neighbours each, the fourth ensemble member), a
   TAARlite co-install graph over 5 000 GUIDs with ~50 neighbours each), published with
   ``taar.publishing`` into ``var/bench/serve/models`` (``--models DIR`` serves an
   existing store instead, e.g. ``./var/models``). Profiles: ``--profiles`` (20 000)
   synthetic clients in SQLite and in the Bigtable emulator.
2. Run 1 (SQLite profiles): ``gunicorn -c python:taar_web.gunicorn_conf taar_web.wsgi:app``
   with WORKERS=2 THREADS=8 and statsd metrics (bound to loopback). Single-request
   median: one connection, one request at a time (its CPU per request is the cost at a
   light load, where workers idle between requests). CPU ms per request: the workers'
   user+system CPU during a load divided by its requests, for /__lbheartbeat__, the
   per-user route and TAARlite (run 2 adds the emulator's CPU per request). Cold start = process start to the
   first ``/__heartbeat__`` 200 (S5). Load with ``--connections`` keep-alive connections,
   ``--duration`` seconds per endpoint in ``--rounds`` turns (the machine's speed drifts
   over a minute; ratios of loads measured in alternation hold better):
   ``/__lbheartbeat__``, the per-user route (90 % known, 10 % unknown ids), TAARlite
   on popular GUIDs (S1-S3). Per-worker RSS/PSS. Then the per-user load again while
   the models are republished 3 times (refresh interval 1 s): failed requests (S4).
3. Run 2 (Bigtable emulator profiles): lbheartbeat and the per-user route (in turns) and,
   in the same turns, two control servers (``bench.serve_conf``) serving the per-user
   route from SQLite as is and with an idle ``--control-wait-ms`` wait in each profile
   read: they split a Bigtable request's CPU into the request itself, the cost of
   blocking on a remote read, and the gRPC client (``where_the_time_goes``); the Bigtable
   server's statsd metrics come to a listener here, which gives reads per ``ReadRows`` call. Then the
   per-user route while the emulator is stopped (SIGSTOP) with THREADS connections (no
   request queues behind another): every answer must be a 200 within the profile
   deadline + 50 ms (S6); the same with WORKERS x THREADS connections is reported beside.

Load comes from ``wrk`` when installed (``apt-get install wrk``), else from a small
asyncio keep-alive client in this process. Figures from a shared 2-core machine are
noisy: compare endpoints within one run, as the targets do.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

OUT = Path("var/bench")
WORK = OUT / "serve"
PROFILE_TIMEOUT_MS = 150
N_ITEMS, N_GUIDS, DEGREE = 5000, 5000, 50
TARGETS = {
    "S1": "per-user throughput >= 50 % of /__lbheartbeat__ (SQLite), >= 35 % (Bigtable)",
    "S2": "per-user p99 <= 40 ms",
    "S2b": "per-user single-request median <= 3 ms",
    "S3": "TAARlite throughput >= 80 % of /__lbheartbeat__",
    "S4": "0 failed requests while models are republished 3 times",
    "S5": "cold start <= 5 s",
    "S6": f"every answer 200 within {PROFILE_TIMEOUT_MS} + 50 ms with the profile store stalled",
}


# --------------------------------------------------------------------------- data


def publish_models(store_dir: Path, date: dt.date, seed: int = 42, perturb: int = 0) -> None:
    """Publish the synthetic models for ``date`` (``perturb`` changes the numbers, not the shapes)."""
    from bench.recommenders import synthetic_models
    from taar.publishing import publish, publish_group
    from taar.storage import open_model_store

    models = synthetic_models(N_GUIDS, DEGREE, seed=seed + perturb, n_items=N_ITEMS)
    store = open_model_store(str(store_dir))
    producer = "bench/serve"
    publish_group(store, {k: models[k] for k in ("item_matrix", "addon_mapping")}, date, producer)
    publish_group(store, {k: models[k] for k in ("donors", "lr_curves")}, date, producer)
    for key in ("whitelist", "locale", "item_item", "coinstall", "ranking", "ensemble_weights"):
        publish(store, key, models[key], date, producer)


def republish_some(store_dir: Path, date: dt.date, perturb: int) -> None:
    """A daily-pipeline-like republish: the collaborative pair, locale and TAARlite coinstall."""
    from bench.recommenders import synthetic_models
    from taar.publishing import publish, publish_group
    from taar.storage import open_model_store

    models = synthetic_models(N_GUIDS, DEGREE, seed=42 + perturb, n_items=N_ITEMS)
    store = open_model_store(str(store_dir))
    publish_group(store, {k: models[k] for k in ("item_matrix", "addon_mapping")}, date, "bench/serve")
    publish(store, "locale", models["locale"], date, "bench/serve")
    publish(store, "coinstall", models["coinstall"], date, "bench/serve")


def synthetic_profiles(n: int, whitelist: list[str], locales: list[str], seed: int = 7):
    """``(hashed_id, payload bytes)`` for ``n`` clients with 0-10 whitelist add-ons each."""
    import numpy as np

    from taar.profile import encode_payload

    rng = np.random.default_rng(seed)
    cities, oses = ["Rome", "Paris", "Berlin", "Oslo", ""], ["Linux", "Darwin", "Windows_NT"]
    rows = []
    for i in range(n):
        hashed = f"{rng.integers(0, 2**63):016x}{i:048x}"
        installed = rng.choice(whitelist, int(rng.integers(0, 11)), replace=False).tolist()
        payload = {
            "client_id": hashed, "geo_city": cities[i % len(cities)], "locale": locales[i % len(locales)],
            "os": oses[i % len(oses)], "subsession_length": int(rng.integers(0, 100000)),
            "bookmark_count": int(rng.integers(0, 500)), "tab_open_count": int(rng.integers(0, 1000)),
            "total_uri": int(rng.integers(0, 10000)), "unique_tlds": int(rng.integers(0, 200)),
            "active_addons": [{"addon_id": g, "is_system": False, "type": "extension"} for g in installed],
        }
        rows.append((hashed, encode_payload(payload)))
    return rows


def load_profiles(uri: str, rows, batch: int = 2000) -> float:
    from taar.storage import open_profile_store

    store = open_profile_store(uri)
    store.ensure_table()
    started = time.perf_counter()
    ts_ms = int(time.time() * 1000)
    for i in range(0, len(rows), batch):
        store.put_many(rows[i:i + batch], ts_ms)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- server


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """``gunicorn -c python:taar_web.gunicorn_conf taar_web.wsgi:app`` on a loopback port (``conf``: another config)."""

    def __init__(self, env: dict, log_path: Path, conf: str = "python:taar_web.gunicorn_conf"):
        self.conf = conf
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "PORT": str(self.port)}
        self.log_path = log_path
        self.proc = None
        self.cold_start_s = None

    def __enter__(self) -> Server:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in __exit__
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(gunicorn), "-c", self.conf, "-b", f"127.0.0.1:{self.port}",
             "taar_web.wsgi:app"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = started + 120
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status, body = http_get(self.base + "/__heartbeat__", timeout=2)
                if status == 200:
                    self.cold_start_s = time.perf_counter() - started
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"no healthy heartbeat after 120 s; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the workers so far (``/proc/<pid>/stat``)."""
        total = 0.0
        for pid in self.worker_pids():
            try:
                total += process_cpu_seconds(pid)
            except OSError:  # a worker that exited since the listing
                continue
        return total

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def memory(self) -> dict:
        """RSS and PSS (shared pages split between sharers) of the master and each worker, in MiB."""
        def read(pid):
            fields = {}
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0]) / 1024
            return {"rss_mib": round(fields["Rss"], 1), "pss_mib": round(fields["Pss"], 1)}

        return {"master": read(self.proc.pid), "workers": [read(pid) for pid in self.worker_pids()]}


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    label: str
    client: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    failures: int  # connection errors, timeouts and non-2xx/3xx answers


WRK_SCRIPT = """
local paths = {%s}
local n = #paths
local i = 0
local offset = 0
setup = function(thread)
  thread:set("offset", math.random(n))
end
init = function(args)
  i = offset or 0
end
request = function()
  i = (i %% n) + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def run_wrk(base: str, paths: list[str], duration_s: float, connections: int, label: str) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % ", ".join(json.dumps(p) for p in paths))
    try:
        threads = min(2, connections)
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "5s", "-s", script.name,
             base], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    r = json.loads(line[len("WRKJSON "):])
    seconds = r["duration_us"] / 1e6
    failures = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return LoadResult(label, "wrk", connections, round(seconds, 2), r["requests"], round(r["requests"] / seconds, 1),
                      round(r["p50_us"] / 1000, 2), round(r["p99_us"] / 1000, 2), round(r["max_us"] / 1000, 2),
                      failures)


async def _connection(host, port, paths, start, deadline, latencies, failures):
    index, reader, writer = start, None, None
    while time.perf_counter() < deadline:
        path = paths[index % len(paths)]
        index += 1
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            t0 = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status = int((await reader.readline()).split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and value.strip().lower() == "close":
                    close = True
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not 200 <= status < 400:
                failures.append(status)
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError) as exc:
            failures.append(repr(exc))
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


def run_python(base: str, paths: list[str], duration_s: float, connections: int, label: str) -> LoadResult:
    host, port = base.removeprefix("http://").split(":")
    latencies, failures = [], []

    async def main():
        deadline = time.perf_counter() + duration_s
        await asyncio.gather(*(_connection(host, int(port), paths, i * 997, deadline, latencies, failures)
                               for i in range(connections)))

    started = time.perf_counter()
    asyncio.run(main())
    seconds = time.perf_counter() - started
    latencies.sort()

    def pct(q):
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else 0.0

    return LoadResult(label, "python-asyncio", connections, round(seconds, 2), len(latencies),
                      round(len(latencies) / seconds, 1), pct(0.50), pct(0.99),
                      round(latencies[-1] * 1000, 2) if latencies else 0.0, len(failures))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_seconds(server, extra_pids=()) -> list[float]:
    """CPU seconds so far: the workers', then each of ``extra_pids``'."""
    return [server.cpu_seconds(), *(process_cpu_seconds(pid) for pid in extra_pids)]


def record_cpu(cpu: dict, label: str, spent: list[float], extra_pids, requests: int) -> None:
    """``cpu[label]``: ms per request of the CPU seconds :func:`cpu_seconds` differences ``spent``, printed."""
    n = max(1, requests)
    cpu[label] = {"workers_ms": round(spent[0] * 1000 / n, 3)}
    for pid, seconds in zip(extra_pids, spent[1:], strict=True):
        cpu[label][f"pid_{pid}_ms"] = round(seconds * 1000 / n, 3)
    print(f"  {'':<34} CPU per request: {cpu[label]}", flush=True)


def measured_load(server, paths, duration_s, connections, label, client, cpu: dict, extra_pids=()) -> LoadResult:
    """:func:`run_load`, recording CPU ms per request of the workers (and of ``extra_pids``) in ``cpu[label]``."""
    before = cpu_seconds(server, extra_pids)
    result = run_load(server.base, paths, duration_s, connections, label, client)
    spent = [after - start for after, start in zip(cpu_seconds(server, extra_pids), before, strict=True)]
    record_cpu(cpu, label, spent, extra_pids, result.requests)
    return result


def interleaved_loads(loads, args, client, cpu: dict) -> dict[str, LoadResult]:
    """Several loads taking turns: ``args.rounds`` rounds of ``args.duration / args.rounds`` s each.

    ``loads`` is ``[(key, label, server, paths, extra_pids), ...]``. The machine's speed drifts over
    a minute, so loads compared with each other (S1, S3) are measured in alternation, not
    one after the other. Each load's result adds its rounds up: requests, time and
    failures summed (so req/s is over all rounds), p50 the median of the rounds', p99 and
    max the largest (conservative); ``cpu[label]`` is its CPU over all its requests.
    """
    rounds = {key: [] for key, *_ in loads}
    spent = {key: [0.0] * (1 + len(extra)) for key, _, _, _, extra in loads}
    for _ in range(args.rounds):
        for key, label, server, paths, extra_pids in loads:
            before = cpu_seconds(server, extra_pids)
            rounds[key].append(run_load(server.base, paths, args.duration / args.rounds, args.connections, label,
                                        client))
            for i, (after, start) in enumerate(zip(cpu_seconds(server, extra_pids), before, strict=True)):
                spent[key][i] += after - start
    combined = {}
    for key, label, _, _, extra_pids in loads:
        results = rounds[key]
        requests, seconds = sum(r.requests for r in results), sum(r.duration_s for r in results)
        combined[key] = LoadResult(
            label, results[0].client, results[0].connections, round(seconds, 2), requests,
            round(requests / seconds, 1) if seconds else 0.0, statistics.median(r.p50_ms for r in results),
            max(r.p99_ms for r in results), max(r.max_ms for r in results), sum(r.failures for r in results))
        if args.rounds > 1:
            print_load(combined[key], f"{label} ({args.rounds} rounds)")
        record_cpu(cpu, label, spent[key], extra_pids, requests)
    return combined


def print_load(result: LoadResult, label: str) -> None:
    print(f"  {label:<34} {result.rps:>9.1f} req/s  p50 {result.p50_ms:>7.2f} ms  p99 {result.p99_ms:>7.2f} ms  "
          f"max {result.max_ms:>8.2f} ms  failures {result.failures}", flush=True)


def run_load(base, paths, duration_s, connections, label, client) -> LoadResult:
    result = (run_wrk if client == "wrk" else run_python)(base, paths, duration_s, connections, label)
    print_load(result, label)
    return result


# --------------------------------------------------------------------------- scenario


def per_user_paths(known: list[str], n: int = 10000, seed: int = 3) -> list[str]:
    """90 % known hashed ids, 10 % unknown ones, shuffled."""
    rng = random.Random(seed)
    ids = [rng.choice(known) if rng.random() < 0.9 else f"{rng.getrandbits(256):064x}" for _ in range(n)]
    return [f"/v1/api/recommendations/{i}/" for i in ids]


def taarlite_paths(store_dir: Path, top: int = 100) -> list[str]:
    from urllib.parse import quote

    from taar.publishing import read_artifact
    from taar.storage import open_model_store

    ranking, _ = read_artifact(open_model_store(str(store_dir)), "ranking")
    popular = sorted(ranking, key=lambda g: (-ranking[g], g))[:top]
    return [f"/taarlite/api/v1/addon_recommendations/{quote(g, safe='@')}/" for g in popular]


def server_env(store_dir: Path, profile_uri: str, args) -> dict:
    return {
        "WORKERS": str(args.workers), "THREADS": str(args.threads),
        "TAAR_MODEL_STORE": str(store_dir.resolve()), "TAAR_PROFILE_STORE": profile_uri,
        "TAAR_PROFILE_TIMEOUT_MS": str(PROFILE_TIMEOUT_MS), "TAAR_MODEL_REFRESH_SECONDS": "1",
        "TAAR_METRICS_BACKEND": "statsd", "STATSD_HOST": "127.0.0.1", "STATSD_PORT": str(args.statsd_port),
        "TAAR_VERSION_FILE": str((WORK / "version.json").resolve()),
    }


def hot_swap(server: Server, store_dir: Path, paths, args, client) -> dict:
    """Per-user load while the models are republished three times; then check every worker swapped."""
    today = dt.datetime.now(dt.UTC).date()
    dates = [today + dt.timedelta(days=i) for i in (1, 2, 3)]
    errors = []

    def republish():
        try:
            for i, date in enumerate(dates, start=1):
                time.sleep(args.duration / 4)
                republish_some(store_dir, date, perturb=i)
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    publisher = threading.Thread(target=republish)
    publisher.start()
    result = run_load(server.base, paths, args.duration, args.connections, "per-user during 3 republishes", client)
    publisher.join()
    time.sleep(2.5)  # one more refresh interval for a worker that was busy
    versions = {}
    for _ in range(20):
        body = json.loads(http_get(server.base + "/__models__")[1])
        versions[body["process"]["pid"]] = body["models"]["locale"]["version"]
    return {"load": asdict(result), "publish_errors": errors, "final_version": f"{dates[-1]:%Y%m%d}",
            "locale_version_per_worker": versions}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per endpoint")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the compared loads (lbheartbeat, per-user, TAARlite) take turns in this many rounds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--profile-requests", type=int, default=2000,
                        help="in-process cProfile of this many per-user requests (0 skips)")
    parser.add_argument("--models", type=Path, default=None, help="serve this model store instead of synthetic")
    parser.add_argument("--no-bigtable", action="store_true", help="skip the Bigtable emulator run")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--statsd-port", type=int, default=8125,
                        help="statsd UDP port (nothing needs to listen; run 2's Bigtable server sends to a "
                             "listener of the benchmark's own)")
    parser.add_argument("--control-wait-ms", type=float, default=1.0,
                        help="run 2 also loads the per-user route on SQLite with and without this idle wait "
                             "in each profile read, to split a Bigtable request's CPU (0 skips)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration / args.rounds < 1:
        parser.error("--rounds must be >= 1 and leave at least 1 s of --duration per round")
    client = "wrk" if args.client == "wrk" or (args.client == "auto" and shutil.which("wrk")) else "python"

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    figures: dict = {"targets": TARGETS, "client": client, "workers": args.workers, "threads": args.threads,
                     "connections": args.connections, "duration_s": args.duration, "profiles": args.profiles}

    # --- data
    from taar.publishing import read_artifact
    from taar.storage import open_model_store

    started = time.perf_counter()
    if args.models is not None:
        store_dir = WORK / "models"
        shutil.copytree(args.models, store_dir)
    else:
        store_dir = WORK / "models"
        publish_models(store_dir, dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1))
    whitelist, _ = read_artifact(open_model_store(str(store_dir)), "whitelist")
    locale_model, _ = read_artifact(open_model_store(str(store_dir)), "locale")
    rows = synthetic_profiles(args.profiles, whitelist, sorted(locale_model)[:20])
    sqlite_uri = f"sqlite:///{(WORK / 'profiles.sqlite3').resolve()}"
    figures["sqlite_load_s"] = round(load_profiles(sqlite_uri, rows), 1)
    figures["data_prep_s"] = round(time.perf_counter() - started, 1)
    known = [key for key, _ in rows]
    user_paths, lite_paths = per_user_paths(known), taarlite_paths(store_dir)
    print(f"data ready in {figures['data_prep_s']} s ({args.profiles} profiles); load client: {client}", flush=True)

    # --- run 1: SQLite
    print(f"run 1: gunicorn WORKERS={args.workers} THREADS={args.threads}, SQLite profiles", flush=True)
    with Server(server_env(store_dir, sqlite_uri, args), WORK / "gunicorn-sqlite.log") as server:
        figures["cold_start_s"] = round(server.cold_start_s, 2)
        print(f"  cold start (process start -> heartbeat 200): {figures['cold_start_s']} s", flush=True)
        run_load(server.base, ["/__lbheartbeat__"], 2, args.connections, "warm-up", client)
        cpu = figures["cpu_ms_per_request_by_load"] = {}
        run1 = interleaved_loads([
            ("lbheartbeat", "/__lbheartbeat__", server, ["/__lbheartbeat__"], ()),
            ("per_user", "per-user (SQLite)", server, user_paths, ()),
            ("taarlite", "TAARlite (popular)", server, lite_paths, ()),
        ], args, client, cpu)
        figures["cpu_ms_per_request"] = cpu["per-user (SQLite)"]["workers_ms"]
        # light load (production's usual per-process load): the CPU a request costs when the
        # worker idles between requests, beside its cost under load above
        run1["single"] = measured_load(server, user_paths, min(args.duration, 5.0), 1,
                                       "per-user, one request at a time", client, cpu)
        figures["memory"] = server.memory()
        figures["run1_sqlite"] = {k: asdict(v) for k, v in run1.items()}
        figures["hot_swap"] = hot_swap(server, store_dir, user_paths, args, client)

    # --- run 2: Bigtable emulator
    if not args.no_bigtable:
        figures["run2_bigtable"] = bigtable_run(store_dir, rows, user_paths, sqlite_uri, args, client)

    if args.profile_requests:
        figures["profile_summary"] = profile_in_process(store_dir, sqlite_uri, user_paths, args.profile_requests)

    figures["verdict"] = verdict(figures)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({"verdict": figures["verdict"], "memory": figures["memory"],
                      "cpu_ms_per_request": figures["cpu_ms_per_request"],
                      "cpu_ms_per_request_by_load": {
                          "sqlite": figures["cpu_ms_per_request_by_load"],
                          "bigtable": (figures.get("run2_bigtable") or {}).get("cpu_ms_per_request_by_load")},
                      "bigtable_where_the_time_goes": (figures.get("run2_bigtable") or {}).get("where_the_time_goes")},
                     indent=2))
    print(f"written {OUT / 'serve.json'}")
    return figures


def bigtable_run(store_dir: Path, rows, user_paths, sqlite_uri: str, args, client) -> dict:
    from tests.fixtures.emulators import BigtableEmulator, cbtemulator_binary

    binary = cbtemulator_binary()
    if binary is None:
        print("run 2 skipped: cbtemulator not installed", flush=True)
        return {"skipped": "cbtemulator not installed"}
    with BigtableEmulator(binary) as emulator:
        os.environ["BIGTABLE_EMULATOR_HOST"] = emulator.host
        uri = "bigtable://bench-project/bench-instance/taar_profile"
        seconds = load_profiles(uri, rows)
        print(f"run 2: Bigtable emulator ({len(rows)} profiles loaded in {seconds:.1f} s)", flush=True)
        out: dict = {"load_s": round(seconds, 1)}
        with contextlib.ExitStack() as servers:
            statsd = servers.enter_context(StatsdTally())  # this server's metrics only
            server = servers.enter_context(Server({**server_env(store_dir, uri, args), "STATSD_PORT": str(statsd.port)},
                                                  WORK / "gunicorn-bigtable.log"))
            run_load(server.base, user_paths, 2, args.connections, "warm-up", client)
            loads = [
                ("lbheartbeat", "/__lbheartbeat__", server, ["/__lbheartbeat__"], ()),
                ("per_user", "per-user (Bigtable)", server, user_paths, (emulator.proc.pid,)),
            ]
            if args.control_wait_ms > 0:
                loads += control_loads(servers, store_dir, sqlite_uri, user_paths, args, client)
            cpu = out["cpu_ms_per_request_by_load"] = {}
            before = statsd.counts()
            results = interleaved_loads(loads, args, client, cpu)
            out["reads_per_call"] = reads_per_call(before, statsd.counts())
            out.update({key: asdict(result) for key, result in results.items()})
            if args.control_wait_ms > 0:
                out["where_the_time_goes"] = bigtable_breakdown(cpu, results, emulator.proc.pid, args)
            # S6: the store stops answering. With at most THREADS requests in flight no request
            # queues behind another even if the kernel hands every connection to one worker;
            # with WORKERS x THREADS connections an unlucky split makes some wait one more deadline.
            os.kill(emulator.proc.pid, signal.SIGSTOP)
            try:
                out["stalled"] = asdict(run_load(server.base, user_paths, min(args.duration, 5.0), args.threads,
                                                 "per-user, Bigtable stalled", client))
                out["stalled_all_threads"] = asdict(run_load(
                    server.base, user_paths, min(args.duration, 5.0), args.workers * args.threads,
                    f"per-user, stalled, {args.workers * args.threads} conns", client))
            finally:
                os.kill(emulator.proc.pid, signal.SIGCONT)
        os.environ.pop("BIGTABLE_EMULATOR_HOST", None)
    return out


class StatsdTally:
    """A statsd listener on a free loopback UDP port: counts each metric's lines (a counter: its values)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)  # the listener checks for the end this often
        self._counts = collections.Counter()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        while not self._done.is_set():
            try:
                packet = self.sock.recv(65535)
            except TimeoutError:
                continue
            with self._lock:
                for line in packet.decode().splitlines():
                    name, _, rest = line.partition(":")
                    value, _, kind = rest.partition("|")
                    self._counts[name] += float(value) if kind.startswith("c") else 1

    def counts(self, settle_s: float = 0.6) -> collections.Counter:
        """The counts so far, after ``settle_s`` (the service sends a request's metrics within 0.5 s)."""
        time.sleep(settle_s)
        with self._lock:
            return collections.Counter(self._counts)

    def __enter__(self) -> StatsdTally:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


def reads_per_call(before: collections.Counter, after: collections.Counter) -> float | None:
    """Profile reads (``profile_fetch`` timings) per Bigtable ``ReadRows`` call (``profile_read_call``) between two counts."""
    calls = after["taar.profile_read_call"] - before["taar.profile_read_call"]
    reads = after["taar.profile_fetch"] - before["taar.profile_fetch"]
    figure = round(reads / calls, 2) if calls else None
    print(f"  per-user (Bigtable): {reads:.0f} profile reads in {calls:.0f} ReadRows calls, {figure} a call "
          "(the service's statsd counters)", flush=True)
    return figure


def control_loads(servers: contextlib.ExitStack, store_dir: Path, sqlite_uri: str, user_paths, args, client):
    """The per-user route on SQLite profiles, as is and with an idle wait in every read, beside run 2's loads.

    Two more gunicorns (``bench.serve_conf``) entered on ``servers``: the second sleeps
    ``--control-wait-ms`` before each profile read. Against the Bigtable load of the same
    rounds they split a Bigtable request's CPU into the request without a remote read, the
    cost of blocking on one on this machine, and the gRPC client (see :func:`bigtable_breakdown`).
    """
    loads = []
    waiting = f"per-user (SQLite + {args.control_wait_ms:g} ms wait)"
    for key, wait_ms, label in (("control_sqlite", 0.0, "per-user (SQLite, same rounds)"),
                                ("control_wait", args.control_wait_ms, waiting)):
        env = {**server_env(store_dir, sqlite_uri, args), "BENCH_PROFILE_WAIT_MS": str(wait_ms)}
        server = servers.enter_context(Server(env, WORK / f"gunicorn-{key}.log", conf="python:bench.serve_conf"))
        run_load(server.base, user_paths, 1, args.connections, f"warm-up, {label}", client)
        loads.append((key, label, server, user_paths, ()))
    return loads


def bigtable_breakdown(cpu: dict, results: dict, emulator_pid: int, args) -> dict:
    """Where a per-user Bigtable request's CPU goes, from the loads of one set of rounds (printed).

    * ``without_remote_read_ms``: the same route on SQLite (its read costs ~25 us);
    * ``blocking_ms``: what an idle wait of ``--control-wait-ms`` in the read adds: the
      thread parks, the GIL changes hands, the request resumes on colder caches;
    * ``grpc_client_ms``: the rest of the Bigtable request's worker CPU;
    * ``emulator_ms``: the emulator's CPU per request, on the same two cores;
    * ``s1_with_wait_only``: per-user throughput over lbheartbeat for the SQLite + wait
      server: what S1 with Bigtable would be with a client and a store that cost nothing
      but the wait (an upper bound on this machine).
    """
    sqlite = cpu[results["control_sqlite"].label]["workers_ms"]
    waiting = cpu[results["control_wait"].label]["workers_ms"]
    bigtable = cpu[results["per_user"].label]
    out = {
        "control_wait_ms": args.control_wait_ms,
        "without_remote_read_ms": sqlite,
        "blocking_ms": round(waiting - sqlite, 3),
        "grpc_client_ms": round(bigtable["workers_ms"] - waiting, 3),
        "emulator_ms": bigtable[f"pid_{emulator_pid}_ms"],
        "s1_with_wait_only": round(results["control_wait"].rps / (results["lbheartbeat"].rps or 1.0), 3),
    }
    print(f"  where a per-user Bigtable request's CPU goes (ms): {out}", flush=True)
    return out


def profile_in_process(store_dir: Path, profile_uri: str, paths: list[str], n: int, top: int = 18) -> str:
    """cProfile of ``n`` per-user requests through the Flask app in this process: where the time goes."""
    import cProfile
    import io
    import logging
    import pstats

    from taar_web.app import create_app
    from taar_web.settings import Settings

    settings = Settings(model_store=str(store_dir), profile_store=profile_uri, metrics_backend="none",
                        version_file=str(WORK / "version.json"))
    app = create_app(settings)
    logging.getLogger("request.summary").setLevel(logging.WARNING)  # no stdout noise in the profile
    client = app.test_client()
    for path in paths[:50]:
        client.get(path)  # warm-up
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for path in paths[:n]:
        client.get(path)
    profiler.disable()
    elapsed = time.perf_counter() - started
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(top)
    logging.getLogger("request.summary").setLevel(logging.INFO)
    text = f"{n} per-user requests in-process (SQLite): {elapsed * 1000 / n:.3f} ms each under cProfile\n"
    text += out.getvalue()
    print(text, flush=True)
    return text


def verdict(f: dict) -> dict:
    run1 = f["run1_sqlite"]
    lb = run1["lbheartbeat"]["rps"] or 1.0
    out = {
        "S1": {"per_user_over_lbheartbeat": round(run1["per_user"]["rps"] / lb, 3), "threshold": 0.5},
        "S2": {"per_user_p99_ms": run1["per_user"]["p99_ms"], "threshold_ms": 40.0},
        "S2b": {"single_request_median_ms": run1["single"]["p50_ms"], "threshold_ms": 3.0,
                "met": run1["single"]["p50_ms"] <= 3.0},
        "S3": {"taarlite_over_lbheartbeat": round(run1["taarlite"]["rps"] / lb, 3), "threshold": 0.8},
        "S4": {"failed_requests": f["hot_swap"]["load"]["failures"],
               "all_workers_swapped": set(f["hot_swap"]["locale_version_per_worker"].values())
               == {f["hot_swap"]["final_version"]}},
        "S5": {"cold_start_s": f["cold_start_s"], "threshold_s": 5.0},
    }
    out["S1"]["met"] = out["S1"]["per_user_over_lbheartbeat"] >= 0.5
    out["S2"]["met"] = out["S2"]["per_user_p99_ms"] <= 40.0
    out["S3"]["met"] = out["S3"]["taarlite_over_lbheartbeat"] >= 0.8
    out["S4"]["met"] = out["S4"]["failed_requests"] == 0 and out["S4"]["all_workers_swapped"]
    out["S5"]["met"] = f["cold_start_s"] <= 5.0
    run2 = f.get("run2_bigtable") or {}
    if "per_user" in run2:
        out["S1_bigtable"] = {"per_user_over_lbheartbeat": round(
            run2["per_user"]["rps"] / (run2["lbheartbeat"]["rps"] or 1.0), 3), "threshold": 0.35}
        out["S1_bigtable"]["met"] = out["S1_bigtable"]["per_user_over_lbheartbeat"] >= 0.35
        out["S2_bigtable"] = {"per_user_p99_ms": run2["per_user"]["p99_ms"], "threshold_ms": 40.0,
                              "met": run2["per_user"]["p99_ms"] <= 40.0}
        stalled = run2["stalled"]
        out["S6"] = {"max_ms": stalled["max_ms"], "failures": stalled["failures"],
                     "threshold_ms": PROFILE_TIMEOUT_MS + 50, "connections": stalled["connections"],
                     "met": stalled["failures"] == 0 and stalled["max_ms"] <= PROFILE_TIMEOUT_MS + 50}
    return out


if __name__ == "__main__":
    main()
