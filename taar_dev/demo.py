"""``python -m taar_dev.demo`` (``make demo``): the whole TAAR system on this machine (SPEC §12.1).

1. Synthetic telemetry and AMO catalogue under ``./var/telemetry`` and ``./var/amo``
   (``DEMO_CLIENTS`` clients, default 50 000, logical date ``DEMO_DATE``, default
   yesterday UTC); skipped when the data for the same parameters is already there.
   New data resets ``./var/models``, ``./var/etl`` and the profile store.
2. The fake AMO on ``127.0.0.1:8765``.
3. ``AIRFLOW_HOME=./var/airflow`` (examples off, ``dags/`` as the DAG folder): the
   database migrated once, the Variables of the local target set.
4. ``airflow dags test taar_daily`` then ``taar_weekly`` with ``job_date=DEMO_DATE``;
   each task's state change is printed as it happens.
5. The service (gunicorn) on ``localhost:8000`` against ``./var/models`` and
   ``sqlite:///./var/profiles.sqlite3``, and example ``curl`` lines, each tried once.

Ctrl-C stops the service and the fake AMO. Rerunning is safe: the data is reused
and every job republishes the same artifacts for the same date. Exit codes: 0
after Ctrl-C once the service is up, or at the end with ``--no-serve``; 1 when a
step failed (the failing task's output is printed); 2 for a bad ``DEMO_*`` value;
130 when interrupted before the service was up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import signal
import sys
import time
import urllib.parse
from pathlib import Path

from taar_dev.local_run import (
    DAG_IDS,
    Layout,
    LocalAirflow,
    LocalRunError,
    Service,
    ensure_synthetic,
    local_variables,
    partition_exists,
    port_is_free,
    task_output,
)

logger = logging.getLogger("taar_dev.demo")

DEFAULT_CLIENTS = 50_000
#: A test id (SPEC §5.7.1): one character repeated once the dashes are removed.
TEST_ID = "00000000-0000-0000-0000-000000000000"
#: Clients the ensemble evaluates: enough for a stable decision, few enough to stay quick.
ENSEMBLE_CLIENTS = 5000
#: Days of clients_daily the co-installation job reads in the demo (production: 1).
LITE_DAYS = 28


def yesterday_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)


def extra_args_for(clients: int) -> dict[str, str]:
    """Flags appended to the local job commands (Variable ``taar_local_extra_args``) for ``clients``.

    The production defaults assume millions of clients a day. The locale
    threshold scales down to 1 % of the clients below 50 000 (never under 20); the
    ensemble samples about :data:`ENSEMBLE_CLIENTS` clients instead of 1 %; the
    co-installation counts read 28 days instead of one, since a synthetic client is
    active about 3 days in 90 and one day holds only ~3 % of them.
    """
    args = {"lite_guidguid": f"--days {LITE_DAYS}"}
    min_locale_clients = min(500, max(20, clients // 100))
    if min_locale_clients < 500:
        args["locale"] = f"--min-locale-clients {min_locale_clients}"
    args["ensemble"] = f"--sample-rate {min(1.0, ENSEMBLE_CLIENTS / clients):.6g}"
    return args


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m taar_dev.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="./var", help="where everything is kept (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="service port (default %(default)s)")
    p.add_argument("--amo-port", type=int, default=8765, help="fake AMO port (default %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed of the data and every job (default %(default)s)")
    p.add_argument("--no-serve", action="store_true", help="stop after the pipeline (timing runs, CI)")
    return p


def settings_from_env(env=os.environ) -> tuple[int, dt.date]:
    """``DEMO_CLIENTS`` and ``DEMO_DATE`` (YYYY-MM-DD); ``ValueError`` naming the bad one."""
    raw_clients = env.get("DEMO_CLIENTS", "").strip() or str(DEFAULT_CLIENTS)
    try:
        clients = int(raw_clients.replace("_", ""))
    except ValueError:
        raise ValueError(f"DEMO_CLIENTS must be an integer, got {raw_clients!r}") from None
    if clients < 100:
        raise ValueError(f"DEMO_CLIENTS must be at least 100, got {clients}")
    raw_date = env.get("DEMO_DATE", "").strip()
    try:
        date = dt.date.fromisoformat(raw_date) if raw_date else yesterday_utc()
    except ValueError:
        raise ValueError(f"DEMO_DATE must be YYYY-MM-DD, got {raw_date!r}") from None
    return clients, date


# --------------------------------------------------------------------------- examples


def pick_client(telemetry: Path, profile_store_uri: str) -> str | None:
    """A hashed id from ``_synthetic/sample_hashed_ids.txt`` whose stored profile has add-ons."""
    from taar.profile import decode_payload, normalise_profile
    from taar.storage import open_profile_store

    path = telemetry / "_synthetic" / "sample_hashed_ids.txt"
    if not path.is_file():
        return None
    store = open_profile_store(profile_store_uri)
    for hashed_id in path.read_text(encoding="utf-8").split():
        data = store.get(hashed_id, timeout_s=2.0)
        if data and normalise_profile(decode_payload(data), hashed_id)["installed_addons"]:
            return hashed_id
    return None


def ranked_guids(model_store: str) -> list[str]:
    """GUIDs of the published TAARlite ranking, most installed first (ties GUID ascending)."""
    from taar.publishing import read_artifact
    from taar.storage import open_model_store

    ranking, _ = read_artifact(open_model_store(model_store), "ranking")
    return [g for g, _ in sorted(ranking.items(), key=lambda item: (-item[1], item[0]))]


def taarlite_path(guid: str) -> str:
    return f"/taarlite/api/v1/addon_recommendations/{urllib.parse.quote(guid, safe='')}/"


def pick_taarlite_guid(service: Service, guids: list[str], tries: int = 25) -> str | None:
    """The most installed GUID for which TAARlite answers a full list (else the most installed)."""
    for guid in guids[:tries]:
        status, body = service.get(taarlite_path(guid))
        if status == 200 and isinstance(body, dict) and body.get("results"):
            return guid
    return guids[0] if guids else None


def example_requests(service: Service, layout: Layout) -> list[tuple[str, str, str, object]]:
    """``(title, method, path, body)`` of the example requests printed by the demo."""
    client = pick_client(layout.telemetry, layout.profile_store)
    guids = ranked_guids(str(layout.models))
    examples = []
    if client:
        examples.append(("recommendations for a demo client", "GET", f"/v1/api/recommendations/{client}/", None))
    examples.append(("recommendations for a test id", "GET", f"/v1/api/recommendations/{TEST_ID}/", None))
    promoted = {"options": {"promoted": [[g, 10.0 - i] for i, g in enumerate(guids[:2])]}}
    examples.append(("recommendations with promoted add-ons", "POST",
                     f"/v1/api/recommendations/{client or TEST_ID}/", promoted))
    guid = pick_taarlite_guid(service, guids)
    if guid:
        examples.append((f"TAARlite for {guid}", "GET", taarlite_path(guid), None))
    examples.append(("heartbeat", "GET", "/__heartbeat__", None))
    examples.append(("loaded models", "GET", "/__models__", None))
    return examples


def curl_line(public_url: str, method: str, path: str, body) -> str:
    if method == "POST":
        return (f"curl -s -X POST -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))} "
                f"{public_url}{path}")
    return f"curl -s {public_url}{path}"


def _short(obj, limit: int = 150) -> str:
    text = json.dumps(obj, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def print_examples(service: Service, layout: Layout, public_url: str) -> None:
    print(f"\nThe service is up on {public_url} (models {layout.models}, profiles {layout.profile_store}).")
    print("Try (each was run once; its answer is shown below it):\n")
    for title, method, path, body in example_requests(service, layout):
        status, answer = service.post(path, body) if method == "POST" else service.get(path)
        print(f"# {title}")
        print(curl_line(public_url, method, path, body))
        print(f"#   -> {status} {_short(answer)}\n")
    print("Press Ctrl-C to stop the service and the fake AMO.", flush=True)


# --------------------------------------------------------------------------- the run


def _report_failure(result) -> None:
    print(result.summary(), file=sys.stderr)
    for task_id in result.failed_tasks:
        print(f"\n--- output of {task_id} (full log: {result.log_path}) ---", file=sys.stderr)
        print("\n".join(task_output(result.log_path, task_id)), file=sys.stderr)


def prepare_data(layout: Layout, clients: int, date: dt.date, seed: int) -> None:
    """Step 1: the synthetic data (reused when present); new data resets the pipeline outputs."""
    from taar_dev.synthetic import Params

    _, generated = ensure_synthetic(layout, Params(end_date=date, clients=clients, seed=seed))
    if generated:
        layout.reset_outputs()
    if not partition_exists(layout.telemetry, "deletion_request", date):
        logger.warning("no deletion_request partition for %s: the weekly DAG's sensor will wait for it and fail", date)


def print_progress(change) -> None:
    """Print one task state change as it happens (``make demo`` shows the run going)."""
    print(change.line(), flush=True)


def run_dags(layout: Layout, amo_url: str, clients: int, date: dt.date, seed: int, timings: dict) -> bool:
    """Steps 3-4; True when both DAG runs succeeded (else the failing tasks' output is printed)."""
    started = time.monotonic()
    airflow = LocalAirflow(layout.airflow_home)
    airflow.prepare(local_variables(layout, amo_url, seed=seed, extra_args=extra_args_for(clients)))
    timings["airflow setup"] = time.monotonic() - started
    for dag_id in DAG_IDS:
        result = airflow.run_dag(dag_id, date, log_path=layout.logs / f"{dag_id}-{date.isoformat()}.log",
                                 on_change=print_progress)
        timings[dag_id] = result.duration_s
        if not result.ok:
            _report_failure(result)
            return False
        print(result.summary(), flush=True)
    return True


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from taar_dev.fake_amo import FakeAMO

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        clients, date = settings_from_env()
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    # Ctrl-C and a supervisor's stop both clean up; SIGINT is set explicitly because a process
    # started in the background inherits it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    layout = Layout.at(args.root)
    layout.logs.mkdir(parents=True, exist_ok=True)
    print(f"TAAR demo: {clients} synthetic clients, logical date {date}, everything under {layout.root}", flush=True)
    timings: dict[str, float] = {}
    amo = service = None
    serving = False
    try:
        started = time.monotonic()
        prepare_data(layout, clients, date, args.seed)
        timings["synthetic data"] = time.monotonic() - started
        if not port_is_free("127.0.0.1", args.amo_port):
            raise LocalRunError(f"port {args.amo_port} is in use: cannot start the fake AMO (--amo-port)")
        amo = FakeAMO(layout.amo, port=args.amo_port)
        amo_url = amo.start()
        logger.info("fake AMO serving %s on %s", layout.amo, amo_url)
        if not run_dags(layout, amo_url, clients, date, args.seed, timings):
            return 1
        print("pipeline timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + f"; total {sum(timings.values()):.0f} s", flush=True)
        if args.no_serve:
            return 0
        started = time.monotonic()
        service = Service(str(layout.models), layout.profile_store, port=args.port,
                          workers=int(os.environ.get("WORKERS", "2")), threads=int(os.environ.get("THREADS", "4")),
                          log_path=layout.logs / "service.log").start()
        logger.info("service ready in %.1f s (log: %s)", time.monotonic() - started, service.log_path)
        print_examples(service, layout, f"http://localhost:{args.port}")
        serving = True
        while service.proc is not None and service.proc.poll() is None:
            time.sleep(1)
        print(f"the service stopped unexpectedly; see {service.log_path}", file=sys.stderr)
        return 1
    except (LocalRunError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the service and the fake AMO", file=sys.stderr)
        return 0 if serving else 130
    finally:
        if service is not None:
            service.stop()
        if amo is not None:
            amo.stop()


if __name__ == "__main__":
    sys.exit(main())
