"""DAG test fixtures: a DagBag per deploy target, and rendering of task templates with a run context.

DAGs load through Airflow's own bundle-aware DagBag, which puts the DAG folder on
``sys.path`` as the DAG processor and the task runner do, so the DAG files import
their ``taar_dags`` package without editing ``sys.path`` themselves.
"""

import datetime as dt
import types
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


def load_dagbag(target, monkeypatch):
    from airflow.dag_processing.dagbag import BundleDagBag

    if target is None:
        monkeypatch.delenv("TAAR_DEPLOY_TARGET", raising=False)
    else:
        monkeypatch.setenv("TAAR_DEPLOY_TARGET", target)
    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)


@pytest.fixture(params=["local", "gcp"])
def dagbag(request, monkeypatch):
    bag = load_dagbag(request.param, monkeypatch)
    bag.target = request.param
    return bag


@pytest.fixture
def gcp_dags(monkeypatch):
    return load_dagbag("gcp", monkeypatch).dags


@pytest.fixture
def local_dags(monkeypatch):
    return load_dagbag("local", monkeypatch).dags


@pytest.fixture
def taar_dags(monkeypatch):
    """The DAG folder's package, imported the way the DAG files import it."""
    import importlib

    monkeypatch.syspath_prepend(str(DAGS))
    return importlib.import_module("taar_dags")


class Vars(dict):
    """Stands in for the ``var.value`` / ``var.json`` template accessors."""

    def __getattr__(self, name):
        return self[name]


def scheduled_run(logical, start, end, run_id="scheduled__2026-03-07T04:00:00+00:00"):
    return types.SimpleNamespace(logical_date=logical, data_interval_start=start, data_interval_end=end,
                                 run_after=end, run_id=run_id)


def manual_run(run_after, run_id="manual__2026-03-10T09:30:00+00:00"):
    """An Airflow 3 manual run without a logical date: no ``ds``, no data interval."""
    return types.SimpleNamespace(logical_date=None, data_interval_start=None, data_interval_end=None,
                                 run_after=run_after, run_id=run_id)


UTC = dt.UTC
#: The daily run for 2026-03-07 (interval [03-07 04:00, 03-08 04:00)), as the scheduler creates it.
DAILY_RUN = scheduled_run(dt.datetime(2026, 3, 7, 4, tzinfo=UTC), dt.datetime(2026, 3, 7, 4, tzinfo=UTC),
                          dt.datetime(2026, 3, 8, 4, tzinfo=UTC))
#: The weekly run whose interval ends Sunday 2026-03-08 06:00 (job date: Saturday 03-07).
WEEKLY_RUN = scheduled_run(dt.datetime(2026, 3, 1, 6, tzinfo=UTC), dt.datetime(2026, 3, 1, 6, tzinfo=UTC),
                           dt.datetime(2026, 3, 8, 6, tzinfo=UTC), run_id="scheduled__2026-03-01T06:00:00+00:00")


def render(dag, template, **context):
    """Render a template (string, list or dict) with the DAG's Jinja environment and a run context.

    Without ``dag_run`` the context is a scheduled run of the DAG (daily: job date 2026-03-07;
    weekly: 2026-03-07 too). Only the keys a logical date brings are filled when the run has one.
    """
    run = context.pop("dag_run", None) or (WEEKLY_RUN if dag.dag_id == "taar_weekly" else DAILY_RUN)
    ctx = {"params": {"job_date": ""}, "dag_run": run, "run_id": run.run_id,
           "ti": types.SimpleNamespace(try_number=1),
           "var": {"value": Vars(VARIABLES), "json": Vars(JSON_VARIABLES)}}
    if run.logical_date is not None:
        ctx.update(ds=run.logical_date.strftime("%Y-%m-%d"), ds_nodash=run.logical_date.strftime("%Y%m%d"),
                   logical_date=run.logical_date, data_interval_start=run.data_interval_start,
                   data_interval_end=run.data_interval_end)
    ctx.update(context)
    env = dag.get_template_env()
    if isinstance(template, list):
        return [render(dag, t, dag_run=run, **context) for t in template]
    if isinstance(template, dict):
        return {k: render(dag, v, dag_run=run, **context) for k, v in template.items()}
    if not isinstance(template, str):
        return template
    return env.from_string(template).render(**ctx)


BQ_TABLES = {t: f"moz-fx-data-shared-prod.telemetry_derived.{t}_v1"
             for t in ("clients_daily", "clients_last_seen", "addons", "deletion_request")}
VARIABLES = {
    "taar_model_store": "gs://taar-models/prod", "taar_etl_store": "gs://taar-etl", "taar_source": "bq",
    "taar_seed": "42", "taar_artifacts_bucket": "taar-artifacts",
    "taar_dataproc_project": "dp-proj", "taar_dataproc_region": "us-west1",
    "taar_dataproc_subnetwork": "sub", "taar_dataproc_service_account": "sa@x",
    "taar_etl_image": "gcr.io/p/taar-etl", "taar_gke_project": "gke-proj",
    "taar_gke_location": "us-west1", "taar_gke_cluster": "workloads", "taar_gke_namespace": "taar",
    "taar_amo_url": "https://addons.mozilla.org", "taar_gcp_project": "bt-proj", "taar_bq_project": "bq-billing",
    "taar_bq_materialization_dataset": "taar_tmp", "taar_locale_noise_key_secret": "projects/p/secrets/noise",
    "taar_bigtable_instance": "taar-inst", "taar_collaborative_grid": "default",
}
JSON_VARIABLES = {
    "taar_bq_tables": BQ_TABLES,
    "taar_dataproc_cluster_sizes": {"collaborative": {"num_workers": 6, "worker_machine_type": "n2-highmem-16"}},
    "taar_local_extra_args": {},
}
