"""Per-user route cost at issue 11's BASE commit vs the working tree, in one run (same machine, models, load).

Run: ``python -m bench.serve_baseline [--base 771a5ac] [--duration 10] [--rounds 2] [--no-bigtable]``.
Prints a table and the headline (per-user worker CPU ms per request, BASE / current = "x times
cheaper") and writes every figure to ``var/bench/serve_baseline.json``.

BASE is exported with ``git archive <ref> | tar -x`` and served by gunicorn from the same venv with
``PYTHONPATH`` and working directory on the export, so its ``taar``/``taar_web`` are imported, not the
working tree's; each service's ``/__models__`` is checked (only the working tree has ``item_item``).
Models: the working tree publishes ``bench.serve.publish_models``; BASE publishes the same
``synthetic_models`` numbers with its own ``taar.storage.publish``, without ``item_item`` and with
the same three ensemble weights (BASE refuses a fourth key), so BASE serves 3 ensemble members and
the working tree 4: the comparison is conservative. A BASE that already publishes with
``taar.publishing`` and serves ``item_item`` (e.g. ``--base ebc3cff``) serves the working tree's own
store, four members each. Both read the same 20 000 synthetic profiles
from one SQLite file and one Bigtable emulator table. Load as ``bench.serve`` (WORKERS=2 THREADS=8,
statsd to loopback, 16 wrk connections, ``--duration`` s each: /__lbheartbeat__, per-user,
TAARlite), one service at a time, interleaved BASE sqlite, current sqlite, BASE bigtable, current
bigtable, ``--rounds`` times so load drift shows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from statistics import mean

from bench import serve

ROOT = Path(__file__).resolve().parents[1]
WORK = serve.OUT.resolve() / "serve_baseline"  # absolute: services start from their tree
ROUTES = ("lbheartbeat", "per-user", "taarlite")
SHARED_KEYS = ("whitelist", "item_matrix", "addon_mapping", "donors", "lr_curves", "locale", "coinstall", "ranking")

# Run inside BASE's tree (cwd and PYTHONPATH): BASE's own publishing API (taar/storage/publish.py there).
BASE_PUBLISH = """
import datetime as dt, json, sys
from taar.storage import open_model_store
from taar.storage.publish import publish, publish_group
models = json.loads(open(sys.argv[1]).read())
store, date = open_model_store(sys.argv[2]), dt.date.fromisoformat(sys.argv[3])
publish_group(store, {k: models[k] for k in ("item_matrix", "addon_mapping")}, date, "bench/serve_baseline")
publish_group(store, {k: models[k] for k in ("donors", "lr_curves")}, date, "bench/serve_baseline")
for key in ("whitelist", "locale", "coinstall", "ranking", "ensemble_weights"):
    publish(store, key, models[key], date, "bench/serve_baseline")
"""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def export_tree(ref: str, dest: Path) -> str:
    """``git archive <ref> | tar -x -C dest``; returns the full commit id."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    archive = subprocess.Popen(["git", "archive", commit], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit


def publish_base_models(tree: Path, store_dir: Path, date: dt.date) -> None:
    """The numbers of :func:`bench.serve.publish_models`, published by BASE's code, 3 ensemble members."""
    from bench.recommenders import synthetic_models

    models = synthetic_models(serve.N_GUIDS, serve.DEGREE, seed=42, n_items=serve.N_ITEMS)  # as publish_models
    del models["item_item"], models["ensemble_weights"]["ensemble_weights"]["item_item"]
    path = WORK / "base_models.json"
    path.write_text(json.dumps(models))
    subprocess.run([sys.executable, "-c", BASE_PUBLISH, str(path.resolve()), str(store_dir.resolve()),
                    date.isoformat()], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True)


def reads_current_models(tree: Path) -> bool:
    """BASE publishes with ``taar.publishing`` and serves ``item_item``: it serves the working tree's store."""
    return (tree / "taar" / "publishing.py").exists() and (tree / "taar" / "recommenders" / "item_item.py").exists()


def check_same_models(current_dir: Path, base_dir: Path) -> None:
    """Both stores hold the same numbers (BASE: no item_item, the other three weights)."""
    from taar.publishing import read_artifact
    from taar.storage import open_model_store

    current, base = open_model_store(str(current_dir)), open_model_store(str(base_dir))
    for key in SHARED_KEYS:
        if read_artifact(current, key)[0] != read_artifact(base, key)[0]:
            raise RuntimeError(f"BASE's {key} differs from the working tree's")
    weights = dict(read_artifact(current, "ensemble_weights")[0]["ensemble_weights"])
    del weights["item_item"]
    if read_artifact(base, "ensemble_weights")[0]["ensemble_weights"] != weights:
        raise RuntimeError("BASE's ensemble weights differ from the working tree's first three")


def check_service(server: serve.Server, code: str, known_id: str, four_members: bool) -> None:
    """Fail unless the service runs ``code``'s tree (``four_members``: it serves item_item) and
    recommends for a known client only."""
    models = json.loads(serve.http_get(server.base + "/__models__")[1])["models"]
    if ("item_item" in models) != four_members:
        raise RuntimeError(f"the {code} service reports models {sorted(models)}: wrong tree imported")
    if four_members and models["item_item"]["status"] != "loaded":
        raise RuntimeError(f"current service: item_item not loaded: {models['item_item']}")
    # results for a known id and none for an unknown one: the service reads the shared profile rows
    for client_id, found in ((known_id, True), ("0123456789abcdef" * 4, False)):  # not a test id
        status, body = serve.http_get(f"{server.base}/v1/api/recommendations/{client_id}/")
        if status != 200 or bool(json.loads(body).get("results")) != found:
            raise RuntimeError(f"{code}: per-user route for {'a known' if found else 'an unknown'} id answered "
                               f"{status} {body[:200]!r}")


def run_block(code, tree, store_dir, profile_uri, store, paths, args, client, emulator_pid, known_id,
              four_members):
    """One service up; warm-up, then a measured load per route. Returns one record per route."""
    env = {**serve.server_env(store_dir, profile_uri, args), "PYTHONPATH": str(tree)}
    print(f"{code} ({store} profiles)", flush=True)
    # gunicorn puts its working directory first on sys.path (before PYTHONPATH), so that must be the tree too
    with contextlib.chdir(tree), serve.Server(env, WORK / f"gunicorn-{code}-{store}.log") as server:
        check_service(server, code, known_id, four_members)
        serve.run_load(server.base, paths["per-user"], 2, args.connections, "warm-up", client)
        records, cpu = [], {}
        for route in ROUTES:
            label = f"{code}/{store} {route}"
            extra = [emulator_pid] if emulator_pid else []
            result = serve.measured_load(server, paths[route], args.duration, args.connections, label, client, cpu, extra)
            records.append({"code": code, "store": store, "route": route, **asdict(result),
                            "cpu_ms": cpu[label]["workers_ms"],
                            "emulator_ms": cpu[label].get(f"pid_{emulator_pid}_ms")})
    return records


def summarise(loads: list[dict], rounds: int) -> tuple[dict, dict]:
    """Per (code, store, route): the rounds' figures and their means; the headline ratios."""
    table: dict = {}
    for r in loads:
        cell = table.setdefault(r["code"], {}).setdefault(r["store"], {}).setdefault(r["route"], {})
        for field in ("rps", "p99_ms", "cpu_ms", "emulator_ms"):
            cell.setdefault(field + "_by_round", []).append(r[field])
    for cell in (c for s in table.values() for routes in s.values() for c in routes.values()):
        for field in ("rps", "p99_ms", "cpu_ms", "emulator_ms"):
            values = cell[field + "_by_round"]
            cell[field] = round(mean(values), 3) if None not in values else None

    def ratio(store, route, total=False):
        def costs(code):
            c = table[code][store][route]
            extra = c["emulator_ms_by_round"] if total else [0.0] * rounds
            return [w + e for w, e in zip(c["cpu_ms_by_round"], extra, strict=True)]

        base, current = costs("base"), costs("current")
        # best of rounds: other load on a shared machine only ever adds CPU per request
        return {"base_ms": round(mean(base), 3), "current_ms": round(mean(current), 3),
                "x_cheaper": round(mean(base) / mean(current), 2),
                "x_cheaper_by_round": [round(b / c, 2) for b, c in zip(base, current, strict=True)],
                "x_cheaper_best_of_rounds": round(min(base) / min(current), 2)}

    head: dict = {}
    for store in table["base"]:
        head[f"per_user_{store}_workers"] = ratio(store, "per-user")
        if store == "bigtable":
            head["per_user_bigtable_workers_plus_emulator"] = ratio(store, "per-user", total=True)
        head[f"lbheartbeat_{store}"] = ratio(store, "lbheartbeat")
        head[f"taarlite_{store}"] = ratio(store, "taarlite")
        for code in ("base", "current"):
            cells = table[code][store]
            head[f"per_user_over_lb_rps_{code}_{store}"] = round(cells["per-user"]["rps"] / cells["lbheartbeat"]["rps"], 3)
    return table, head


def print_report(table: dict, head: dict, members: dict | None = None) -> None:
    def seq(values, fmt):
        return " / ".join("-" if v is None else format(v, fmt) for v in values)

    print(f"\n{'code':<8} {'store':<9} {'route':<12} {'req/s by round':>18} {'p99 ms':>14} "
          f"{'CPU ms/req workers':>20} {'emulator':>14}")
    for code, stores in table.items():
        for store, routes in stores.items():
            for route, c in routes.items():
                print(f"{code:<8} {store:<9} {route:<12} {seq(c['rps_by_round'], '.0f'):>18} "
                      f"{seq(c['p99_ms_by_round'], '.1f'):>14} {seq(c['cpu_ms_by_round'], '.3f'):>20} "
                      f"{seq(c['emulator_ms_by_round'], '.3f'):>14}")
    members = members or {"base": 3, "current": 4}
    print(f"\nBASE serves {members['base']} ensemble members, the working tree {members['current']}"
          + (" (item_item): the ratios are conservative." if members["base"] < members["current"] else "."))
    print("CPU ms per request, BASE / current = x times cheaper (means over rounds; by round; best of rounds):")
    for name, h in head.items():
        if isinstance(h, dict):
            print(f"  {name:<40} {h['base_ms']:>6.3f} / {h['current_ms']:<6.3f} = {h['x_cheaper']:>5.2f}x  "
                  f"({', '.join(f'{x:.2f}x' for x in h['x_cheaper_by_round'])}; best {h['x_cheaper_best_of_rounds']:.2f}x)")
    print("per-user / lbheartbeat throughput in this run:")
    for name, value in head.items():
        if not isinstance(value, dict):
            print(f"  {name.removeprefix('per_user_over_lb_rps_'):<40} {value:.3f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="771a5ac", help="git ref of BASE (issue 11 was filed on 771a5ac)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per route")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-bigtable", action="store_true", help="SQLite profiles only")
    parser.add_argument("--profiles", type=int, default=20_000)
    args = parser.parse_args(argv)
    args.workers, args.threads, args.connections, args.statsd_port = 2, 8, 16, 8125  # as bench.serve
    if not shutil.which("wrk"):
        sys.exit("bench.serve_baseline needs wrk (apt-get install wrk)")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    emulator = None
    if not args.no_bigtable:
        from tests.fixtures.emulators import BigtableEmulator, cbtemulator_binary

        if cbtemulator_binary() is None:
            sys.exit("cbtemulator is not installed: install google-cloud-cli-bigtable-emulator or pass --no-bigtable")
        emulator = BigtableEmulator(cbtemulator_binary())

    with tempfile.TemporaryDirectory(prefix="taar-base-") as tmp:
        base_tree = Path(tmp)
        figures = {"base": {"ref": args.base, "commit": export_tree(args.base, base_tree)},
                   "current": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
                   "workers": args.workers, "threads": args.threads, "connections": args.connections,
                   "duration_s": args.duration, "rounds": args.rounds, "profiles": args.profiles, "client": "wrk",
                   "ensemble_members": {"base": 3, "current": 4}}
        date = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        stores = {"current": WORK / "models-current", "base": WORK / "models-base"}
        trees = {"current": ROOT, "base": base_tree}
        serve.publish_models(stores["current"], date)
        if reads_current_models(base_tree):  # a BASE after issue 15: the same store, four members
            stores["base"] = stores["current"]
            figures["ensemble_members"]["base"] = 4
        else:
            publish_base_models(base_tree, stores["base"], date)
            check_same_models(stores["current"], stores["base"])

        from taar.publishing import read_artifact
        from taar.storage import open_model_store

        whitelist, _ = read_artifact(open_model_store(str(stores["current"])), "whitelist")
        locale_model, _ = read_artifact(open_model_store(str(stores["current"])), "locale")
        rows = serve.synthetic_profiles(args.profiles, whitelist, sorted(locale_model)[:20])
        profile_uris = {"sqlite": f"sqlite:///{(WORK / 'profiles.sqlite3').resolve()}"}
        serve.load_profiles(profile_uris["sqlite"], rows)
        known = [key for key, _ in rows]
        paths = {"lbheartbeat": ["/__lbheartbeat__"], "per-user": serve.per_user_paths(known),
                 "taarlite": serve.taarlite_paths(stores["current"])}

        loads = []
        try:
            if emulator is not None:
                emulator.start()
                os.environ["BIGTABLE_EMULATOR_HOST"] = emulator.host
                profile_uris["bigtable"] = "bigtable://bench-project/bench-instance/taar_profile"
                serve.load_profiles(profile_uris["bigtable"], rows)
            print(f"BASE {figures['base']['commit'][:10]} exported to {base_tree}; {args.profiles} profiles in "
                  f"{', '.join(profile_uris)}", flush=True)
            for round_ in range(1, args.rounds + 1):
                print(f"--- round {round_}", flush=True)
                for store, uri in profile_uris.items():
                    pid = emulator.proc.pid if store == "bigtable" else None
                    for code in ("base", "current"):
                        four = figures["ensemble_members"][code] == 4
                        for record in run_block(code, trees[code], stores[code], uri, store, paths, args, "wrk",
                                                pid, known[0], four):
                            loads.append({"round": round_, **record})
        finally:
            if emulator is not None:
                emulator.stop()

    figures["loads"] = loads
    figures["table"], figures["headline"] = summarise(loads, args.rounds)
    print_report(figures["table"], figures["headline"], figures["ensemble_members"])
    (serve.OUT / "serve_baseline.json").write_text(json.dumps(figures, indent=2))
    print(f"written {serve.OUT / 'serve_baseline.json'}")
    failed = [f"{r['code']}/{r['store']} {r['route']} round {r['round']}: {r['failures']}" for r in loads if r["failures"]]
    if failed:
        sys.exit("failed requests under load: " + "; ".join(failed))
    return figures


if __name__ == "__main__":
    main()
