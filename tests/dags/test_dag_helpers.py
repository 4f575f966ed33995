"""The DAG package's run-time helpers: local sensors, locale cadence, cluster recovery, failure alerts."""

import datetime as dt
import http.server
import json
import threading
import types

import pytest

from tests.fixtures.dags import load_dagbag, render

pytestmark = pytest.mark.airflow


# --------------------------------------------------------------------------- local sensors


def test_local_partition_sensor_callable(tmp_path, taar_dags):
    from taar_dags.local import partition_exists

    part = tmp_path / "addons" / "submission_date=2026-03-07"
    assert not partition_exists(str(tmp_path), "addons", "2026-03-07")
    part.mkdir(parents=True)
    assert not partition_exists(str(tmp_path), "addons", "2026-03-07")  # empty directory is not a partition
    (part / "part-0.parquet").write_bytes(b"x")
    assert partition_exists(str(tmp_path), "addons", "2026-03-07")


def test_local_models_sensor_needs_every_dated_copy(tmp_path, taar_dags):
    from taar_dags.local import dated_objects_exist

    objects = [["a/one.json", "2026-03-07"], ["b/two.json", "2026-03-07"], ["c/locale.json", "2026-03-01"]]
    for base, stamp in [("a/one.json", "20260307"), ("b/two.json", "20260307"), ("c/locale.json", "20260307")]:
        (tmp_path / f"{base}.{stamp}.bz2").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{base}.{stamp}.bz2").write_bytes(b"x")
    assert not dated_objects_exist(str(tmp_path), objects)  # the locale copy is wanted for 03-01
    (tmp_path / "c/locale.json.20260301.bz2").write_bytes(b"x")
    assert dated_objects_exist(str(tmp_path), objects)


# --------------------------------------------------------------------------- locale cadence


def test_locale_due_dates(taar_dags):
    from taar_dags.common import locale_due_date

    # anchor Saturday 2026-01-03; 2026-03-07 is 63 days later (a Saturday), 03-10 is 66 days later
    assert locale_due_date("2026-03-07", "7") == "2026-03-07"
    assert locale_due_date("2026-03-10", 7) == "2026-03-07"  # 66 % 7 = 3 days back
    assert locale_due_date("2026-03-10", "1") == "2026-03-10"
    with pytest.raises(ValueError, match="taar_locale_every_days"):
        locale_due_date("2026-03-10", "3")


def test_locale_gate_follows_the_watcher_every_day(taar_dags):
    from taar_dags.tasks import locale_branch

    assert locale_branch("2026-03-07", "7", ["locale"], ["watcher"]) == ["locale", "watcher"]
    assert locale_branch("2026-03-08", "7", ["locale"], ["watcher"]) == ["watcher"]
    assert locale_branch("2026-03-08", "1", ["locale"], ["watcher"]) == ["locale", "watcher"]


def test_weekly_waits_for_the_locale_model_of_its_cadence(gcp_dags):
    weekly = gcp_dags["taar_weekly"]
    sensor = weekly.get_task("wait_daily_models.locale")
    assert render(weekly, sensor.object) == "prod/taar/locale/top10_dict.json.20260307.bz2"
    # a manual weekly run for Tuesday 03-10 on a weekly cadence wants Saturday's locale model
    from tests.fixtures.dags import JSON_VARIABLES, VARIABLES, Vars

    weekly_cadence = {"value": Vars({**VARIABLES, "taar_locale_every_days": "7"}), "json": Vars(JSON_VARIABLES)}
    assert render(weekly, sensor.object, params={"job_date": "2026-03-10"}, var=weekly_cadence) == (
        "prod/taar/locale/top10_dict.json.20260307.bz2")
    other = weekly.get_task("wait_daily_models.donors")
    assert render(weekly, other.object, params={"job_date": "2026-03-10"}, var=weekly_cadence) == (
        "prod/taar/similarity/donors.json.20260310.bz2")


def test_locale_gate_in_the_daily_dag(local_dags, gcp_dags):
    gate = local_dags["taar_daily"].get_task("locale_due")
    assert gate.op_kwargs["run"] == ["locale"] and gate.op_kwargs["always"] == ["watcher"]
    assert gate.downstream_task_ids == {"locale", "watcher"}
    gcp_gate = gcp_dags["taar_daily"].get_task("locale_due")
    assert set(gcp_gate.op_kwargs["run"]) == {"locale.create_cluster", "locale.delete_cluster"}
    # everything the gate may skip is directly below it; the submit follows its cluster
    assert gcp_gate.downstream_task_ids == {"locale.create_cluster", "locale.delete_cluster", "watcher"}


# --------------------------------------------------------------------------- Dataproc cluster recovery


class _Op:
    def __init__(self, log, what):
        self.log, self.what = log, what

    def result(self, timeout=None):
        self.log.append(self.what)


class FakeDataprocHook:
    """Speaks the DataprocHook methods ensure_cluster uses; the cluster is ``state`` or gone (None)."""

    def __init__(self, state):
        self.state, self.calls = state, []

    def get_cluster(self, *, project_id, region, cluster_name):
        from google.api_core.exceptions import NotFound

        self.calls.append(("get", cluster_name))
        if self.state is None:
            raise NotFound(f"cluster {cluster_name} not found")
        return types.SimpleNamespace(status=types.SimpleNamespace(state=self.state))

    def create_cluster(self, *, project_id, region, cluster_name, cluster_config, labels):
        self.calls.append(("create", cluster_name, cluster_config["worker_config"]["num_instances"]))
        return _Op(self.calls, "created")

    def delete_cluster(self, *, project_id, region, cluster_name):
        self.calls.append(("delete", cluster_name))
        return _Op(self.calls, "deleted")


def _ensure(hook):
    from taar_dags.gcp import ensure_cluster

    return ensure_cluster(hook, project_id="p", region="r", cluster_name="taar-x",
                          cluster_config={"worker_config": {"num_instances": "4"}}, labels={})


def test_a_retry_recreates_a_lost_cluster(taar_dags):
    hook = FakeDataprocHook(None)
    assert _ensure(hook) == "created"
    assert hook.calls == [("get", "taar-x"), ("create", "taar-x", 4), "created"]  # rendered count as an integer


def test_a_running_cluster_is_used_as_is(taar_dags):
    from google.cloud.dataproc_v1 import ClusterStatus

    hook = FakeDataprocHook(ClusterStatus.State.RUNNING)
    assert _ensure(hook) == "running" and hook.calls == [("get", "taar-x")]


def test_a_broken_cluster_is_replaced_and_a_deleting_one_fails_the_try(taar_dags):
    from airflow.exceptions import AirflowException
    from google.cloud.dataproc_v1 import ClusterStatus

    hook = FakeDataprocHook(ClusterStatus.State.ERROR)
    assert _ensure(hook) == "created"
    assert [c if isinstance(c, str) else c[0] for c in hook.calls] == ["get", "delete", "deleted", "create", "created"]
    with pytest.raises(AirflowException, match="being deleted"):
        _ensure(FakeDataprocHook(ClusterStatus.State.DELETING))


def test_submit_carries_the_cluster_config_it_recreates(gcp_dags):
    daily = gcp_dags["taar_daily"]
    submit, create = daily.get_task("similarity.submit"), daily.get_task("similarity.create_cluster")
    assert "cluster_config" in submit.template_fields
    assert render(daily, submit.cluster_config) == render(daily, create.cluster_config)


# --------------------------------------------------------------------------- failure alerts


@pytest.fixture
def webhook():
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def _context():
    ti = types.SimpleNamespace(dag_id="taar_daily", task_id="locale", try_number=3, log_url="http://airflow/log")
    return {"ti": ti, "dag_run": types.SimpleNamespace(run_id="scheduled__x"), "exception": RuntimeError("exit 1")}


def test_failure_callback_posts_to_the_webhook(monkeypatch, webhook, taar_dags, caplog):
    from taar_dags.common import notify_failure

    url, received = webhook
    monkeypatch.setenv("TAAR_ALERT_WEBHOOK_URL", url)
    notify_failure(_context())
    assert len(received) == 1
    text = received[0]["text"]
    assert "taar_daily.locale" in text and "try 3" in text and "exit 1" in text and "http://airflow/log" in text
    assert "taar_daily.locale" in caplog.text


def test_failure_callback_without_webhook_only_logs_and_never_raises(monkeypatch, taar_dags, caplog):
    from taar_dags.common import notify_failure

    monkeypatch.delenv("TAAR_ALERT_WEBHOOK_URL", raising=False)
    notify_failure(_context())
    assert "TAAR task failed: taar_daily.locale" in caplog.text
    monkeypatch.setenv("TAAR_ALERT_WEBHOOK_URL", "http://127.0.0.1:9/unreachable")
    notify_failure(_context())  # an unreachable webhook is logged, not raised
    assert "not delivered" in caplog.text


def test_deploy_target_is_read_from_the_environment_only(taar_dags):
    from taar_dags.common import DeployTargetError, deploy_target

    assert deploy_target({"TAAR_DEPLOY_TARGET": " GCP "}) == "gcp"
    with pytest.raises(DeployTargetError, match="TAAR_DEPLOY_TARGET.*got unset"):
        deploy_target({})


def test_dag_default_args_name_owner_and_callback(monkeypatch):
    dag = load_dagbag("local", monkeypatch).dags["taar_daily"]
    assert dag.default_args["owner"] == "taar"
    assert dag.default_args["execution_timeout"] == dt.timedelta(hours=3)
    assert dag.default_args["on_failure_callback"].__name__ == "notify_failure"
