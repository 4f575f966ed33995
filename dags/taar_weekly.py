"""``taar_weekly``: client profiles and ensemble weights (SPEC §10.3).

Runs on Sundays at 06:00 UTC; the job date is the last day of the data interval
(the run parameter ``job_date`` overrides it; a manual run without a logical date
uses the UTC day before the run). The profile chain (extract >> load >> delete
opt-outs >> cleanup) and the ensemble are independent: the ensemble waits only
for the dated daily models. Opt-out deletion and staging cleanup run whatever
happened to extract and load (``all_done``); the ``watcher`` still fails the run.

Deploy target (``gcp`` or ``local``): env ``TAAR_DEPLOY_TARGET``; this file does
not load without it. Failures are logged and, with env ``TAAR_ALERT_WEBHOOK_URL``,
posted there. See RELEASING.md for Variables, releases and re-runs.
"""

import datetime as dt

from airflow.sdk import DAG, TaskGroup
from airflow.timetables.interval import CronDataIntervalTimetable
from taar_dags import common as c
from taar_dags import gcp, local
from taar_dags import tasks as t

TARGET = c.deploy_target()
D = c.WEEKLY_DATE

if TARGET == "local":
    PROFILE_STORE = c.var("taar_profile_store", "sqlite:///./var/profiles.sqlite3")
else:
    PROFILE_STORE = (
        "bigtable://" + c.var("taar_gcp_project") + "/" + c.var("taar_bigtable_instance") + "/"
        + c.var("taar_bigtable_table", "taar_profile")
    )

with DAG(
    dag_id="taar_weekly",
    description="TAAR weekly: client profiles to the profile store, ensemble weights",
    schedule=CronDataIntervalTimetable("0 6 * * 0", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 4, tzinfo=dt.UTC),
    **c.dag_kwargs(TARGET, "weekly", __doc__),
) as dag:
    common = t.common_job_args(D)
    source = t.source_args(TARGET)
    profile = [*common, *source, "--profile-store", PROFILE_STORE, *t.run_date_args()]

    wait_clients_last_seen = t.partition_sensor(TARGET, "wait_clients_last_seen", "clients_last_seen", D)
    wait_deletion_request = t.partition_sensor(TARGET, "wait_deletion_request", "deletion_request", D)
    wait_daily_models = t.models_sensor(TARGET, "wait_daily_models", t.weekly_model_objects(TARGET, D))

    if TARGET == "local":
        profile_extract = local.container_job(
            "profile_extract", "taar_profile_bigtable", [*profile, "--steps", "extract"])
        profile_load = local.container_job("profile_load", "taar_profile_bigtable", [*profile, "--steps", "load"])
        profile_extract >> profile_load
        profile_in = profile_extract
    else:  # extract and load share one Dataproc cluster
        with TaskGroup(group_id="profile") as profile_in:
            create = gcp.dataproc_create("profile", D)
            profile_extract = gcp.dataproc_submit(
                "profile_extract", "profile", "taar_profile_bigtable",
                [*profile, "--steps", "extract", "--engine", "spark"], D)
            profile_load = gcp.dataproc_submit(
                "profile_load", "profile", "taar_profile_bigtable",
                [*profile, "--steps", "load", "--engine", "spark"], D)
            delete = gcp.dataproc_delete("profile", D)
            create >> profile_extract >> profile_load >> delete
    # issue 12: deletion and cleanup run whatever happened to extract and load
    profile_delete_opt_outs = t.container_job(
        TARGET, "profile_delete_opt_outs", "taar_profile_bigtable",
        [*profile, "--steps", "delete-opt-outs"], **t.all_done())
    profile_cleanup = t.container_job(
        TARGET, "profile_cleanup", "taar_profile_bigtable", [*profile, "--steps", "cleanup"], **t.all_done())

    ensemble_in, ensemble = t.spark_job(TARGET, "ensemble", "taar_ensemble", [*common, *source], D)

    [wait_clients_last_seen, wait_deletion_request] >> profile_in
    profile_load >> profile_delete_opt_outs >> profile_cleanup
    wait_daily_models >> ensemble_in

    c.attach_watcher(dag)
