"""jobs/taar_ensemble.py end to end on synthetic telemetry (SPEC §8.10, §9.2, §13 Q2).

The models the ensemble evaluates are built once per run from ``synthetic_small``
(:mod:`tests.fixtures.synthetic_models`: small numpy versions of the daily jobs carrying the
planted clusters, locales and popularity) and published into a base store; each
scenario copies that store and runs the job's ``main(argv)`` on the shared
``local[2]`` session.
"""

import datetime as dt
import io
import json
import shutil
from pathlib import Path

import pytest

from jobs import taar_ensemble
from taar import artifacts, codecs
from taar.publishing import producer_tag, publish, read_artifact
from taar.recommenders import ENSEMBLE_MEMBERS
from taar.storage import open_model_store
from tests.fixtures.source_reads import run_with_source_deleted
from tests.fixtures.synthetic_models import broken_models, build_models, publish_models

pytestmark = pytest.mark.spark

K = 10
COMPONENTS = ENSEMBLE_MEMBERS


@pytest.fixture(scope="session")
def ensemble_models(synthetic_small):
    """The daily models built from the synthetic data (plain objects, not yet published)."""
    return build_models(synthetic_small.telemetry, synthetic_small.amo, synthetic_small.end_date)


@pytest.fixture(scope="session")
def base_store(ensemble_models, synthetic_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble_base") / "models"
    publish_models(open_model_store(str(root)), ensemble_models, synthetic_small.end_date)
    return root


def run_job(synthetic_small, models_dir, etl_dir, *extra):
    argv = ["--date", synthetic_small.end_date.isoformat(), "--model-store", str(models_dir),
            "--etl-store", str(etl_dir), "--source", str(synthetic_small.telemetry),
            "--spark-master", "local[2]", "--sample-rate", "1.0", "--seed", "42", *extra]
    return taar_ensemble.main(argv)


def report_dir(store_root, date):
    return Path(store_root) / "taar" / "ensemble" / "reports" / f"{date:%Y%m%d}"


def load_report(store_root, date):
    return json.loads((report_dir(store_root, date) / "report.json").read_text())


@pytest.fixture(scope="module")
def first_run(spark, base_store, synthetic_small, tmp_path_factory):
    """One run on fresh models with no published weights: (exit code, model store root, report)."""
    root = tmp_path_factory.mktemp("ensemble_first")
    shutil.copytree(base_store, root / "models")
    code = run_job(synthetic_small, root / "models", root / "etl")
    return code, root / "models", load_report(root / "models", synthetic_small.end_date)


def test_learned_weights_beat_every_component_and_popularity(first_run):
    code, _, report = first_run
    assert code == 0 and report["decision"] == "published"
    val = report["metrics"]["validation"]
    new = val["ensemble (new)"][f"hr@{K}"]
    for method in (*COMPONENTS, "popularity"):
        assert new > val[method][f"hr@{K}"], method
    assert val["ensemble (new)"]["n_users"] == report["counts"]["validation"] > 100


def test_published_weights_are_finite_non_negative_and_match_the_report(first_run):
    _, store_root, report = first_run
    weights = report["weights"]["new"]
    assert set(weights) == set(COMPONENTS)
    assert all(0.0 <= w <= 1.0 for w in weights.values()) and max(weights.values()) == 1.0
    obj, descriptor = read_artifact(open_model_store(str(store_root)), "ensemble_weights")
    assert obj == {"ensemble_weights": weights}
    assert descriptor.version == report["date"].replace("-", "")
    # the search weights lie on the simplex and give the published ones after σ scaling
    search = report["search"]["weights"]
    assert sum(search.values()) == pytest.approx(1.0)
    scaled = {r: search[r] / report["scales"][r] for r in COMPONENTS}
    assert {r: v / max(scaled.values()) for r, v in scaled.items()} == pytest.approx(weights)


def test_metrics_sidecar_carries_the_validation_metrics(first_run):
    _, store_root, report = first_run
    data = (store_root / "taar" / "ensemble" / "taar_ensemble_metrics.json.bz2").read_bytes()
    sidecar = codecs.decode(data, "x.bz2")
    evaluation = sidecar["evaluation"]
    assert sidecar["job"] == "taar_ensemble" and evaluation["protocol"] == "leave-last-out"
    assert evaluation["n_users"] == report["counts"]["validation"]
    assert evaluation["model"][f"hr@{K}"] == report["metrics"]["validation"]["ensemble (new)"][f"hr@{K}"]
    assert evaluation["baselines"]["popularity"][f"ndcg@{K}"] == \
        report["metrics"]["validation"]["popularity"][f"ndcg@{K}"]


def test_report_renders_the_measured_numbers(first_run, synthetic_small):
    import matplotlib.image as mpimg

    _, store_root, report = first_run
    folder = report_dir(store_root, synthetic_small.end_date)
    page = (folder / "report.html").read_text()
    for chart in report["charts"].values():
        png = (folder / chart["file"]).read_bytes()
        assert png.startswith(b"\x89PNG") and mpimg.imread(io.BytesIO(png), format="png").size > 0
        assert f'href="{chart["file"]}"' in page
    hr_chart = report["charts"]["hr_at_k"]
    assert hr_chart["x"] == list(range(1, 21))  # k = 1..20
    assert hr_chart["series"]["ensemble (new)"][K - 1] == report["metrics"]["validation"]["ensemble (new)"][f"hr@{K}"]
    assert set(hr_chart["series"]) == {"ensemble (new)", "ensemble (current)", *COMPONENTS, "popularity"}
    new_hr = report["metrics"]["validation"]["ensemble (new)"][f"hr@{K}"]
    assert f"<td>{new_hr:.4f}</td>" in page


def test_same_seed_gives_the_same_weights_and_keeps_them(first_run, synthetic_small, tmp_path):
    """A rerun (other partitioning) learns identical weights; no gain over them -> kept, exit 0."""
    code, store_root, first = first_run
    copy = tmp_path / "models"
    shutil.copytree(store_root, copy)
    assert run_job(synthetic_small, copy, tmp_path / "etl", "--shuffle-partitions", "3") == 0
    second = load_report(copy, synthetic_small.end_date)
    assert second["search"] == first["search"]
    assert second["weights"]["new"] == first["weights"]["new"]
    assert second["weights"]["current"] == first["weights"]["new"]
    assert second["decision"] == "kept"
    obj, descriptor = read_artifact(open_model_store(str(copy)), "ensemble_weights")
    assert obj == {"ensemble_weights": first["weights"]["new"]}  # re-published unchanged under D
    assert descriptor.version == f"{synthetic_small.end_date:%Y%m%d}"


def test_clients_last_seen_is_read_once(first_run, base_store, synthetic_small, tmp_path, monkeypatch):
    # every Parquet file of clients_last_seen is deleted as soon as the slim client frame is persisted: the
    # counts and the scoring must both come from it, a second read of the source would fail the run
    _, first_models, first = first_run
    shutil.copytree(base_store, tmp_path / "models")
    run_with_source_deleted(monkeypatch, taar_ensemble, synthetic_small.telemetry, "clients_last_seen", tmp_path,
                            lambda source: run_job(synthetic_small, tmp_path / "models", tmp_path / "etl",
                                                   "--source", str(source)))
    report = load_report(tmp_path / "models", synthetic_small.end_date)
    for key in ("counts", "search", "weights", "metrics", "decision"):
        assert report[key] == first[key], key
    name = artifacts.get("ensemble_weights").dated_name(synthetic_small.end_date)
    assert open_model_store(str(tmp_path / "models")).read_bytes(name) == \
        open_model_store(str(first_models)).read_bytes(name)


def test_broken_models_are_refused_and_latest_weights_stay(spark, ensemble_models, synthetic_small, tmp_path):
    """Scrambled models score below popularity: exit 3, the latest weights untouched, report kept."""
    date = synthetic_small.end_date
    store = open_model_store(str(tmp_path / "models"))
    previous = {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 0.25}}
    publish(store, "ensemble_weights", previous, date - dt.timedelta(days=7), producer_tag("test"))
    latest = "taar/ensemble/ensemble_weight.json.bz2"
    before = (store.read_bytes(latest), store.stat(latest).metadata)
    publish_models(store, broken_models(ensemble_models), date)

    assert run_job(synthetic_small, tmp_path / "models", tmp_path / "etl") == 3
    assert (store.read_bytes(latest), store.stat(latest).metadata) == before
    assert store.stat(f"taar/ensemble/ensemble_weight.json.{date:%Y%m%d}.bz2") is None
    assert store.stat("taar/ensemble/taar_ensemble_metrics.json.bz2") is None
    refused = json.loads((tmp_path / "etl" / "reports" / "taar_ensemble" / f"{date:%Y%m%d}" / "report.json")
                         .read_text())
    val = refused["metrics"]["validation"]
    assert refused["decision"] == "refused"
    assert val["ensemble (new)"][f"hr@{K}"] < val["popularity"][f"hr@{K}"]
    assert refused["weights"]["published"] is None


def test_a_collaborative_pair_from_two_dates_is_refused(base_store, synthetic_small, tmp_path, capsys):
    shutil.copytree(base_store, tmp_path / "models")
    store = open_model_store(str(tmp_path / "models"))
    name = "addon_recommender/addon_mapping.json.bz2"
    info = store.stat(name)
    store.write_bytes(name, store.read_bytes(name), {**info.metadata, "taar-date": "20261113"})  # same bytes
    assert run_job(synthetic_small, tmp_path / "models", tmp_path / "etl") == 1
    assert "item_matrix 20261120, addon_mapping 20261113" in capsys.readouterr().out
    assert store.stat("taar/ensemble/ensemble_weight.json.bz2") is None


def test_missing_models_fail_with_exit_1(synthetic_small, tmp_path):
    assert run_job(synthetic_small, tmp_path / "empty", tmp_path / "etl") == 1


@pytest.mark.parametrize("flag, value", [("--sample-rate", "0"), ("--validation-fraction", "1"), ("--k", "0"),
                                         ("--min-improvement", "-0.1")])
def test_bad_flags_exit_2(synthetic_small, tmp_path, flag, value):
    assert run_job(synthetic_small, tmp_path / "models", tmp_path / "etl", flag, value) == 2
