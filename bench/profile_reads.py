"""Profile read benchmark (SPEC §3.7): the cost of one per-user profile read from Bigtable.

Run: ``python -m bench.profile_reads [--reads 3000] [--rows 1000] [--threads 8]``.
Prints the figures and writes them to ``var/bench/profile_reads.json``.

Starts ``cbtemulator`` on a free loopback port, loads ``--rows`` profiles of about
300 bytes, then reads ``--reads`` of them one after another, in this process, two ways:

* ``store.get``: the store's own ReadRows reader (what the service runs);
* ``data client read_row``: the official high-level client with the same row
  filter and deadline, the reference the reader replaced (kept only here).

Then the concurrent mode: ``--threads`` threads (a gunicorn worker's request
threads) read ``--reads`` profiles between them, 1 in 10 a missing key, each
thread holding the GIL for ``--work-us`` microseconds of Python work after each
read (a request's recommendation: about 500 in the service; default 0), two ways:

* ``store.get, N threads``: concurrent reads coalesced into shared ReadRows calls;
* ``one call per read, N threads``: ``RowReader.attempt``, one ReadRows call per
  read on the same channel, as every read was made before coalescing.

For each: client CPU (this process, ``time.process_time``), wall time and emulator
CPU (``/proc/<pid>/stat``), all per read, and reads per ReadRows call. One run; the
machine is shared, so compare the paths of one run, not runs with each other.

``--rule-rounds N`` then compares the store's rule for a second call (only beside a
call out for ``SLOW_CALL_S``) with "a second call at any time" (``SLOW_CALL_S`` = 0, the
rule before it), N alternating rounds of the concurrent mode each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

from bench.serve import process_cpu_seconds

OUT = Path("var/bench")
TS_MS = 1_700_000_000_000
DEADLINE_S = 0.15  # the service's default TAAR_PROFILE_TIMEOUT_MS
WARMUP_READS = 100


def measure(read, keys: list[bytes], reads: int, emulator_pid: int) -> dict:
    """Per-read figures of ``read(key)`` over ``reads`` reads cycling through ``keys``."""
    for key in keys[:WARMUP_READS]:
        assert read(key) is not None
    emulator0, cpu0, wall0 = process_cpu_seconds(emulator_pid), time.process_time(), time.perf_counter()
    for i in range(reads):
        if read(keys[i % len(keys)]) is None:
            raise RuntimeError("a loaded profile read back as missing")
    per_read = 1e6 / reads
    return {
        "client_cpu_us": round((time.process_time() - cpu0) * per_read, 1),
        "wall_us": round((time.perf_counter() - wall0) * per_read, 1),
        "emulator_cpu_us": round((process_cpu_seconds(emulator_pid) - emulator0) * per_read, 1),
    }


def spin(seconds: float) -> None:
    """Python work holding the GIL (bytecode, not a sleep) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure_threads(read, keys: list[bytes], reads: int, threads: int, emulator_pid: int, work_s: float) -> dict:
    """Per-read figures of ``read(key)`` called by ``threads`` threads at once, ``reads`` calls in all,
    each call followed by ``work_s`` of :func:`spin` (counted in the figures).

    Every 10th key read is missing (a 10 % unknown-client share, as bench.serve); the
    others must be found.
    """
    missing = [b"f" * 64 + f"{i:04d}".encode() for i in range(len(keys))]
    errors, latencies = [], []

    def run(offset: int, count: int) -> None:
        try:
            for i in range(offset, offset + count):
                started = time.perf_counter()
                if i % 10 == 0:
                    if read(missing[i % len(missing)]) is not None:
                        raise RuntimeError("a missing profile read back as found")
                elif read(keys[i % len(keys)]) is None:
                    raise RuntimeError("a loaded profile read back as missing")
                latencies.append(time.perf_counter() - started)
                if work_s:
                    spin(work_s)
        except Exception as exc:  # reported after the join
            errors.append(exc)

    run(0, WARMUP_READS)
    latencies.clear()
    share = reads // threads
    workers = [threading.Thread(target=run, args=(n * share, share)) for n in range(threads)]
    emulator0, cpu0, wall0 = process_cpu_seconds(emulator_pid), time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done = share * threads
    per_read = 1e6 / done
    figures = {
        "client_cpu_us": round((time.process_time() - cpu0) * per_read, 1),
        "wall_us": round((time.perf_counter() - wall0) * per_read, 1),
        "emulator_cpu_us": round((process_cpu_seconds(emulator_pid) - emulator0) * per_read, 1),
        "reads": done,
        "p99_read_ms": round(sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000, 2) if latencies else None,
    }
    if errors:
        raise errors[0]
    return figures


def measure_coalesced(store, keys: list[bytes], args, emulator_pid: int) -> dict:
    """:func:`measure_threads` of ``store.get`` with the reads per ReadRows call it made."""
    batches = store._reader.batches
    reads0, calls0 = batches.reads, batches.calls
    figures = measure_threads(lambda key: store.get(key, DEADLINE_S), keys, args.reads, args.threads, emulator_pid,
                              args.work_us / 1e6)
    figures["reads_per_call"] = round((batches.reads - reads0) / (batches.calls - calls0), 2)
    return figures


def compare_rules(store, keys: list[bytes], args, emulator_pid: int) -> dict[str, list[dict]]:
    """The concurrent mode under each second-call rule, alternating, ``args.rule_rounds`` rounds each."""
    from taar.storage import bigtable_profiles

    rules = {f"second call after {bigtable_profiles.SLOW_CALL_S * 1000:g} ms": bigtable_profiles.SLOW_CALL_S,
             "second call at any time": 0.0}
    rounds: dict[str, list[dict]] = {name: [] for name in rules}
    try:
        for _ in range(args.rule_rounds):
            for name, slow_call_s in rules.items():
                bigtable_profiles.SLOW_CALL_S = slow_call_s
                rounds[name].append(measure_coalesced(store, keys, args, emulator_pid))
    finally:
        bigtable_profiles.SLOW_CALL_S = next(iter(rules.values()))
    return rounds


def official_reader(store):
    """``read(key)`` through the google-cloud-bigtable data client's ``read_row``, same filter."""
    from google.cloud.bigtable.data import BigtableDataClient, row_filters

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator")
        table = BigtableDataClient(project=store.project).get_table(store.instance, store.table)
    row_filter = row_filters.RowFilterChain([
        row_filters.FamilyNameRegexFilter("profile"),
        row_filters.ColumnQualifierRegexFilter(b"payload"),
        row_filters.CellsColumnLimitFilter(1),
    ])

    def read(key: bytes):
        row = table.read_row(key, row_filter=row_filter, operation_timeout=DEADLINE_S, attempt_timeout=DEADLINE_S)
        return None if row is None else row.cells[0].value

    return read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000, help="timed reads per path (default 3000)")
    parser.add_argument("--rows", type=int, default=1000, help="profiles loaded and read in turn (default 1000)")
    parser.add_argument("--threads", type=int, default=8, help="threads of the concurrent mode (default 8)")
    parser.add_argument("--work-us", type=float, default=0.0,
                        help="Python work after each read in the concurrent mode, microseconds (default 0)")
    parser.add_argument("--rule-rounds", type=int, default=0,
                        help="alternating rounds comparing the second-call rules (default 0: none)")
    args = parser.parse_args(argv)
    if args.reads < 1 or args.rows < 1 or args.threads < 1 or args.work_us < 0:
        parser.error("--reads, --rows and --threads must be >= 1, --work-us >= 0")

    from taar.storage import BigtableProfileStore
    from tests.fixtures.emulators import BigtableEmulator, cbtemulator_binary

    binary = cbtemulator_binary()
    if binary is None:
        print("cbtemulator not installed (apt-get install google-cloud-cli-bigtable-emulator)", file=sys.stderr)
        return 1
    with BigtableEmulator(binary) as emulator:
        os.environ["BIGTABLE_EMULATOR_HOST"] = emulator.host
        store = BigtableProfileStore("bench", "bench", "profiles")
        store.ensure_table()
        keys = [f"{i:064x}".encode() for i in range(args.rows)]
        # ~300 bytes after zlib: incompressible-enough filler, as real payloads carry add-on ids
        payloads = [zlib.compress(json.dumps({"i": i, "pad": os.urandom(250).hex()}).encode()) for i in range(args.rows)]
        store.put_many(zip(keys, payloads, strict=True), TS_MS)
        assert store.warm(10.0)
        results = {
            "store.get": measure(lambda key: store.get(key, DEADLINE_S), keys, args.reads, emulator.proc.pid),
            "data client read_row": measure(official_reader(store), keys, args.reads, emulator.proc.pid),
        }
        coalesced = f"store.get, {args.threads} threads"
        results[coalesced] = measure_coalesced(store, keys, args, emulator.proc.pid)
        reader = store._reader
        single = f"one call per read, {args.threads} threads"
        results[single] = measure_threads(
            lambda key: reader.attempt(key, DEADLINE_S), keys, args.reads, args.threads, emulator.proc.pid,
            args.work_us / 1e6,
        )
        results[single]["reads_per_call"] = 1.0
        rules = compare_rules(store, keys, args, emulator.proc.pid) if args.rule_rounds else {}
        store.close()

    payload_bytes = sum(map(len, payloads)) / len(payloads)
    print(f"{args.reads} reads of {args.rows} profiles (~{payload_bytes:.0f} bytes each), cbtemulator, one process; "
          f"concurrent mode: {args.work_us:.0f} us of Python work after each read")
    print(f"{'path':32s} {'client CPU us/read':>19s} {'wall us/read':>13s} {'emulator CPU us/read':>21s} "
          f"{'reads/call':>11s}")
    for name, figures in results.items():
        print(f"{name:32s} {figures['client_cpu_us']:19.1f} {figures['wall_us']:13.1f} "
              f"{figures['emulator_cpu_us']:21.1f} {figures.get('reads_per_call', 1.0):11.2f}")
    reference, lean = results["data client read_row"], results["store.get"]
    print(f"client CPU ratio (data client / store.get): {reference['client_cpu_us'] / lean['client_cpu_us']:.2f}")
    print(f"client CPU ratio, {args.threads} threads (one call per read / coalesced): "
          f"{results[single]['client_cpu_us'] / results[coalesced]['client_cpu_us']:.2f}")
    for name, rounds in rules.items():
        means = {key: round(sum(r[key] for r in rounds) / len(rounds), 1) for key in rounds[0]}
        print(f"{name:32s} {means['client_cpu_us']:19.1f} {means['wall_us']:13.1f} "
              f"{means['emulator_cpu_us']:21.1f} {means['reads_per_call']:11.2f}   (mean of {len(rounds)} rounds; "
              f"read p99 {means['p99_read_ms']} ms)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "profile_reads.json").write_text(json.dumps(
        {"reads": args.reads, "rows": args.rows, "threads": args.threads, "work_us": args.work_us,
         "payload_bytes": round(payload_bytes), "results": results, "rules": rules}, indent=2
    ) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
