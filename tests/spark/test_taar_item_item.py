"""jobs/taar_item_item.py and taar_etl.spark.ease (SPEC §8.11): closed form by hand, Gram matrix in Spark,
then whole runs on synthetic data."""

import json
import shutil

import numpy as np
import pytest
from scipy import sparse

from jobs import taar_item_item as job
from taar import artifacts
from taar.codecs import decode
from taar.publishing import read_artifact
from taar.recommenders import build_engine
from taar.storage import open_model_store
from taar_etl.spark import ease, interactions
from tests.fixtures.collaborative_inputs import job_runner, publish_inputs
from tests.fixtures.source_reads import run_with_source_deleted

pytestmark = pytest.mark.spark

# --------------------------------------------------------------------------- closed form (numpy)

# Users: u0 {0, 1}, u1 {0, 1}, u2 {1, 2}.
# G = XᵀX: G00 = 2 (u0, u1), G11 = 3, G22 = 1, G01 = 2, G12 = 1 (u2), G02 = 0.
GRAM = np.array([[2.0, 2.0, 0.0], [2.0, 3.0, 1.0], [0.0, 1.0, 1.0]])
# λ = 1: A = G + I = [[3, 2, 0], [2, 4, 1], [0, 1, 2]], det A = 3·(4·2 − 1·1) − 2·(2·2 − 1·0) = 21 − 8 = 13.
# Cofactors (A symmetric): C00 = 7, C01 = −4, C02 = 2, C11 = 6, C12 = −3, C22 = 8,
# so P = A⁻¹ = [[7, −4, 2], [−4, 6, −3], [2, −3, 8]] / 13 (check: row 0 · col 0 = 21 − 8 + 0 = 13).
# B_ij = −P_ij / P_jj (the 1/13 cancels), B_ii = 0:
#   B01 = 4/6 = 2/3, B02 = −2/8 = −1/4, B10 = 4/7, B12 = 3/8, B20 = −2/7, B21 = 3/6 = 1/2.
EXPECTED_B = np.array([[0.0, 2 / 3, -1 / 4], [4 / 7, 0.0, 3 / 8], [-2 / 7, 1 / 2, 0.0]])


def test_closed_form_on_a_hand_computed_3x3_case():
    assert ease.ease_weights(GRAM, 1.0) == pytest.approx(EXPECTED_B, abs=1e-12)


def test_truncation_keeps_the_strongest_weights_rounded_to_6_digits():
    kept = ease.truncate_rows(EXPECTED_B, top_k=1).toarray()
    # row 0: |2/3| > |−1/4|; row 1: 4/7 = 0.5714 > 3/8; row 2: 1/2 > |−2/7| = 0.2857
    assert kept.tolist() == [[0.0, 0.666667, 0.0], [0.571429, 0.0, 0.0], [0.0, 0.5, 0.0]]


def test_serving_scores_sum_rows_and_leave_unreached_items_out():
    neighbours = ease.truncate_rows(EXPECTED_B, top_k=1)
    train = sparse.csr_matrix(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    scores = ease.neighbour_scorer(neighbours)(train, slice(0, 2))
    # user {0, 2}: row 0 + row 2 reach only item 1: 0.666667 + 0.5; user {1}: row 1 reaches item 0 only
    assert scores[0, 1] == pytest.approx(1.166667) and np.isnan(scores[0, [0, 2]]).all()
    assert scores[1, 0] == pytest.approx(0.571429) and np.isnan(scores[1, [1, 2]]).all()


def test_lambda_grid_parsing():
    assert ease.parse_lambdas("default") == ease.DEFAULT_LAMBDAS
    assert ease.parse_lambdas("10, 100,10") == (10.0, 100.0)
    for bad in ("", "0", "-1", "x", "nan"):
        with pytest.raises(ValueError):
            ease.parse_lambdas(bad)


def test_artifact_layout_passes_the_validator_and_serves():
    neighbours = ease.truncate_rows(EXPECTED_B, top_k=2)
    obj = job.build_artifact(["a@x", "b@x", "c@x"], neighbours, 1.0, 2)
    assert obj["neighbours"][0] == [[1, 0.666667], [2, -0.25]]
    artifacts.validate("item_item", obj)
    rec = build_engine({"item_item": artifacts.normalise("item_item", obj)}).item_item
    # installed a, c: b scores B01 + B21 = 0.666667 + 0.5
    assert rec.recommend({"installed_addons": ["a@x", "c@x"]}, 5) == [("b@x", pytest.approx(1.166667))]


# --------------------------------------------------------------------------- Gram matrix (Spark)

ROWS = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2), (2, 2)]  # u2 lists item 2 twice: counted once


def test_gram_matrix_matches_numpy_on_hand_built_rows(spark):
    train = spark.createDataFrame(ROWS, "user int, item int")
    # the same three users as GRAM above, plus an item (3) nobody has
    expected = np.zeros((4, 4))
    expected[:3, :3] = GRAM
    x = np.zeros((3, 4))
    for u, i in ROWS:
        x[u, i] = 1.0
    assert (ease.gram_matrix(train, 4) == expected).all()
    assert (ease.gram_matrix(train, 4) == x.T @ x).all()


def test_gram_matrix_does_not_depend_on_the_partitioning(spark):
    rng = np.random.Generator(np.random.PCG64(7))
    rows = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 300, 3000), rng.integers(0, 40, 3000),
                                                    strict=True)})
    df = spark.createDataFrame(rows, "user int, item int")
    one = ease.gram_matrix(df.coalesce(1), 40)
    many = ease.gram_matrix(df.repartition(7, "item"), 40)
    assert (one == many).all() and one.sum() > 0
    weights = [ease.fit(g, 25.0, 10).neighbours for g in (one, many)]
    assert (weights[0] != weights[1]).nnz == 0


# --------------------------------------------------------------------------- whole job

SMALL = ["--lambdas", "5,50,500", "--neighbours", "20"]


@pytest.fixture(scope="module")
def inputs(synthetic_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("item_item_inputs") / "models"
    publish_inputs(root, synthetic_small.amo, synthetic_small.end_date)
    return root


run_main, dated_bytes = job_runner(job, SMALL)


@pytest.fixture(scope="module")
def first_run(spark, synthetic_small, inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("item_item_run1")
    models, etl = root / "models", root / "etl"
    shutil.copytree(inputs, models)
    return run_main(synthetic_small, models, etl), models, etl


def test_first_run_publishes_a_model_that_beats_popularity(first_run, synthetic_small):
    code, models, _ = first_run
    assert code == 0
    sidecar = decode(dated_bytes(models, "metrics", synthetic_small.end_date), "x.bz2")
    ev = sidecar["evaluation"]
    assert ev["protocol"] == "leave-last-out" and ev["k"] == 10 and ev["n_users"] > 300
    # the generator's planted clusters make co-installation predictive: clearly above popularity
    assert ev["model"]["ndcg@10"] > ev["baselines"]["popularity"]["ndcg@10"]
    assert ev["model"]["hr@10"] >= ev["baselines"]["popularity"]["hr@10"] + 0.1
    results = sidecar["outputs"]["lambda_results"]
    assert [r["lambda"] for r in results] == [5.0, 50.0, 500.0]
    best = max(results, key=lambda r: (r["validation"]["ndcg@10"], r["validation"]["hr@10"], -r["lambda"]))
    assert sidecar["outputs"]["selected_lambda"] == best["lambda"]
    assert sidecar["inputs"]["test_users"] == ev["n_users"]


def test_artifact_round_trips_into_the_service_recommender(first_run, synthetic_small):
    _, models, _ = first_run
    store = open_model_store(str(models))
    obj, descriptor = read_artifact(store, "item_item")
    assert descriptor.version == f"{synthetic_small.end_date:%Y%m%d}"
    artifacts.validate("item_item", obj)
    whitelist, _ = read_artifact(store, "whitelist")
    assert set(obj["guids"]) <= set(whitelist)
    assert obj["top_k"] == 20 and max(len(r) for r in obj["neighbours"]) <= 20
    rec = build_engine({"item_item": artifacts.normalise("item_item", obj)}).item_item
    installed = obj["guids"][:3]
    recs = rec.recommend({"installed_addons": installed}, 5)
    assert len(recs) == 5 and not {g for g, _ in recs} & set(installed)


def test_rerun_with_other_partitioning_gives_byte_identical_artifacts(first_run, synthetic_small, inputs,
                                                                      tmp_path):
    _, first_models, _ = first_run
    models = tmp_path / "models"
    shutil.copytree(inputs, models)
    assert run_main(synthetic_small, models, tmp_path / "etl", "--shuffle-partitions", "3") == 0
    for key in ("item_item", "metrics"):
        assert dated_bytes(models, key, synthetic_small.end_date) == \
            dated_bytes(first_models, key, synthetic_small.end_date), key


def test_clients_daily_is_read_once(first_run, synthetic_small, inputs, tmp_path, monkeypatch):
    # every Parquet file of clients_daily is deleted as soon as the client items are persisted: a second
    # read of the source would fail the run
    _, first_models, _ = first_run
    models = tmp_path / "models"
    shutil.copytree(inputs, models)
    run_with_source_deleted(monkeypatch, interactions, synthetic_small.telemetry, "clients_daily", tmp_path,
                            lambda source: run_main(synthetic_small, models, tmp_path / "etl", "--source", str(source)))
    for key in ("item_item", "metrics"):
        assert dated_bytes(models, key, synthetic_small.end_date) == \
            dated_bytes(first_models, key, synthetic_small.end_date), key


def shuffled_fit(gram, lam, top_k):
    """A deliberately broken trainer: the real weights, then item columns permuted."""
    fitted = ease.fit(gram, lam, top_k)
    order = np.random.Generator(np.random.PCG64(0)).permutation(gram.shape[0])
    return ease.FittedEase(fitted.lam, fitted.neighbours[:, order].tocsr())


def test_shuffled_model_is_refused_by_the_gate_and_latest_stays(first_run, synthetic_small, tmp_path):
    _, first_models, _ = first_run
    models, etl = tmp_path / "models", tmp_path / "etl"
    shutil.copytree(first_models, models)
    store = open_model_store(str(models))
    name = artifacts.get("item_item").name
    before = (store.read_bytes(name), store.stat(name).generation)

    assert run_main(synthetic_small, models, etl, "--lambdas", "50", fit=shuffled_fit) == 3

    assert (store.read_bytes(name), store.stat(name).generation) == before
    report = json.loads((etl / "reports" / "item_item" / f"{synthetic_small.end_date:%Y%m%d}" / "report.json")
                        .read_text())
    assert report["decision"] == "refused"
    assert report["curves"]["item_item"]["ndcg"][9] < report["curves"]["popularity"]["ndcg"][9]


def test_more_items_than_max_items_is_refused_with_exit_3(synthetic_small, inputs, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(inputs, models)
    assert run_main(synthetic_small, models, tmp_path / "etl", "--max-items", "10") == 3
    assert "exceed --max-items 10" in capsys.readouterr().out
    assert open_model_store(str(models)).stat(artifacts.get("item_item").name) is None


@pytest.mark.parametrize(("flag", "value"), [("--lambdas", "0"), ("--neighbours", "0"), ("--max-items", "0"),
                                             ("--sample-id-max", "101")])
def test_bad_flags_exit_2(synthetic_small, tmp_path, flag, value):
    assert run_main(synthetic_small, tmp_path / "models", tmp_path / "etl", flag, value) == 2


def test_missing_dated_inputs_fail(synthetic_small, tmp_path, capsys):
    assert run_main(synthetic_small, tmp_path / "models", tmp_path / "etl") == 1
    assert "input 'whitelist' for 2026-11-20 is missing" in capsys.readouterr().out
