"""DAG test fixtures: an isolated AIRFLOW_HOME and a DagBag per deploy target."""

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


def load_dagbag(target, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("TAAR_DEPLOY_TARGET", target)
    return DagBag(dag_folder=str(DAGS))


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


class Vars(dict):
    """Stands in for the ``var.value`` / ``var.json`` template accessors."""

    def __getattr__(self, name):
        return self[name]


def render(dag, template, **context):
    """Render a template string with the DAG's Jinja environment and a run context."""
    ctx = {
        "ds": "2026-03-07", "ds_nodash": "20260307", "params": {"job_date": ""},
        "data_interval_end": __import__("datetime").datetime(2026, 3, 8, 6),
        "var": {"value": Vars(VARIABLES), "json": Vars(JSON_VARIABLES)},
    }
    from airflow.sdk.execution_time.macros import ds_add

    ctx["macros"] = type("M", (), {"ds_add": staticmethod(ds_add)})
    ctx.update(context)
    return dag.get_template_env().from_string(template).render(**ctx)


VARIABLES = {
    "taar_model_store": "gs://taar-models/prod", "taar_etl_store": "gs://taar-etl", "taar_source": "bq",
    "taar_seed": "42", "taar_artifacts_bucket": "taar-artifacts", "taar_jobs_ref": "v1.2.3",
    "taar_dataproc_project": "dp-proj", "taar_dataproc_region": "us-west1",
    "taar_dataproc_subnetwork": "sub", "taar_dataproc_service_account": "sa@x",
    "taar_etl_image": "gcr.io/p/taar-etl", "taar_etl_image_tag": "v1.2.3", "taar_gke_project": "gke-proj",
    "taar_gke_location": "us-west1", "taar_gke_cluster": "workloads", "taar_gke_namespace": "taar",
    "taar_amo_url": "https://addons.mozilla.org", "taar_gcp_project": "bt-proj",
    "taar_bigtable_instance": "taar-inst", "taar_collaborative_grid": "default",
}
JSON_VARIABLES = {
    "taar_bq_tables": {t: {"project": "moz-fx-data-shared-prod", "dataset": "telemetry_derived", "table": t + "_v1"}
                       for t in ("clients_daily", "clients_last_seen", "addons", "deletion_request")},
    "taar_dataproc_cluster_sizes": {"collaborative": {"worker_machine_type": "n2-highmem-16"}},
    "taar_local_extra_args": {},
}
