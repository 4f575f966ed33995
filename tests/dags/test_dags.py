"""DAG loading and structure (SPEC §10): edges, operators and key arguments per target."""

import pytest

from tests.fixtures.dags import DAGS, Vars, render

pytestmark = pytest.mark.airflow


def _edges(dag):
    return {t.task_id: sorted(t.downstream_task_ids - {"watcher"}) for t in dag.tasks if t.task_id != "watcher"}


def test_both_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {"taar_daily", "taar_weekly"}


def test_schedules_and_run_settings(dagbag):
    daily, weekly = dagbag.dags["taar_daily"], dagbag.dags["taar_weekly"]
    assert daily.timetable.summary == "0 4 * * *" and weekly.timetable.summary == "0 6 * * 0"
    for dag in (daily, weekly):
        assert dag.catchup is False and dag.max_active_runs == 1
        assert "job_date" in dag.params


def test_watcher_sits_under_every_task_and_fails_on_one_failed(dagbag):
    for dag in dagbag.dags.values():
        watcher = dag.get_task("watcher")
        assert watcher.trigger_rule == "one_failed"
        assert watcher.upstream_task_ids == {t.task_id for t in dag.tasks} - {"watcher"}


LOCAL_DAILY = {
    "amodump": ["amowhitelist", "collaborative", "lite_guidguid"],
    "amowhitelist": [],
    "update_whitelist": ["collaborative", "locale", "similarity"],
    "wait_clients_daily": ["collaborative", "lite_guidguid", "locale"],
    "wait_clients_last_seen": ["similarity"],
    "wait_addons": ["lite_guidranking"],
    "locale": [], "similarity": [], "collaborative": [], "lite_guidguid": [], "lite_guidranking": [],
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
    "amodump": ["amowhitelist", "collaborative.create_cluster", "lite_guidguid.create_cluster"],
    "amowhitelist": [],
    "update_whitelist": ["collaborative.create_cluster", "locale.create_cluster", "similarity.create_cluster"],
    "wait_clients_daily": ["collaborative.create_cluster", "lite_guidguid.create_cluster", "locale.create_cluster"],
    "wait_clients_last_seen": ["similarity.create_cluster"],
    "wait_addons": ["lite_guidranking"],
    "lite_guidranking": [],
    **_spark_group("locale"), **_spark_group("similarity"), **_spark_group("collaborative"),
    **_spark_group("lite_guidguid"),
}
MODELS = ["addon_mapping", "donors", "item_matrix", "locale", "lr_curves", "whitelist"]
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
def test_local_edges(local_dags, dag_id, expected):
    assert _edges(local_dags[dag_id]) == expected


@pytest.mark.parametrize("dag_id, expected", [("taar_daily", GCP_DAILY), ("taar_weekly", GCP_WEEKLY)])
def test_gcp_edges(gcp_dags, dag_id, expected):
    assert _edges(gcp_dags[dag_id]) == expected


def test_gcp_operator_types(gcp_dags):
    types = {t.task_id: type(t).__name__ for dag in gcp_dags.values() for t in dag.tasks}
    assert types["amodump"] == types["profile_cleanup"] == "GKEStartPodOperator"
    assert types["locale.create_cluster"] == "DataprocCreateClusterOperator"
    assert types["collaborative.submit"] == "DataprocSubmitJobOperator"
    assert types["ensemble.delete_cluster"] == "DataprocDeleteClusterOperator"
    assert types["wait_clients_daily"] == "BigQueryTablePartitionExistenceSensor"
    assert types["wait_daily_models.item_matrix"] == "GCSObjectExistenceSensor"


def test_gcp_retries_and_trigger_rules(gcp_dags):
    daily = gcp_dags["taar_daily"]
    for job in ("locale", "similarity", "collaborative", "lite_guidguid"):
        delete = daily.get_task(f"{job}.delete_cluster")
        assert delete.trigger_rule == "all_done" and delete.retries == 3
        submit = daily.get_task(f"{job}.submit")
        assert submit.retries == 2 and submit.retry_exponential_backoff
    sensor = daily.get_task("wait_clients_daily")
    assert sensor.retries == 0 and sensor.mode == "reschedule"
    assert sensor.poke_interval == 600 and sensor.timeout == 6 * 3600


def test_gcp_submit_renders_job_file_and_args(gcp_dags):
    daily = gcp_dags["taar_daily"]
    job = daily.get_task("collaborative.submit").job
    assert render(daily, job["pyspark_job"]["main_python_file_uri"]) == (
        "gs://taar-artifacts/taar/v1.2.3/jobs/taar_collaborative.py")
    args = [render(daily, a) for a in job["pyspark_job"]["args"]]
    assert args[:2] == ["--date", "2026-03-07"]
    assert args[args.index("--model-store") + 1] == "gs://taar-models/prod"
    assert args[args.index("--grid") + 1] == "default"
    assert render(daily, job["placement"]["cluster_name"]) == "taar-collaborative-20260307"
    # the run parameter overrides the computed date
    date_arg = job["pyspark_job"]["args"][1]
    assert render(daily, date_arg, params={"job_date": "2026-01-31"}) == "2026-01-31"


def test_gcp_cluster_config(gcp_dags):
    daily = gcp_dags["taar_daily"]
    create = daily.get_task("collaborative.create_cluster")
    cfg = create.cluster_config
    assert cfg["software_config"]["image_version"].startswith("2.2")  # Spark 3.5
    assert render(daily, cfg["worker_config"]["machine_type_uri"]) == "n2-highmem-16"  # from the Variable
    locale_cfg = daily.get_task("locale.create_cluster").cluster_config
    assert render(daily, locale_cfg["worker_config"]["machine_type_uri"]) == "n2-standard-8"  # default
    assert cfg["lifecycle_config"]["idle_delete_ttl"] and cfg["lifecycle_config"]["auto_delete_ttl"]
    assert "bigquery" in cfg["software_config"]["properties"]["spark:spark.jars"]
    assert render(daily, create.cluster_name) == "taar-collaborative-20260307"


def test_gcp_container_job_image_and_arguments(gcp_dags):
    daily = gcp_dags["taar_daily"]
    pod = daily.get_task("amodump")
    assert render(daily, pod.image) == "gcr.io/p/taar-etl:v1.2.3"
    args = [render(daily, a) for a in pod.arguments]
    assert args[:3] == ["taar_etl.taar_amodump", "--date", "2026-03-07"]
    assert args[args.index("--amo-url") + 1] == "https://addons.mozilla.org"
    assert getattr(pod.on_finish_action, "value", pod.on_finish_action) == "delete_pod"
    assert pod.get_logs is True


def test_gcp_sensors_render_partition_and_objects(gcp_dags):
    daily, weekly = gcp_dags["taar_daily"], gcp_dags["taar_weekly"]
    sensor = daily.get_task("wait_clients_daily")
    assert render(daily, sensor.table_id) == "clients_daily_v1"
    assert render(daily, sensor.partition_id) == "20260307"
    gcs = weekly.get_task("wait_daily_models.item_matrix")
    assert render(weekly, gcs.bucket) == "taar-models"
    # weekly job date = last day of the interval (2026-03-08 06:00 end -> 2026-03-07)
    assert render(weekly, gcs.object) == "prod/addon_recommender/item_matrix.json.20260307.bz2"


def test_weekly_profile_store_is_bigtable_on_gcp(gcp_dags):
    weekly = gcp_dags["taar_weekly"]
    args = [render(weekly, a) for a in weekly.get_task("profile_delete_opt_outs").arguments]
    assert args[args.index("--profile-store") + 1] == "bigtable://bt-proj/taar-inst/taar_profile"
    assert args[args.index("--steps") + 1] == "delete-opt-outs"


def test_local_commands_render_to_job_command_lines(local_dags):
    daily = local_dags["taar_daily"]
    no_vars = {"value": Vars(), "json": Vars({"taar_local_extra_args": {"locale": "--min-locale-clients 5"}})}
    cmd = render(daily, daily.get_task("locale").bash_command, var=no_vars)
    assert "jobs/taar_locale.py --date 2026-03-07 --model-store ./var/models" in cmd
    assert "--spark-master 'local[2]'" in cmd or "--spark-master local[2]" in cmd
    assert cmd.rstrip().endswith("--min-locale-clients 5")


def _utils():
    import importlib
    import sys

    sys.path.insert(0, str(DAGS))
    return importlib.import_module("taar_dag_utils")


def test_local_partition_sensor_callable(tmp_path):
    u = _utils()
    part = tmp_path / "addons" / "submission_date=2026-03-07"
    assert not u.partition_exists(str(tmp_path), "addons", "2026-03-07")
    part.mkdir(parents=True)
    assert not u.partition_exists(str(tmp_path), "addons", "2026-03-07")  # empty directory is not a partition
    (part / "part-0.parquet").write_bytes(b"x")
    assert u.partition_exists(str(tmp_path), "addons", "2026-03-07")


def test_local_models_sensor_needs_every_dated_copy(tmp_path):
    u = _utils()
    names = list(u.DAILY_MODEL_OBJECTS.values())
    for base in names[:-1]:
        (tmp_path / f"{base}.20260307.bz2").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{base}.20260307.bz2").write_bytes(b"x")
    assert not u.dated_models_exist(str(tmp_path), "2026-03-07")
    (tmp_path / f"{names[-1]}.20260307.bz2").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{names[-1]}.20260307.bz2").write_bytes(b"x")
    assert u.dated_models_exist(str(tmp_path), "2026-03-07")


def test_invalid_deploy_target_is_refused(monkeypatch):
    u = _utils()
    monkeypatch.setenv("TAAR_DEPLOY_TARGET", "aws")
    with pytest.raises(ValueError, match="taar_deploy_target"):
        u.deploy_target()
