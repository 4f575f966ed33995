"""The local-run pieces behind ``make demo`` and the end-to-end test (taar_dev.local_run, taar_dev.demo).

The whole pipeline runs in tests/e2e/test_pipeline.py; here each piece is checked
on its own: the data reuse rule, the Airflow home preparation, the early stop of
a run whose task failed (against a stand-in for ``airflow dags test``), the
Variables reaching every local command line, and the demo's settings.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import sys
import textwrap

import pytest

from taar_dev import demo
from taar_dev.local_run import (
    DagRunResult,
    Layout,
    LocalAirflow,
    TaskResult,
    ensure_synthetic,
    local_variables,
    task_changes,
    task_output,
)

D = dt.date(2026, 11, 20)


def tiny_params(**changes):
    from taar_dev.synthetic import Params

    return Params(**{"end_date": D, "clients": 200, "addons": 60, "recommended": 20, "days": 10, "seed": 7, **changes})


# --------------------------------------------------------------------------- data reuse


@pytest.mark.unit
def test_synthetic_data_is_generated_once_per_parameter_set(tmp_path):
    layout = Layout.at(tmp_path)
    manifest, generated = ensure_synthetic(layout, tiny_params(), workers=1)
    assert generated and manifest["params"]["clients"] == 200
    catalogue = layout.amo / "catalogue.json"
    mtime = catalogue.stat().st_mtime_ns

    again, generated = ensure_synthetic(layout, tiny_params(), workers=1)
    assert not generated and again == manifest
    assert catalogue.stat().st_mtime_ns == mtime

    _, generated = ensure_synthetic(layout, tiny_params(seed=8), workers=1)
    assert generated


@pytest.mark.unit
def test_reset_outputs_keeps_the_data(tmp_path):
    layout = Layout.at(tmp_path)
    for folder in (layout.models, layout.etl, layout.telemetry):
        folder.mkdir(parents=True)
        (folder / "x").write_text("x")
    layout.profiles.write_text("db")
    layout.reset_outputs()
    assert not layout.models.exists() and not layout.etl.exists() and not layout.profiles.exists()
    assert (layout.telemetry / "x").exists()


@pytest.mark.unit
def test_profile_store_uri_is_absolute(tmp_path):
    # sqlite:/// + /abs/path = four slashes (SPEC §3.6)
    assert Layout.at(tmp_path).profile_store == f"sqlite:///{tmp_path.resolve()}/profiles.sqlite3"
    assert Layout.at(tmp_path).profile_store.startswith("sqlite:////")


# --------------------------------------------------------------------------- Airflow home


@pytest.mark.unit
def test_prepare_migrates_once_and_imports_variables_only_when_they_change(tmp_path, monkeypatch):
    airflow = LocalAirflow(tmp_path / "home")
    calls = []

    def fake_cli(*args):
        calls.append(args[:2])
        if args[:2] == ("db", "migrate"):
            airflow.database.write_bytes(b"")
        return ""

    monkeypatch.setattr(airflow, "cli", fake_cli)
    airflow.prepare({"taar_seed": "42"})
    assert calls == [("db", "migrate"), ("variables", "import")]
    airflow.prepare({"taar_seed": "42"})
    assert len(calls) == 2
    airflow.prepare({"taar_seed": "43"})
    assert calls[2:] == [("variables", "import")]
    imported = json.loads((airflow.home / "taar-variables.json").read_text())
    assert imported == {"taar_seed": "43"}


FAKE_DAGS_TEST = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE dag_run (dag_id TEXT, run_id TEXT, run_after TEXT, state TEXT)")
db.execute("CREATE TABLE task_instance (dag_id TEXT, run_id TEXT, task_id TEXT, state TEXT, try_number INT, "
           "duration REAL)")
db.execute("INSERT INTO dag_run VALUES ('taar_daily', 'old', '2000-01-01 00:00:00.000000', 'failed')")
db.execute("INSERT INTO dag_run VALUES ('taar_daily', 'r1', '2999-01-01 00:00:00.000000', 'running')")
db.execute("INSERT INTO task_instance VALUES ('taar_daily', 'old', 'locale', 'failed', 1, 1.0)")
db.execute("INSERT INTO task_instance VALUES ('taar_daily', 'r1', 'amodump', 'success', 1, 2.5)")
db.execute("INSERT INTO task_instance VALUES ('taar_daily', 'r1', 'locale', ?, 1, 3.0)", (sys.argv[2],))
db.commit()
print("[DAG TEST] starting task_id=locale map_index=-1", flush=True)
print("job said: no curated add-on in the input", flush=True)
print("[DAG TEST] end task task_id=locale map_index=-1", flush=True)
if sys.argv[2] == "success":
    db.execute("UPDATE dag_run SET state = 'success'")
    db.commit()
    sys.exit(0)
time.sleep(600)  # what dags test does while a task waits for its retry
"""


def fake_airflow(tmp_path, locale_state):
    """A LocalAirflow whose ``python -m airflow dags test`` is a stand-in writing the metadata tables."""
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "fake_dags_test.py"
    script.write_text(FAKE_DAGS_TEST)
    python = tmp_path / "python"
    python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        exec {sys.executable} {script} {home / 'airflow.db'} {locale_state}
        """))
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return LocalAirflow(home, python=str(python))


@pytest.mark.integration
def test_a_run_whose_task_waits_for_a_retry_is_stopped_and_failed(tmp_path):
    airflow = fake_airflow(tmp_path, "up_for_retry")
    changes = []
    result = airflow.run_dag("taar_daily", D, log_path=tmp_path / "run.log", poll_s=0.1, timeout_s=60,
                             on_change=changes.append)
    assert result.duration_s < 30  # not the 600 s the stand-in would sleep
    # progress: each task's state reported once, as seen, the older run's tasks not mixed in
    assert sorted((c.task_id, c.state) for c in changes) == [("amodump", "success"), ("locale", "up_for_retry")]
    assert not result.ok
    assert result.stopped == "task locale failed"
    assert result.failed_tasks == ["locale"]
    assert result.tasks["amodump"] == TaskResult("amodump", "success", 1, 2.5)
    assert task_output(result.log_path, "locale") == ["job said: no curated add-on in the input"]


@pytest.mark.integration
def test_a_successful_run_reports_its_tasks(tmp_path):
    airflow = fake_airflow(tmp_path, "success")
    result = airflow.run_dag("taar_daily", D, log_path=tmp_path / "run.log", poll_s=0.1)
    assert result.ok, result.summary()
    assert result.state == "success" and result.returncode == 0
    assert sorted(result.tasks) == ["amodump", "locale"]  # the older run's tasks are not mixed in
    assert "amodump" in result.summary()


@pytest.mark.unit
def test_task_changes_report_each_new_state_and_try_once(capsys):
    seen = {}
    first = {"amodump": TaskResult("amodump", "running", 1, None), "locale": TaskResult("locale", None, 0, None)}
    assert [(c.task_id, c.state) for c in task_changes("taar_daily", first, seen, 1.0)] == [("amodump", "running")]
    assert task_changes("taar_daily", first, seen, 2.0) == []  # nothing new
    later = {"amodump": TaskResult("amodump", "success", 1, 3.0), "locale": TaskResult("locale", "running", 2, None)}
    changes = task_changes("taar_daily", later, seen, 12.0)
    assert [(c.task_id, c.state, c.try_number) for c in changes] == [("amodump", "success", 1), ("locale", "running", 2)]
    demo.print_progress(changes[1])
    assert capsys.readouterr().out == "[    12 s] taar_daily.locale: running (try 2)\n"


@pytest.mark.unit
def test_run_result_ignores_the_watcher_and_needs_success():
    tasks = {"locale": TaskResult("locale", "failed", 1, 1.0), "watcher": TaskResult("watcher", "failed", 1, 0.1),
             "similarity": TaskResult("similarity", "upstream_failed", 0, None)}
    result = DagRunResult("taar_daily", D, "failed", 1, 5.0, tasks, log_path=None)
    assert result.failed_tasks == ["locale"]
    assert not result.ok
    assert not DagRunResult("taar_daily", D, "success", 1, 5.0, {}, log_path=None).ok


# --------------------------------------------------------------------------- Variables reach the commands


def _render_local_commands(monkeypatch, variables):
    """task id → rendered command line (BashOperators) or op_kwargs (sensors) of both local DAGs."""
    from airflow.dag_processing.dagbag import BundleDagBag

    from tests.fixtures.dags import DAGS, scheduled_run

    class Accessor:
        def __init__(self, parse):
            self.parse = parse

        def get(self, name, default=None):
            if name not in variables:
                return default
            return json.loads(variables[name]) if self.parse else variables[name]

        def __getattr__(self, name):
            return self.get(name)

    monkeypatch.setenv("TAAR_DEPLOY_TARGET", "local")
    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    assert not bag.import_errors
    day = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    run = scheduled_run(day, day, day + dt.timedelta(days=1))
    context = {"params": {"job_date": D.isoformat()}, "dag_run": run, "run_id": run.run_id,
               "var": {"value": Accessor(False), "json": Accessor(True)}}
    rendered = {}
    for dag_id in ("taar_daily", "taar_weekly"):
        dag = bag.dags[dag_id]
        env = dag.get_template_env()
        for task in dag.tasks:
            if hasattr(task, "bash_command"):
                rendered[(dag_id, task.task_id)] = env.from_string(task.bash_command).render(**context)
            elif getattr(task, "op_kwargs", None) and task.task_id.startswith("wait_"):
                rendered[(dag_id, task.task_id)] = {k: env.from_string(v).render(**context)
                                                    for k, v in task.op_kwargs.items() if isinstance(v, str)}
    return rendered


@pytest.mark.airflow
def test_local_variables_reach_every_local_command(tmp_path, monkeypatch):
    layout = Layout.at(tmp_path)
    extra = {"locale": "--min-locale-clients 20", "update_whitelist": "--min-size 20"}
    variables = local_variables(layout, "http://127.0.0.1:9999", seed=7, extra_args=extra)
    rendered = _render_local_commands(monkeypatch, variables)
    commands = {key: value for key, value in rendered.items() if isinstance(value, str)}
    from tests.fixtures.dags import DAGS

    item_item = (DAGS.parent / "jobs" / "taar_item_item.py").is_file()  # HOOK(ease15): local item_item
    assert len(commands) == 13 + item_item  # 8 daily jobs (+ item_item) + 5 weekly jobs (4 profile steps, ensemble)
    for (_, task_id), command in commands.items():
        assert "./var/" not in command, (task_id, command)  # no default left: every path is a Variable
        assert f"--date {D.isoformat()}" in command and "--seed 7" in command
        assert f"--model-store {layout.models}" in command
        assert f"--source {layout.telemetry}" in command
    assert commands[("taar_daily", "locale")].rstrip().endswith("--min-locale-clients 20")
    assert commands[("taar_daily", "update_whitelist")].rstrip().endswith("--min-size 20")
    assert "--amo-url http://127.0.0.1:9999" in commands[("taar_daily", "amodump")]
    assert "--grid none" in commands[("taar_daily", "collaborative")]
    assert f"--profile-store {layout.profile_store}" in commands[("taar_weekly", "profile_load")]
    sensors = [value for value in rendered.values() if isinstance(value, dict)]
    assert sensors and all(set(v.values()) & {str(layout.telemetry), str(layout.models)} for v in sensors)


# --------------------------------------------------------------------------- demo settings


@pytest.mark.unit
def test_demo_settings_default_to_50000_clients_and_yesterday():
    clients, date = demo.settings_from_env({})
    assert clients == 50_000
    assert date == dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    assert demo.settings_from_env({"DEMO_CLIENTS": "10_000", "DEMO_DATE": "2026-11-20"}) == (10_000, D)


@pytest.mark.unit
@pytest.mark.parametrize("env, message", [
    ({"DEMO_CLIENTS": "many"}, "DEMO_CLIENTS must be an integer"),
    ({"DEMO_CLIENTS": "50"}, "DEMO_CLIENTS must be at least 100"),
    ({"DEMO_DATE": "20261120x"}, "DEMO_DATE must be YYYY-MM-DD"),
])
def test_demo_settings_name_the_bad_variable(env, message):
    with pytest.raises(ValueError, match=message):
        demo.settings_from_env(env)


@pytest.mark.unit
def test_demo_exits_2_on_a_bad_setting(monkeypatch, capsys):
    monkeypatch.setenv("DEMO_DATE", "yesterday")
    assert demo.main([]) == 2
    assert "DEMO_DATE" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("clients, expected", [
    # 50 000 // 100 = 500 = the job default: no locale flag; ensemble 5000 / 50 000 = 0.1
    (50_000, {"ensemble": "--sample-rate 0.1"}),
    # 10 000 // 100 = 100; 5000 / 10 000 = 0.5
    (10_000, {"locale": "--min-locale-clients 100", "ensemble": "--sample-rate 0.5"}),
    # 1000 // 100 = 10, floored at 20; 5000 / 1000 > 1, capped at 1
    (1000, {"locale": "--min-locale-clients 20", "ensemble": "--sample-rate 1"}),
    # 3 000 000: 5000 / 3e6 = 0.0016666...
    (3_000_000, {"ensemble": "--sample-rate 0.00166667"}),
])
def test_demo_scales_job_thresholds_to_the_data(clients, expected):
    assert demo.extra_args_for(clients) == {"lite_guidguid": "--days 28", **expected}


@pytest.mark.unit
def test_example_lines_quote_guids_and_bodies():
    assert demo.taarlite_path("{a1b2}") == "/taarlite/api/v1/addon_recommendations/%7Ba1b2%7D/"
    assert demo.taarlite_path("x@y.org") == "/taarlite/api/v1/addon_recommendations/x%40y.org/"
    body = {"options": {"promoted": [["it's@x", 10.0]]}}
    line = demo.curl_line("http://localhost:8000", "POST", "/v1/api/recommendations/abc/", body)
    import shlex

    words = shlex.split(line)
    assert json.loads(words[words.index("-d") + 1]) == body
    assert words[-1] == "http://localhost:8000/v1/api/recommendations/abc/"


@pytest.mark.unit
def test_layout_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layout = Layout.at("var")
    assert layout.models == tmp_path.resolve() / "var" / "models"
    assert os.path.isabs(layout.airflow_home)


@pytest.mark.unit
def test_task_output_keeps_the_job_lines_of_the_last_attempt(tmp_path):
    hook = "[airflow.task.hooks.airflow.providers.standard.hooks.subprocess.SubprocessHook] loc=subprocess.py:106"
    log = tmp_path / "run.log"
    log.write_text("\n".join([
        "t0 [info     ] [DAG TEST] starting task_id=locale map_index=-1 [airflow.sdk.definitions.dag]",
        f"t1 [info     ] first attempt {hook}",
        "t2 [info     ] [DAG TEST] end task task_id=locale map_index=-1 [airflow.sdk.definitions.dag]",
        "t3 [info     ] [DAG TEST] starting task_id=locale map_index=-1 [airflow.sdk.definitions.dag]",
        "t4 [info     ] Task started [airflow.api_fastapi.execution_api.routes.task_instances] loc=x.py:1",
        f"t5 [info     ] {{\"message\": \"no curated add-on\"}} {hook}",
        "t6 [error    ] Task failed with exception [task] loc=task_runner.py:1651",
        "t7 [info     ] [DAG TEST] end task task_id=locale map_index=-1 [airflow.sdk.definitions.dag]",
        f"t8 [info     ] another task {hook}",
    ]))
    assert task_output(log, "locale") == ['{"message": "no curated add-on"}']
    assert task_output(log, "similarity") == []
    assert task_output(tmp_path / "missing.log", "locale") == []
