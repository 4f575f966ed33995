"""``taar_weekly``: client profiles and ensemble weights (SPEC §10.3).

Runs on Sundays at 06:00 UTC; the job date is the last day of the data interval.
The profile chain (extract >> load >> delete opt-outs >> cleanup) and the
ensemble are independent: the ensemble waits only for the dated daily models.
"""

import datetime as dt
import os
import sys

from airflow.sdk import DAG, TaskGroup
from airflow.timetables.interval import CronDataIntervalTimetable

# Airflow puts the DAG folder on sys.path in its own processes but not in every loader (DagBag in tests,
# some Composer versions); the factories sit next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taar_dag_utils as u  # noqa: E402

TARGET = u.deploy_target()
D = u.WEEKLY_DATE

if TARGET == "local":
    PROFILE_STORE = u.var("taar_profile_store", "sqlite:///./var/profiles.sqlite3")
else:
    PROFILE_STORE = (
        "bigtable://" + u.var("taar_gcp_project") + "/" + u.var("taar_bigtable_instance") + "/"
        + u.var("taar_bigtable_table", "taar_profile")
    )

with DAG(
    dag_id="taar_weekly",
    description="TAAR weekly: client profiles to the profile store, ensemble weights",
    schedule=CronDataIntervalTimetable("0 6 * * 0", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 4, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=u.dag_params(),
    tags=["taar", TARGET],
) as dag:
    common = u.common_job_args(D)
    profile = [*common, "--profile-store", PROFILE_STORE]

    wait_clients_last_seen = u.partition_sensor(TARGET, "wait_clients_last_seen", "clients_last_seen", D)
    wait_deletion_request = u.partition_sensor(TARGET, "wait_deletion_request", "deletion_request", D)
    wait_daily_models = u.models_sensor(TARGET, "wait_daily_models", D)

    if TARGET == "local":
        profile_extract = u.local_container_job(
            "profile_extract", "taar_profile_bigtable", [*profile, "--steps", "extract"])
        profile_load = u.local_container_job("profile_load", "taar_profile_bigtable", [*profile, "--steps", "load"])
        profile_in = profile_extract
    else:  # extract and load share one Dataproc cluster
        with TaskGroup(group_id="profile") as profile_in:
            create = u.dataproc_create("profile")
            profile_extract = u.dataproc_submit(
                "profile_extract", "profile", "taar_profile_bigtable",
                [*profile, "--steps", "extract", "--engine", "spark"])
            profile_load = u.dataproc_submit(
                "profile_load", "profile", "taar_profile_bigtable", [*profile, "--steps", "load", "--engine", "spark"])
            delete = u.dataproc_delete("profile")
            create >> profile_extract >> profile_load >> delete
    profile_delete_opt_outs = u.container_job(
        TARGET, "profile_delete_opt_outs", "taar_profile_bigtable", [*profile, "--steps", "delete-opt-outs"])
    profile_cleanup = u.container_job(TARGET, "profile_cleanup", "taar_profile_bigtable", [*profile, "--steps", "cleanup"])

    ensemble_in, ensemble = u.spark_job(TARGET, "ensemble", "taar_ensemble", common)

    [wait_clients_last_seen, wait_deletion_request] >> profile_in
    if TARGET == "local":
        profile_extract >> profile_load
    profile_load >> profile_delete_opt_outs >> profile_cleanup
    wait_daily_models >> ensemble_in

    u.attach_watcher(dag)
