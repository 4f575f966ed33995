"""``taar_daily``: AMO catalogue, whitelists and the daily models (SPEC §10.2).

Runs at 04:00 UTC for the previous UTC day (the start of the data interval),
whose telemetry partitions are complete. Edges mirror data dependencies: no task
reads an input its upstream tasks have not produced for the job date in the same
run. The deploy target (``gcp`` or ``local``) is chosen at parse time; see
``taar_dag_utils``.
"""

import datetime as dt
import os
import sys

from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable

# Airflow puts the DAG folder on sys.path in its own processes but not in every loader (DagBag in tests,
# some Composer versions); the factories sit next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taar_dag_utils as u  # noqa: E402

TARGET = u.deploy_target()
D = u.DAILY_DATE
AMO_URL = u.var("taar_amo_url", "https://addons.mozilla.org")

with DAG(
    dag_id="taar_daily",
    description="TAAR daily: AMO dump, whitelists, locale, similarity, collaborative, TAARlite",
    schedule=CronDataIntervalTimetable("0 4 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    params=u.dag_params(),
    tags=["taar", TARGET],
) as dag:
    common = u.common_job_args(D)

    amodump = u.container_job(TARGET, "amodump", "taar_amodump", [*common, "--amo-url", AMO_URL])
    amowhitelist = u.container_job(TARGET, "amowhitelist", "taar_amowhitelist", common)
    update_whitelist = u.container_job(
        TARGET, "update_whitelist", "taar_update_whitelist", [*common, "--amo-url", AMO_URL]
    )
    lite_guidranking = u.container_job(TARGET, "lite_guidranking", "taar_lite_guidranking", common)

    wait_clients_daily = u.partition_sensor(TARGET, "wait_clients_daily", "clients_daily", D)
    wait_clients_last_seen = u.partition_sensor(TARGET, "wait_clients_last_seen", "clients_last_seen", D)
    wait_addons = u.partition_sensor(TARGET, "wait_addons", "addons", D)

    locale_in, locale = u.spark_job(TARGET, "locale", "taar_locale", common)
    similarity_in, similarity = u.spark_job(TARGET, "similarity", "taar_similarity", common)
    collaborative_in, collaborative = u.spark_job(
        TARGET, "collaborative", "taar_collaborative",
        [*common, "--grid", u.var("taar_collaborative_grid", "none" if TARGET == "local" else "default")],
    )
    lite_guidguid_in, lite_guidguid = u.spark_job(TARGET, "lite_guidguid", "taar_lite_guidguid", common)

    amodump >> amowhitelist
    [update_whitelist, wait_clients_daily] >> locale_in
    [update_whitelist, wait_clients_last_seen] >> similarity_in
    [update_whitelist, amodump, wait_clients_daily] >> collaborative_in
    [amodump, wait_clients_daily] >> lite_guidguid_in
    wait_addons >> lite_guidranking

    u.attach_watcher(dag)
