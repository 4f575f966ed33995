"""DAG loading and structure (SPEC §10): edges, operators and key arguments per target."""

import datetime as dt
import json
import shlex
from pathlib import Path

import pytest

from tests.fixtures.dags import BQ_TABLES, DAGS, Vars, load_dagbag, manual_run, render

pytestmark = pytest.mark.airflow

GCP_KINDS = ("Dataproc", "GKE", "BigQuery", "GCS")


def _edges(dag):
    return {t.task_id: sorted(t.downstream_task_ids - {"watcher"}) for t in dag.tasks if t.task_id != "watcher"}


def _args_after(args, flag):
    return args[args.index(flag) + 1]


# --------------------------------------------------------------------------- loading


def test_both_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {"taar_daily", "taar_weekly"}
    # the package's own .airflowignore keeps it out of DAG discovery (and only it)
    from airflow.utils.file import list_py_file_paths

    assert sorted(Path(p).name for p in list_py_file_paths(str(DAGS))) == ["taar_daily.py", "taar_weekly.py"]


@pytest.mark.parametrize("value", [None, "", "aws", "GCP-prod"])
def test_import_fails_closed_without_a_valid_deploy_target(monkeypatch, value):
    if value is None:
        bag = load_dagbag(None, monkeypatch)
    else:
        bag = load_dagbag(value, monkeypatch)
    assert bag.dags == {}
    assert {Path(f).name for f in bag.import_errors} == {"taar_daily.py", "taar_weekly.py"}
    for message in bag.import_errors.values():
        assert "TAAR_DEPLOY_TARGET must be one of gcp, local" in message


def test_no_parse_time_variable_read():
    """The DAG package never calls Variable.get: every setting is a run-time template."""
    for path in [*DAGS.glob("*.py"), *(DAGS / "taar_dags").glob("*.py")]:
        text = path.read_text()
        assert "Variable.get" not in text and "sys.path" not in text.replace("``sys.path``", ""), path


def test_schedules_and_run_settings(dagbag):
    daily, weekly = dagbag.dags["taar_daily"], dagbag.dags["taar_weekly"]
    assert daily.timetable.summary == "0 4 * * *" and weekly.timetable.summary == "0 6 * * 0"
    assert daily.dagrun_timeout == dt.timedelta(hours=20) and weekly.dagrun_timeout == dt.timedelta(hours=36)
    for dag in (daily, weekly):
        assert dag.catchup is False and dag.max_active_runs == 1
        assert "job_date" in dag.params
        assert "TAAR_DEPLOY_TARGET" in dag.doc_md and dag.dag_id in dag.doc_md


def test_every_task_has_an_owner_a_timeout_and_the_failure_callback(dagbag, taar_dags):
    from taar_dags.common import notify_failure

    for dag in dagbag.dags.values():
        for task in dag.tasks:
            assert task.owner == "taar", task.task_id
            assert isinstance(task.execution_timeout, dt.timedelta), task.task_id
            assert task.execution_timeout <= dt.timedelta(hours=8), task.task_id
            callbacks = task.on_failure_callback if isinstance(task.on_failure_callback, list) else [
                task.on_failure_callback]
            assert [cb.__name__ for cb in callbacks] == [notify_failure.__name__], task.task_id


def test_watcher_sits_under_every_task_and_fails_on_one_failed(dagbag):
    for dag in dagbag.dags.values():
        watcher = dag.get_task("watcher")
        assert watcher.trigger_rule == "one_failed"
        assert watcher.upstream_task_ids == {t.task_id for t in dag.tasks} - {"watcher"}


# --------------------------------------------------------------------------- edges

LOCAL_DAILY = {
    "amodump": ["amowhitelist", "collaborative", "item_item", "lite_guidguid", "lite_guidranking"],
    "amowhitelist": [],
    "update_whitelist": ["collaborative", "item_item", "locale", "similarity"],
    "wait_clients_daily": ["collaborative", "item_item", "lite_guidguid", "locale"],
    "wait_clients_last_seen": ["similarity"],
    "wait_addons": ["lite_guidranking"],
    "locale_due": ["locale"],
    "locale": [], "similarity": [], "collaborative": [], "item_item": [], "lite_guidguid": [],
    "lite_guidranking": [],
}
LOCAL_WEEKLY = {
    "wait_clients_last_seen": ["profile_extract"],
    "wait_deletion_request": ["profile_extract"],
    "profile_extract": ["profile_load"],
    "profile_load": ["profile_delete_opt_outs"],
    "profile_delete_opt_outs": ["profile_cleanup"],
    "profile_cleanup": [],
    "wait_daily_models": ["ensemble"],
    "ensemble": [],
}


def _spark_group(job, downstream=()):
    return {f"{job}.create_cluster": [f"{job}.submit"], f"{job}.submit": sorted([f"{job}.delete_cluster", *downstream]),
            f"{job}.delete_cluster": []}


GCP_DAILY = {
    "amodump": ["amowhitelist", "collaborative.create_cluster", "item_item.create_cluster",
                "lite_guidguid.create_cluster", "lite_guidranking"],
    "amowhitelist": [],
    "update_whitelist": ["collaborative.create_cluster", "item_item.create_cluster", "locale.create_cluster",
                         "similarity.create_cluster"],
    "wait_clients_daily": ["collaborative.create_cluster", "item_item.create_cluster", "lite_guidguid.create_cluster",
                           "locale.create_cluster"],
    "wait_clients_last_seen": ["similarity.create_cluster"],
    "wait_addons": ["lite_guidranking"],
    "lite_guidranking": [],
    "locale_due": ["locale.create_cluster", "locale.delete_cluster"],
    **_spark_group("locale"), **_spark_group("similarity"), **_spark_group("collaborative"),
    **_spark_group("item_item"), **_spark_group("lite_guidguid"),
}
MODELS = ["addon_mapping", "donors", "item_item", "item_matrix", "locale", "lr_curves", "whitelist"]
GCP_WEEKLY = {
    "wait_clients_last_seen": ["profile.create_cluster"],
    "wait_deletion_request": ["profile.create_cluster"],
    "profile.create_cluster": ["profile.profile_extract"],
    "profile.profile_extract": ["profile.profile_load"],
    "profile.profile_load": ["profile.delete_cluster", "profile_delete_opt_outs"],
    "profile.delete_cluster": [],
    "profile_delete_opt_outs": ["profile_cleanup"],
    "profile_cleanup": [],
    **{f"wait_daily_models.{m}": ["ensemble.create_cluster"] for m in MODELS},
    **_spark_group("ensemble"),
}


@pytest.mark.parametrize("dag_id, expected", [("taar_daily", LOCAL_DAILY), ("taar_weekly", LOCAL_WEEKLY)])
def test_local_edges(local_dags, taar_dags, dag_id, expected):
    assert _edges(local_dags[dag_id]) == expected


@pytest.mark.parametrize("dag_id, expected", [("taar_daily", GCP_DAILY), ("taar_weekly", GCP_WEEKLY)])
def test_gcp_edges(gcp_dags, dag_id, expected):
    assert _edges(gcp_dags[dag_id]) == expected


def test_item_item_runs_its_job_with_the_collaborative_inputs(gcp_dags):
    daily = gcp_dags["taar_daily"]
    job = daily.get_task("item_item.submit").job
    assert render(daily, job["pyspark_job"]["main_python_file_uri"]).endswith("/jobs/taar_item_item.py")
    assert (daily.get_task("item_item.create_cluster").upstream_task_ids
            == daily.get_task("collaborative.create_cluster").upstream_task_ids
            == {"update_whitelist", "amodump", "wait_clients_daily"})
    weekly = gcp_dags["taar_weekly"]
    assert render(weekly, weekly.get_task("wait_daily_models.item_item").object) == (
        "prod/addon_recommender/item_item.json.20260307.bz2")


def test_gcp_operator_types(gcp_dags):
    types = {t.task_id: type(t).__name__ for dag in gcp_dags.values() for t in dag.tasks}
    assert types["amodump"] == types["profile_cleanup"] == "GKEStartPodOperator"
    assert types["locale.create_cluster"] == "TaarCreateClusterOperator"
    assert types["collaborative.submit"] == "TaarSubmitJobOperator"
    assert types["ensemble.delete_cluster"] == "DataprocDeleteClusterOperator"
    assert types["wait_clients_daily"] == "BigQueryTablePartitionExistenceSensor"
    assert types["wait_daily_models.item_matrix"] == "GCSObjectExistenceSensor"


def test_every_long_gcp_task_defers(gcp_dags):
    from airflow.providers.google.cloud.operators.dataproc import (
        DataprocCreateClusterOperator,
        DataprocDeleteClusterOperator,
        DataprocSubmitJobOperator,
    )
    from airflow.providers.google.cloud.operators.kubernetes_engine import GKEStartPodOperator
    from airflow.providers.google.cloud.sensors.bigquery import BigQueryTablePartitionExistenceSensor
    from airflow.providers.google.cloud.sensors.gcs import GCSObjectExistenceSensor

    kinds = (DataprocCreateClusterOperator, DataprocDeleteClusterOperator, DataprocSubmitJobOperator,
             GKEStartPodOperator, BigQueryTablePartitionExistenceSensor, GCSObjectExistenceSensor)
    seen = set()
    for dag in gcp_dags.values():
        for task in dag.tasks:
            if isinstance(task, kinds):
                assert task.deferrable is True, task.task_id
                seen.add(next(k.__name__ for k in kinds if isinstance(task, k)))
            else:  # only the short in-process tasks do not defer
                assert task.task_id in ("watcher", "locale_due"), task.task_id
    assert len(seen) == len(kinds)


def test_gcp_retries_timeouts_and_trigger_rules(gcp_dags):
    daily = gcp_dags["taar_daily"]
    for job in ("locale", "similarity", "collaborative", "item_item", "lite_guidguid"):
        delete = daily.get_task(f"{job}.delete_cluster")
        assert delete.trigger_rule == "all_done" and delete.retries == 3
        submit = daily.get_task(f"{job}.submit")
        assert submit.retries == 2 and submit.retry_exponential_backoff
        assert submit.execution_timeout >= dt.timedelta(hours=4)
    assert daily.get_task("collaborative.submit").execution_timeout == dt.timedelta(hours=8)
    sensor = daily.get_task("wait_clients_daily")
    assert sensor.retries == 0 and sensor.poke_interval == 600 and sensor.timeout == 6 * 3600
    assert sensor.execution_timeout > dt.timedelta(seconds=sensor.timeout)  # the sensor's own timeout fires first


# --------------------------------------------------------------------------- rendering


def test_job_date_and_names_render_for_a_manual_run_without_a_logical_date(gcp_dags):
    daily, weekly = gcp_dags["taar_daily"], gcp_dags["taar_weekly"]
    run = manual_run(dt.datetime(2026, 3, 10, 9, 30, tzinfo=dt.UTC))
    submit = daily.get_task("collaborative.submit")
    args = render(daily, submit.job["pyspark_job"]["args"], dag_run=run)
    assert _args_after(args, "--date") == "2026-03-09"  # the UTC day before the run
    name = render(daily, submit.job["placement"]["cluster_name"], dag_run=run)
    assert name.startswith("taar-collaborative-20260309-") and len(name) <= 51
    assert render(daily, daily.get_task("collaborative.create_cluster").cluster_name, dag_run=run) == name
    assert render(daily, daily.get_task("collaborative.delete_cluster").cluster_name, dag_run=run) == name
    pod_args = render(weekly, weekly.get_task("profile_cleanup").arguments, dag_run=run)
    assert _args_after(pod_args, "--date") == "2026-03-09"
    sensor = weekly.get_task("wait_daily_models.donors")
    assert render(weekly, sensor.object, dag_run=run) == "prod/taar/similarity/donors.json.20260309.bz2"


def test_job_date_of_scheduled_runs_and_the_run_parameter(taar_dags):
    from taar_dags.common import job_date

    from tests.fixtures.dags import DAILY_RUN, WEEKLY_RUN

    assert job_date({"job_date": ""}, DAILY_RUN, "daily") == "2026-03-07"  # interval start
    assert job_date({"job_date": ""}, WEEKLY_RUN, "weekly") == "2026-03-07"  # interval end 03-08 minus one day
    assert job_date({"job_date": "2026-01-31"}, DAILY_RUN, "daily") == "2026-01-31"
    late = manual_run(dt.datetime(2026, 3, 10, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    assert job_date({}, late, "weekly") == "2026-03-08"  # 00:30 +02:00 is 03-09 22:30 UTC


def test_cluster_and_job_ids_follow_the_run_and_the_try(gcp_dags):
    daily = gcp_dags["taar_daily"]
    submit = daily.get_task("locale.submit")
    import types

    first = render(daily, submit.job["reference"]["job_id"])
    again = render(daily, submit.job["reference"]["job_id"])
    retry = render(daily, submit.job["reference"]["job_id"], ti=types.SimpleNamespace(try_number=2))
    other_run = render(daily, submit.job["reference"]["job_id"],
                       dag_run=manual_run(dt.datetime(2026, 3, 8, 12, tzinfo=dt.UTC), run_id="manual__x"))
    assert first == again  # deterministic: a duplicate submit of one try is refused by Dataproc
    assert first.startswith("taar-locale-20260307-") and first.endswith("-submit-try1")
    assert retry == first[: -len("try1")] + "try2"
    assert other_run != first and other_run.endswith("-try1")


def test_gcp_submit_renders_release_files_and_args(gcp_dags, taar_dags):
    daily = gcp_dags["taar_daily"]
    job = daily.get_task("collaborative.submit").job
    tag = "v" + taar_dags.VERSION
    assert render(daily, job["pyspark_job"]["main_python_file_uri"]) == (
        f"gs://taar-artifacts/taar/{tag}/jobs/taar_collaborative.py")
    assert render(daily, job["pyspark_job"]["python_file_uris"]) == [f"gs://taar-artifacts/taar/{tag}/taar.zip"]
    args = render(daily, job["pyspark_job"]["args"])
    assert args[:2] == ["--date", "2026-03-07"]
    assert _args_after(args, "--model-store") == "gs://taar-models/prod"
    assert _args_after(args, "--grid") == "default"
    assert render(daily, job["pyspark_job"]["args"][1], params={"job_date": "2026-01-31"}) == "2026-01-31"


def test_collaborative_num_blocks_follow_the_cluster_size(gcp_dags):
    daily = gcp_dags["taar_daily"]
    args = render(daily, daily.get_task("collaborative.submit").job["pyspark_job"]["args"])
    # taar_dataproc_cluster_sizes: 6 workers of n2-highmem-16 (16 vCPUs): 6 x 16 = 96 blocks
    assert _args_after(args, "--num-blocks") == "96"
    cfg = render(daily, daily.get_task("collaborative.create_cluster").cluster_config)
    assert cfg["worker_config"] == {"num_instances": "6", "machine_type_uri": "n2-highmem-16"}
    # without the Variable: the default 4 workers of n2-highmem-8: 4 x 8 = 32
    no_sizes = {"value": Vars(__import__("tests.fixtures.dags", fromlist=["VARIABLES"]).VARIABLES),
                "json": Vars({"taar_bq_tables": BQ_TABLES})}
    args = render(daily, daily.get_task("collaborative.submit").job["pyspark_job"]["args"], var=no_sizes)
    assert _args_after(args, "--num-blocks") == "32"


def test_cluster_size_rules(taar_dags):
    from taar_dags.common import cluster_size

    assert cluster_size({}, "similarity")["num_blocks"] == 2 * 8
    assert cluster_size({"similarity": {"worker_machine_type": "n2-custom-6-24576", "worker_cores": 6}},
                        "similarity")["num_blocks"] == 2 * 6
    with pytest.raises(ValueError, match="worker_cores"):
        cluster_size({"similarity": {"worker_machine_type": "n2-custom-6-24576x"}}, "similarity")
    with pytest.raises(ValueError, match="num_workers >= 2"):
        cluster_size({"similarity": {"num_workers": 1}}, "similarity")


def test_gcp_cluster_config(gcp_dags, taar_dags):
    daily = gcp_dags["taar_daily"]
    create = daily.get_task("locale.create_cluster")
    cfg = render(daily, create.cluster_config)
    assert cfg["software_config"]["image_version"].startswith("2.2")  # Spark 3.5
    assert cfg["worker_config"] == {"num_instances": "2", "machine_type_uri": "n2-standard-8"}  # defaults
    assert cfg["lifecycle_config"]["idle_delete_ttl"] and cfg["lifecycle_config"]["auto_delete_ttl"]
    metadata = cfg["gce_cluster_config"]["metadata"]
    # the BigQuery connector is the image's, pinned by Dataproc's documented metadata key; no extra jar
    assert metadata["SPARK_BQ_CONNECTOR_VERSION"].count(".") == 2
    assert "spark:spark.jars" not in cfg["software_config"]["properties"]
    # pinned dependencies from this release's wheelhouse, through this release's init action; no public bucket
    tag = "v" + taar_dags.VERSION
    assert metadata["taar-wheelhouse"] == f"gs://taar-artifacts/taar/{tag}/wheelhouse"
    assert cfg["initialization_actions"] == [{"executable_file": f"gs://taar-artifacts/taar/{tag}/dataproc-init.sh"}]
    assert "PIP_PACKAGES" not in metadata
    # the noise key's secret is named (never its value) on the locale cluster only
    assert metadata["taar-locale-noise-key-secret"] == "projects/p/secrets/noise"
    other = render(daily, daily.get_task("similarity.create_cluster").cluster_config)
    assert "taar-locale-noise-key-secret" not in other["gce_cluster_config"]["metadata"]


def test_cluster_config_counts_become_integers(taar_dags):
    from taar_dags.gcp import with_int_counts

    rendered = {"worker_config": {"num_instances": "6", "machine_type_uri": "n2"},
                "lifecycle_config": {"idle_delete_ttl": {"seconds": "3600"}}, "master_config": {"num_instances": 1}}
    assert with_int_counts(rendered) == {"worker_config": {"num_instances": 6, "machine_type_uri": "n2"},
                                         "lifecycle_config": {"idle_delete_ttl": {"seconds": 3600}},
                                         "master_config": {"num_instances": 1}}


def test_the_same_table_config_reaches_the_sensors_and_every_source_job(gcp_dags):
    daily, weekly = gcp_dags["taar_daily"], gcp_dags["taar_weekly"]
    for dag, sensor_id, table in [(daily, "wait_clients_daily", "clients_daily"),
                                  (daily, "wait_clients_last_seen", "clients_last_seen"),
                                  (daily, "wait_addons", "addons"),
                                  (weekly, "wait_deletion_request", "deletion_request")]:
        sensor = dag.get_task(sensor_id)
        named = ".".join(render(dag, [sensor.project_id, sensor.dataset_id, sensor.table_id]))
        assert named == BQ_TABLES[table]
        assert render(dag, sensor.partition_id) == "20260307"
    jobs = [(daily, daily.get_task(f"{j}.submit").job["pyspark_job"]["args"])
            for j in ("locale", "similarity", "collaborative", "item_item", "lite_guidguid")]
    jobs += [(weekly, weekly.get_task(t).job["pyspark_job"]["args"])
             for t in ("ensemble.submit", "profile.profile_extract", "profile.profile_load")]
    jobs += [(daily, daily.get_task("lite_guidranking").arguments)]
    jobs += [(weekly, weekly.get_task(t).arguments) for t in ("profile_delete_opt_outs", "profile_cleanup")]
    for dag, args in jobs:
        rendered = render(dag, args)
        assert json.loads(_args_after(rendered, "--bq-tables")) == BQ_TABLES
        assert _args_after(rendered, "--bq-materialization-dataset") == "taar_tmp"
        assert "--bq-table" not in rendered


def test_gcp_pods_carry_image_resources_service_account_and_env(gcp_dags, taar_dags):
    daily, weekly = gcp_dags["taar_daily"], gcp_dags["taar_weekly"]
    pods = [t for dag in (daily, weekly) for t in dag.tasks if type(t).__name__ == "GKEStartPodOperator"]
    assert {p.task_id for p in pods} == {"amodump", "amowhitelist", "update_whitelist", "lite_guidranking",
                                         "profile_delete_opt_outs", "profile_cleanup"}
    for pod in pods:
        dag = daily if pod.task_id in daily.task_ids else weekly
        assert render(dag, pod.image) == "gcr.io/p/taar-etl:v" + taar_dags.VERSION
        assert pod.service_account_name == "taar-etl"
        resources = pod.container_resources
        assert resources.requests["cpu"] and resources.requests["memory"] and resources.limits["memory"]
        pairs = pod.env_vars.items() if isinstance(pod.env_vars, dict) else ((e.name, e.value) for e in pod.env_vars)
        env = {name: render(dag, value) for name, value in pairs}
        assert env == {"GOOGLE_CLOUD_PROJECT": "bq-billing", "TAAR_DEPLOY_TARGET": "gcp"}
        assert getattr(pod.on_finish_action, "value", pod.on_finish_action) == "delete_pod"
        assert pod.get_logs is True
    args = render(daily, daily.get_task("amodump").arguments)
    assert args[:3] == ["taar_etl.taar_amodump", "--date", "2026-03-07"]
    assert _args_after(args, "--amo-url") == "https://addons.mozilla.org"


def test_nothing_defaults_to_main_and_no_release_variable_remains(taar_dags):
    text = "\n".join(p.read_text() for p in [*DAGS.glob("*.py"), *(DAGS / "taar_dags").glob("*.py")])
    assert "taar_jobs_ref" not in text and "taar_etl_image_tag" not in text
    assert "'main'" not in text and '"main"' not in text


def test_the_dags_carry_the_release_version_of_the_code():
    import taar
    from tests.fixtures.dags import DAGS as folder

    namespace = {}
    exec((folder / "taar_dags" / "__init__.py").read_text(), namespace)
    assert namespace["VERSION"] == taar.__version__


def test_gcp_sensors_render_partition_and_objects(gcp_dags):
    weekly = gcp_dags["taar_weekly"]
    gcs = weekly.get_task("wait_daily_models.item_matrix")
    assert render(weekly, gcs.bucket) == "taar-models"
    # weekly job date = last day of the interval (2026-03-08 06:00 end -> 2026-03-07)
    assert render(weekly, gcs.object) == "prod/addon_recommender/item_matrix.json.20260307.bz2"


def test_weekly_profile_steps_on_gcp(gcp_dags):
    weekly = gcp_dags["taar_weekly"]
    args = render(weekly, weekly.get_task("profile_delete_opt_outs").arguments)
    assert _args_after(args, "--profile-store") == "bigtable://bt-proj/taar-inst/taar_profile"
    assert _args_after(args, "--steps") == "delete-opt-outs"
    for task_id in ("profile_delete_opt_outs", "profile_cleanup"):
        assert weekly.get_task(task_id).trigger_rule == "all_done"


def test_opt_out_deletion_and_cleanup_run_whatever_happened_locally(local_dags):
    weekly = local_dags["taar_weekly"]
    assert weekly.get_task("profile_delete_opt_outs").trigger_rule == "all_done"
    assert weekly.get_task("profile_cleanup").trigger_rule == "all_done"
    assert weekly.get_task("profile_load").trigger_rule == "all_success"


def test_local_commands_render_to_job_command_lines(local_dags):
    daily = local_dags["taar_daily"]
    extra = {"value": Vars(), "json": Vars({"taar_local_extra_args": {"locale": "--min-locale-clients 5"},
                                            "taar_bq_tables": {"addons": "p.d.it's"}})}
    cmd = render(daily, daily.get_task("locale").bash_command, var=extra)
    argv = shlex.split(cmd.split("&& exec ", 1)[1])
    assert argv[1:5] == ["jobs/taar_locale.py", "--date", "2026-03-07", "--model-store"]
    assert _args_after(argv, "--spark-master") == "local[2]"
    # the JSON table config survives the shell as one argument, quotes and all
    assert json.loads(_args_after(argv, "--bq-tables")) == {"addons": "p.d.it's"}
    assert argv[-2:] == ["--min-locale-clients", "5"]
    no_tables = render(daily, daily.get_task("locale").bash_command, var={"value": Vars(), "json": Vars()})
    assert json.loads(_args_after(shlex.split(no_tables.split("&& exec ", 1)[1]), "--bq-tables")) == {}


# --------------------------------------------------------------------------- hooks for parallel work


def test_profile_steps_honour_opt_outs_up_to_the_run_date(gcp_dags):
    """Issue 12: every profile step gets --run-date, the latest complete day of the run (never before D)."""
    weekly = gcp_dags["taar_weekly"]
    backfill = manual_run(dt.datetime(2026, 3, 20, 9, 30, tzinfo=dt.UTC))
    for task_id in ("profile.profile_extract", "profile.profile_load", "profile_delete_opt_outs", "profile_cleanup"):
        task = weekly.get_task(task_id)
        fields = task.job["pyspark_job"]["args"] if hasattr(task, "job") else task.arguments
        args = render(weekly, fields, dag_run=backfill, params={"job_date": "2026-03-07"})
        # requested on 2026-03-20: 2026-03-19 is the latest complete day
        assert (_args_after(args, "--date"), _args_after(args, "--run-date")) == ("2026-03-07", "2026-03-19")
    same_day = manual_run(dt.datetime(2026, 3, 7, 9, 30, tzinfo=dt.UTC))
    args = render(weekly, weekly.get_task("profile_delete_opt_outs").arguments, dag_run=same_day,
                  params={"job_date": "2026-03-07"})
    assert _args_after(args, "--run-date") == "2026-03-07"  # never before D


def test_jobs_get_the_allowed_missing_days(gcp_dags):
    weekly = gcp_dags["taar_weekly"]
    args = render(weekly, weekly.get_task("profile_delete_opt_outs").arguments)
    assert _args_after(args, "--allow-missing-days") == "0"


