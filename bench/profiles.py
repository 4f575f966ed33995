"""Profile load benchmark (SPEC §8.5): rows/s into the Bigtable emulator, and what that means on Dataproc.

Run: ``python -m bench.profiles [--profiles 100000] [--batch-size 500] [--parallelism 8]``.
Prints the figures and writes them to ``var/bench/profiles.json``.

1. Builds ``--profiles`` synthetic ``clients_last_seen`` rows (seeded numpy: locale,
   city, usage counters, 1-20 add-ons from a 2000-GUID catalogue) and turns them
   into staged rows with the job's own extract transform
   (:func:`taar_etl.taar_profile_bigtable.profile_rows`): hashed key + zlib payload.
2. Starts ``cbtemulator`` on a free loopback port and loads the rows with the
   job's writer (:class:`~taar_etl.taar_profile_bigtable.BatchWriter`: batches of
   ``--batch-size`` rows, ``--parallelism`` batches in flight), once with the
   default parallelism and once with a single batch in flight; then into SQLite.
3. Dataproc estimate: on the Spark engine every partition runs one such writer,
   so the cluster's rate is about ``partitions in flight × rows/s per writer``,
   capped by what the Bigtable cluster accepts (Google's guidance for SSD: up to
   14,000 1-KB rows/s of writes per node). The emulator is a single in-memory
   process on the same 2 cores as the writer, so its per-writer figure is a
   floor for a real Bigtable, not a prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path("var/bench")
DATE_TS_MS = 1_795_219_200_000  # end of 2026-11-20, the cell timestamp of every row
BIGTABLE_SSD_WRITES_PER_NODE = 14_000
#: Dataproc profile cluster of dags/taar_dags/common.py CLUSTER_SIZES: 4 workers x n2-standard-8 -> 32 executor cores.
DATAPROC_PARTITIONS_IN_FLIGHT = 32
POPULATION = 100_000_000  # order of magnitude of the release population with add-ons

LOCALES = ("en-US", "de", "fr", "es-ES", "pl", "ru", "pt-BR", "it", "ja", "zh-CN")
CITIES = ("Berlin", "Paris", "New York", "Madrid", "Warsaw", "Moscow", "São Paulo", "Rome", "Tokyo", "Beijing")


def synthetic_rows(n: int, seed: int = 42):
    """``n`` source rows shaped like ``clients_last_seen`` (SPEC §7.2)."""
    rng = np.random.default_rng(seed)
    catalogue = [f"addon-{i}@bench.example.org" for i in range(2000)]
    popularity = 1.0 / np.arange(1, len(catalogue) + 1) ** 1.1
    popularity /= popularity.sum()
    counts = rng.integers(1, 21, n)
    for i in range(n):
        k = int(counts[i])
        picks = rng.choice(len(catalogue), k, replace=False, p=popularity)
        yield {
            "client_id": f"bench-client-{seed}-{i}", "app_name": "Firefox",
            "city": CITIES[i % len(CITIES)], "locale": LOCALES[i % len(LOCALES)], "os": "Windows_NT",
            "subsession_hours_sum": float(rng.lognormal(1.0, 0.8)),
            "places_bookmarks_count_mean": float(rng.lognormal(3.0, 1.0)),
            "scalar_parent_browser_engagement_tab_open_event_count_sum": int(rng.integers(0, 500)),
            "scalar_parent_browser_engagement_total_uri_count_sum": int(rng.integers(0, 5000)),
            "scalar_parent_browser_engagement_unique_domains_count_mean": float(rng.lognormal(2.5, 0.7)),
            "active_addons": [
                {"addon_id": catalogue[j], "blocklisted": False, "name": f"Add-on {j}", "user_disabled": False,
                 "app_disabled": False, "version": "1.2.3", "scope": 1, "type": "extension",
                 "foreign_install": False, "has_binary_components": False, "install_day": 19000 + int(j),
                 "update_day": 20000, "signed_state": 2, "is_system": False, "is_web_extension": True,
                 "multiprocess_compatible": True}
                for j in picks
            ],
        }


def timed_load(writer, rows) -> dict:
    started = time.perf_counter()
    written = writer.put(rows)
    seconds = time.perf_counter() - started
    return {"rows": written, "seconds": round(seconds, 2), "rows_per_s": round(written / seconds)}


def main(argv: list[str] | None = None) -> dict:
    from taar.storage import open_profile_store
    from taar_etl.taar_profile_bigtable import BatchWriter, profile_rows
    from tests.fixtures.emulators import BigtableEmulator, cbtemulator_binary

    p = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__.splitlines()[0])
    p.add_argument("--profiles", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--parallelism", type=int, default=8)
    args = p.parse_args(argv)
    figures: dict = {"profiles": args.profiles, "batch_size": args.batch_size, "parallelism": args.parallelism}

    source = list(synthetic_rows(args.profiles))
    started = time.perf_counter()
    staged = list(profile_rows(source, seed=42, sample_rate=1.0, opted_out=set()))
    del source
    figures["extract_transform_rows_per_s"] = round(len(staged) / (time.perf_counter() - started))
    figures["mean_payload_bytes"] = round(sum(len(v) for _, v in staged) / len(staged))
    print(f"{len(staged)} profiles staged ({figures['extract_transform_rows_per_s']} rows/s through the extract "
          f"transform; mean payload {figures['mean_payload_bytes']} bytes compressed)", flush=True)

    binary = cbtemulator_binary()
    if binary is None:
        print("cbtemulator not installed (apt-get install google-cloud-cli-bigtable-emulator)", file=sys.stderr)
        return figures
    with BigtableEmulator(binary) as emulator:
        os.environ["BIGTABLE_EMULATOR_HOST"] = emulator.host
        for label, parallelism in (("bigtable", args.parallelism), ("bigtable_one_in_flight", 1)):
            uri = f"bigtable://bench/bench/{label}"
            open_profile_store(uri).ensure_table()
            figures[label] = timed_load(BatchWriter(uri, DATE_TS_MS, args.batch_size, parallelism), staged)
            print(f"{label}: {figures[label]['rows']} rows in {figures[label]['seconds']} s = "
                  f"{figures[label]['rows_per_s']} rows/s (batch {args.batch_size}, {parallelism} in flight)",
                  flush=True)
    sqlite_path = OUT / "profiles_bench.sqlite3"
    sqlite_path.unlink(missing_ok=True)
    uri = f"sqlite:///{sqlite_path.resolve()}"
    open_profile_store(uri).ensure_table()
    figures["sqlite"] = timed_load(BatchWriter(uri, DATE_TS_MS, args.batch_size, 1), staged)
    print(f"sqlite: {figures['sqlite']['rows_per_s']} rows/s", flush=True)

    per_writer = figures["bigtable"]["rows_per_s"]
    cluster = DATAPROC_PARTITIONS_IN_FLIGHT * per_writer
    figures["dataproc_estimate"] = {
        "partitions_in_flight": DATAPROC_PARTITIONS_IN_FLIGHT, "rows_per_s_per_partition": per_writer,
        "rows_per_s": cluster, "bigtable_nodes_needed": -(-cluster // BIGTABLE_SSD_WRITES_PER_NODE),
        "minutes_for_population": round(POPULATION / cluster / 60, 1), "population": POPULATION,
    }
    e = figures["dataproc_estimate"]
    print(f"Dataproc: {e['partitions_in_flight']} partitions x {per_writer} rows/s = {cluster} rows/s "
          f"(needs >= {e['bigtable_nodes_needed']} SSD Bigtable nodes at {BIGTABLE_SSD_WRITES_PER_NODE} writes/s "
          f"each, else the node count is the limit); {POPULATION:,} profiles in about "
          f"{e['minutes_for_population']} min", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "profiles.json").write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
