"""End to end: both DAGs on the local target, then the service on what they produced (SPEC §10.5, §12.1).

One module-scoped run generates a few thousand synthetic clients, serves their
catalogue with the fake AMO, and runs ``airflow dags test taar_daily`` then
``taar_weekly`` for D = yesterday UTC (so the service's freshness checks apply
as in production) through :mod:`taar_dev.local_run`, the same code ``make demo``
uses. Job thresholds made for millions of clients are scaled down with the
``taar_local_extra_args`` Variable. The tests then check what was published, the
profile store, the running service (real gunicorn on loopback) and, last, that
rerunning both DAGs for the same date republishes byte-identical artifacts.

Expected values come from the synthetic source read with pyarrow (an independent
path), never from the pipeline's own output.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re

import pytest

from taar import artifacts
from taar.profile import decode_payload, normalise_profile
from taar.publishing import read_artifact
from taar.storage import open_model_store, open_profile_store
from taar_dev.local_run import (
    DAG_IDS,
    DagRunResult,
    Layout,
    LocalAirflow,
    Service,
    ensure_synthetic,
    local_variables,
    partition_exists,
    task_output,
)
from tests.fixtures.emulators import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

CLIENTS = 4000
#: Flags appended to the local job commands: thresholds scaled to CLIENTS clients and 60 curated add-ons.
EXTRA_ARGS = {
    "update_whitelist": "--min-size 20",
    "locale": "--min-locale-clients 20",
    "ensemble": "--sample-rate 1.0",
    # a synthetic client is active ~3 days in 90: one day of co-installations is too thin for TAARlite
    "lite_guidguid": "--days 28",
}
#: Bound on one DAG run: far above a normal run, well below the production retry delays.
DAG_TIMEOUT_S = 1200
#: Jobs writing a metrics sidecar (SPEC §9.3) next to their artifacts.
METRICS_JOBS = {
    "taar_locale": "taar/locale",
    "taar_similarity": "taar/similarity",
    "taar_collaborative": "addon_recommender",
    "taar_item_item": "addon_recommender",
    "taar_lite_guidguid": "taar/lite",
    "taar_ensemble": "taar/ensemble",
}
DATED = re.compile(r"\.(\d{8})\.bz2$")


@dataclasses.dataclass
class Pipeline:
    layout: Layout
    date: dt.date
    airflow: LocalAirflow
    amo_url: str
    runs: dict[str, DagRunResult]

    @property
    def stamp(self) -> str:
        return self.date.strftime("%Y%m%d")

    @property
    def store(self):
        return open_model_store(str(self.layout.models))

    def run(self, dag_id: str) -> DagRunResult:
        log = self.layout.logs / f"{dag_id}-{len(self.runs)}.log"
        result = self.airflow.run_dag(dag_id, self.date, log_path=log, timeout_s=DAG_TIMEOUT_S)
        self.runs[f"{dag_id}#{len(self.runs)}"] = result
        return result


def explain(result: DagRunResult) -> str:
    """The run summary and each failed task's output, for assertion messages."""
    parts = [result.summary()]
    for task_id in result.failed_tasks:
        parts.append(f"--- {task_id} ---\n" + "\n".join(task_output(result.log_path, task_id)))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from taar_dev.fake_amo import FakeAMO
    from taar_dev.synthetic import Params

    layout = Layout.at(tmp_path_factory.mktemp("e2e"))
    date = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    # deletion_rate 0.01: with seed 42 some requests fall on D, whose partition the weekly sensor waits for.
    params = Params(end_date=date, clients=CLIENTS, addons=300, recommended=60, chunk_size=2000,
                    deletion_rate=0.01, seed=42)
    ensure_synthetic(layout, params, workers=1)
    assert partition_exists(layout.telemetry, "deletion_request", date), "no deletion requests on D"
    amo = FakeAMO(layout.amo)
    amo_url = amo.start()
    try:
        airflow = LocalAirflow(layout.airflow_home)
        airflow.prepare(local_variables(layout, amo_url, extra_args=EXTRA_ARGS))
        pipe = Pipeline(layout, date, airflow, amo_url, {})
        for dag_id in DAG_IDS:
            if not pipe.run(dag_id).ok:
                break  # the weekly DAG needs the daily models
        yield pipe
    finally:
        amo.stop()


def first_run(pipeline, dag_id) -> DagRunResult:
    runs = [r for key, r in pipeline.runs.items() if key.startswith(dag_id + "#")]
    if not runs:
        pytest.fail(f"{dag_id} was not run: " + "; ".join(explain(r) for r in pipeline.runs.values()))
    return runs[0]


@pytest.fixture(scope="module")
def succeeded(pipeline):
    """The pipeline, once both DAG runs succeeded (every later test needs that)."""
    for dag_id in DAG_IDS:
        result = first_run(pipeline, dag_id)
        assert result.ok, explain(result)
    return pipeline


# --------------------------------------------------------------------------- the DAG runs


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_dag_run_succeeds_with_every_task(pipeline, dag_id):
    result = first_run(pipeline, dag_id)
    assert result.ok, explain(result)
    states = {t.task_id: t.state for t in result.tasks.values()}
    # the watcher (trigger rule one_failed) is skipped exactly when no task failed
    assert states.pop("watcher") == "skipped", explain(result)
    assert states and set(states.values()) == {"success"}, explain(result)


# --------------------------------------------------------------------------- published artifacts


@pytest.mark.parametrize("key", list(artifacts.CATALOGUE))
def test_artifact_is_published_for_the_date_and_valid(succeeded, key):
    store = succeeded.store
    latest, latest_desc = read_artifact(store, key)
    dated, dated_desc = read_artifact(store, key, date=succeeded.date)
    artifacts.validate(key, latest)
    assert latest_desc.name == artifacts.get(key).name
    assert latest_desc.version == dated_desc.version == succeeded.stamp
    assert latest_desc.sha256 == dated_desc.sha256  # latest is a copy of the dated object
    assert latest == dated


@pytest.mark.parametrize("group", sorted(artifacts.GROUPS))
def test_artifact_groups_are_consistent(succeeded, group):
    members = {key: read_artifact(succeeded.store, key)[0] for key in artifacts.GROUPS[group]}
    artifacts.validate_group(group, members)


@pytest.mark.parametrize("job", sorted(METRICS_JOBS))
def test_metrics_sidecar(succeeded, job):
    sidecar = artifacts.metrics_artifact(job, METRICS_JOBS[job])
    obj, desc = read_artifact(succeeded.store, sidecar, date=succeeded.date)
    artifacts.validate(sidecar.key, obj)
    assert (obj["job"], obj["date"], obj["seed"]) == (job, succeeded.date.isoformat(), 42)
    assert desc.version == succeeded.stamp


def test_ensemble_report(succeeded):
    store = succeeded.store
    prefix = f"taar/ensemble/reports/{succeeded.stamp}/"
    names = set(store.list(prefix))
    assert {prefix + "report.json", prefix + "report.html"} <= names
    assert any(name.endswith(".png") for name in names)


def test_service_artifacts_are_consistent_with_the_whitelist(succeeded):
    whitelist = set(read_artifact(succeeded.store, "whitelist")[0])
    mapping = read_artifact(succeeded.store, "addon_mapping")[0]
    locale = read_artifact(succeeded.store, "locale")[0]
    donors = read_artifact(succeeded.store, "donors")[0]
    item_item = read_artifact(succeeded.store, "item_item")[0]
    # the per-user models are built from curated add-ons only (SPEC §0)
    assert {entry["id"] for entry in mapping.values()} <= whitelist
    assert set(item_item["guids"]) <= whitelist and any(item_item["neighbours"])
    assert {guid for rows in locale.values() for guid, _ in rows} <= whitelist
    assert {guid for donor in donors for guid in donor["active_addons"]} <= whitelist


# --------------------------------------------------------------------------- profiles


def source_profiles(pipeline) -> dict[str, list[str]]:
    """What the profile steps must leave in the store, from the source tables (SPEC §8.5).

    ``clients_last_seen`` at D, client id not null, Firefox, at least one active
    add-on, minus clients with a deletion request in [D − 29, D]: hashed id → the
    add-on ids of the row, in order.
    """
    from taar.hashing import hash_client_id
    from taar_dev.synthetic import read_table

    root, date = pipeline.layout.telemetry, pipeline.date
    deletions = read_table(root, "deletion_request", ["client_id", "submission_date"]).to_pylist()
    start = date - dt.timedelta(days=29)
    deleted = {r["client_id"] for r in deletions if start <= r["submission_date"] <= date}
    seen = read_table(root, "clients_last_seen", ["client_id", "app_name", "active_addons", "submission_date"])
    expected = {}
    for row in seen.to_pylist():
        cid = row["client_id"]
        if row["submission_date"] != date:
            continue
        if cid is None or row["app_name"] != "Firefox" or not row["active_addons"] or cid in deleted:
            continue
        expected[hash_client_id(cid)] = [a["addon_id"] for a in row["active_addons"]]
    return expected


def stored_keys(pipeline) -> set[str]:
    import sqlite3

    with sqlite3.connect(pipeline.layout.profiles) as conn:
        return {row[0] for row in conn.execute("SELECT row_key FROM profiles")}


def test_profile_store_holds_exactly_the_expected_clients(succeeded):
    expected = source_profiles(succeeded)
    assert len(expected) > 1000  # the synthetic data gives thousands of clients with add-ons
    assert stored_keys(succeeded) == set(expected)


def test_stored_profiles_decode_to_their_source_rows(succeeded):
    expected = source_profiles(succeeded)
    store = open_profile_store(succeeded.layout.profile_store)
    for hashed_id in sorted(expected)[:20]:
        payload = decode_payload(store.get(hashed_id, timeout_s=5.0))
        assert payload["client_id"] == hashed_id
        assert [a["addon_id"] for a in payload["active_addons"]] == expected[hashed_id]


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def service(succeeded):
    env = {"TAAR_METRICS_BACKEND": "none", "TAAR_MODEL_REFRESH_SECONDS": "3600",
           "TAAR_VERSION_FILE": str(succeeded.layout.root / "version.json")}
    server = Service(str(succeeded.layout.models), succeeded.layout.profile_store, port=free_port(),
                     workers=1, threads=2, env=env, log_path=succeeded.layout.logs / "service.log")
    with server:
        yield server


@pytest.fixture(scope="module")
def client_with_addons(succeeded):
    """A hashed id from the demo sample whose stored profile has installed add-ons, and those add-ons."""
    store = open_profile_store(succeeded.layout.profile_store)
    sample = (succeeded.layout.telemetry / "_synthetic" / "sample_hashed_ids.txt").read_text().split()
    for hashed_id in sample:
        data = store.get(hashed_id, timeout_s=5.0)
        if data:
            installed = normalise_profile(decode_payload(data), hashed_id)["installed_addons"]
            if installed:
                return hashed_id, installed
    pytest.fail("no sample client has a stored profile with add-ons")


def test_heartbeat_is_ok(service):
    status, body = service.get("/__heartbeat__")
    assert status == 200, body
    assert body["status"] in ("ok", "warning")
    assert {f"models.{key}" for key in artifacts.SERVICE_ARTIFACTS} <= set(body["checks"])


def test_every_service_model_is_loaded_at_the_run_date(service, succeeded):
    status, body = service.get("/__models__")
    assert status == 200
    models = body["models"]
    assert set(models) == set(artifacts.SERVICE_ARTIFACTS)
    assert {m["status"] for m in models.values()} == {"loaded"}
    assert {m["version"] for m in models.values()} == {succeeded.stamp}


def test_recommendations_for_a_known_client(service, succeeded, client_with_addons):
    hashed_id, installed = client_with_addons
    whitelist = set(read_artifact(succeeded.store, "whitelist")[0])
    status, body = service.get(f"/v1/api/recommendations/{hashed_id}/")
    assert status == 200, body
    results = body["results"]
    assert results, "a client with add-ons gets recommendations"
    assert len(results) == len(set(results)) <= 10  # TAAR_MAX_RESULTS default
    assert set(results) <= whitelist
    assert not set(results) & set(installed)


def test_item_item_is_served_and_explained(service, succeeded):
    """The ensemble's fourth member answers in the running service (SPEC §5.8): its contributions show in explain."""
    store = open_profile_store(succeeded.layout.profile_store)
    items = set(read_artifact(succeeded.store, "item_item")[0]["guids"])
    weights = read_artifact(succeeded.store, "ensemble_weights")[0]["ensemble_weights"]
    assert set(weights) == {"collaborative", "similarity", "locale", "item_item"}
    sample = (succeeded.layout.telemetry / "_synthetic" / "sample_hashed_ids.txt").read_text().split()
    asked = 0
    for hashed_id in sample:
        data = store.get(hashed_id, timeout_s=5.0)
        if not data or not set(normalise_profile(decode_payload(data), hashed_id)["installed_addons"]) & items:
            continue
        status, body = service.get(f"/v1/api/recommendations/{hashed_id}/?explain=1")
        assert status == 200, body
        asked += 1
        if any("item_item" in info["sources"] for info in body["result_info"]):
            return
    pytest.fail(f"no item_item contribution in the explained answers of {asked} clients holding an item")


def test_promoted_addons_come_first(service, client_with_addons):
    hashed_id, _ = client_with_addons
    promoted = [["promoted-a@example.com", 1000.0], ["promoted-b@example.com", 999.0]]
    status, body = service.post(f"/v1/api/recommendations/{hashed_id}/", {"options": {"promoted": promoted}})
    assert status == 200, body
    assert body["results"][:2] == ["promoted-a@example.com", "promoted-b@example.com"]
    assert len(body["results"]) > 2


def test_recommendations_for_a_test_id(service, succeeded):
    whitelist = set(read_artifact(succeeded.store, "whitelist")[0])
    status, body = service.get("/v1/api/recommendations/00000000-0000-0000-0000-000000000000/")
    assert status == 200, body
    assert body["results"] and set(body["results"]) <= whitelist


def test_taarlite_answers_exactly_four_or_nothing(service, succeeded):
    import urllib.parse

    ranking = read_artifact(succeeded.store, "ranking")[0]
    coinstall = read_artifact(succeeded.store, "coinstall")[0]
    popular = sorted(ranking, key=lambda g: (-ranking[g], g))[:10]
    full = 0
    for guid in popular:
        status, body = service.get(f"/taarlite/api/v1/addon_recommendations/{urllib.parse.quote(guid, safe='')}/")
        assert status == 200, (guid, body)
        results = body["results"]
        assert len(results) in (0, 4), (guid, results)
        assert guid not in results
        assert set(results) <= set(coinstall)
        full += len(results) == 4
    assert full > 0, "no popular add-on got TAARlite recommendations"


# --------------------------------------------------------------------------- reruns


def dated_objects(store, stamp: str) -> dict[str, tuple[str, str | None]]:
    """Every dated copy of ``stamp`` except the ensemble report: name → (sha256 of bytes, taar-sha256)."""
    out = {}
    for name in store.list(""):
        match = DATED.search(name)
        if match and match.group(1) == stamp and "/reports/" not in name:
            data = store.read_bytes(name)
            out[name] = (hashlib.sha256(data).hexdigest(), store.stat(name).metadata.get("taar-sha256"))
    return out


def test_rerun_of_the_same_date_publishes_identical_artifacts(succeeded):
    store = succeeded.store
    before = dated_objects(store, succeeded.stamp)
    profiles_before = stored_keys(succeeded)
    weights_before = read_artifact(store, "ensemble_weights")[0]
    # every catalogue artifact and every metrics sidecar has its dated copy
    expected = {a.dated_name(succeeded.date) for a in artifacts.CATALOGUE.values()}
    expected |= {artifacts.metrics_artifact(j, p).dated_name(succeeded.date) for j, p in METRICS_JOBS.items()}
    assert expected <= set(before)
    for dag_id in DAG_IDS:
        result = succeeded.run(dag_id)
        assert result.ok, explain(result)
    after = dated_objects(store, succeeded.stamp)
    # The ensemble's sidecar records its decision, which must change: the first run had no weights to
    # compare with and published; the rerun finds its own weights and keeps them (SPEC §8.10 step 8).
    ensemble_sidecar = artifacts.metrics_artifact("taar_ensemble", METRICS_JOBS["taar_ensemble"])
    sidecar = read_artifact(store, ensemble_sidecar, date=succeeded.date)[0]
    assert sidecar["outputs"]["decision"] == "kept"
    assert {"ensemble_weights": sidecar["outputs"]["ensemble_weights"]} == weights_before
    del before[ensemble_sidecar.dated_name(succeeded.date)], after[ensemble_sidecar.dated_name(succeeded.date)]
    assert after == before
    assert all(digest == meta for digest, meta in after.values())  # metadata matches the bytes
    assert stored_keys(succeeded) == profiles_before
