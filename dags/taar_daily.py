"""``taar_daily``: AMO catalogue, whitelists and the daily models (SPEC §10.2).

Runs at 04:00 UTC for the previous UTC day (the start of the data interval),
whose telemetry partitions are complete; the run parameter ``job_date`` overrides
it, and a manual run without a logical date uses the UTC day before the run.
Edges mirror data dependencies: no task reads an input its upstream tasks have
not produced for the job date in the same run. The locale model follows its
cadence (Variable ``taar_locale_every_days``, 1 or 7): on other days
``locale_due`` skips it and the previous locale model stays published.

Deploy target (``gcp`` or ``local``): env ``TAAR_DEPLOY_TARGET``; this file does
not load without it. The ``watcher`` fails the run when any task failed. Owner:
the TAAR team; failures are logged and, with env ``TAAR_ALERT_WEBHOOK_URL``,
posted there. See RELEASING.md for Variables, releases and re-runs.
"""

import datetime as dt

from airflow.sdk import DAG
from airflow.timetables.interval import CronDataIntervalTimetable
from taar_dags import common as c
from taar_dags import tasks as t

TARGET = c.deploy_target()
D = c.DAILY_DATE
AMO_URL = c.var("taar_amo_url", "https://addons.mozilla.org")

with DAG(
    dag_id="taar_daily",
    description="TAAR daily: AMO dump, whitelists, locale, similarity, collaborative, item-item, TAARlite",
    schedule=CronDataIntervalTimetable("0 4 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    **c.dag_kwargs(TARGET, "daily", __doc__),
) as dag:
    common = t.common_job_args(D)
    source = t.source_args(TARGET)

    amodump = t.container_job(TARGET, "amodump", "taar_amodump", [*common, "--amo-url", AMO_URL])
    amowhitelist = t.container_job(TARGET, "amowhitelist", "taar_amowhitelist", common)
    update_whitelist = t.container_job(
        TARGET, "update_whitelist", "taar_update_whitelist", [*common, "--amo-url", AMO_URL]
    )
    lite_guidranking = t.container_job(TARGET, "lite_guidranking", "taar_lite_guidranking", [*common, *source])

    wait_clients_daily = t.partition_sensor(TARGET, "wait_clients_daily", "clients_daily", D)
    wait_clients_last_seen = t.partition_sensor(TARGET, "wait_clients_last_seen", "clients_last_seen", D)
    wait_addons = t.partition_sensor(TARGET, "wait_addons", "addons", D)

    locale_in, locale = t.spark_job(TARGET, "locale", "taar_locale", [*common, *source, *t.LOCALE_CADENCE_ARGS], D)
    similarity_in, similarity = t.spark_job(TARGET, "similarity", "taar_similarity", [*common, *source], D)
    collaborative_in, collaborative = t.spark_job(
        TARGET, "collaborative", "taar_collaborative",
        [*common, *source, "--grid", c.var("taar_collaborative_grid", "none" if TARGET == "local" else "default"),
         *t.num_blocks_args(TARGET, "collaborative")], D,
    )
    lite_guidguid_in, lite_guidguid = t.spark_job(TARGET, "lite_guidguid", "taar_lite_guidguid", [*common, *source], D)
    item_item_in, item_item = t.spark_job(TARGET, "item_item", "taar_item_item", [*common, *source], D)

    # the locale cadence: the gate follows the locale task(s) on due days, the watcher every day
    if TARGET == "local":
        locale_gate = t.locale_gate(D, run=["locale"], always=["watcher"])
        locale_gate >> locale
    else:
        locale_gate = t.locale_gate(D, run=["locale.create_cluster", "locale.delete_cluster"], always=["watcher"])
        locale_gate >> [dag.get_task("locale.create_cluster"), dag.get_task("locale.delete_cluster")]

    amodump >> amowhitelist
    [update_whitelist, wait_clients_daily] >> locale_in
    [update_whitelist, wait_clients_last_seen] >> similarity_in
    [update_whitelist, amodump, wait_clients_daily] >> collaborative_in
    [amodump, wait_clients_daily] >> lite_guidguid_in
    [amodump, wait_addons] >> lite_guidranking  # the ranking keeps the GUIDs of amo_database dated D

    [update_whitelist, amodump, wait_clients_daily] >> item_item_in

    c.attach_watcher(dag)
