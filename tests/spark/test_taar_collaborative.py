"""jobs/taar_collaborative.py (SPEC §8.9): hand-built transforms, then whole runs on synthetic data."""

import dataclasses
import datetime as dt
import json
import logging
import shutil

import numpy as np
import pytest

from jobs import taar_collaborative as job
from taar import artifacts
from taar.codecs import decode
from taar.hashing import item_id
from taar.publishing import producer_tag, publish, read_artifact
from taar.recommenders import build_engine
from taar.storage import open_model_store
from taar_etl.cli import ValidationError
from taar_etl.spark import als, interactions
from tests.fixtures.collaborative_inputs import job_runner, publish_inputs
from tests.fixtures.parquet_builders import addon, client_row, write_tables
from tests.fixtures.source_reads import run_with_source_deleted
from tests.fixtures.spark import py_xxhash

pytestmark = pytest.mark.spark

D = dt.date(2026, 3, 31)  # 90-day window: [2026-01-01, 2026-03-31]


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


# --------------------------------------------------------------------------- items


def _amo_record(guid, name=None, webext=True):
    record = {"guid": guid, "default_locale": "en-US", "current_version": {"files": [{"is_webextension": webext}]},
              "first_create_date": "2020-01-01T00:00:00Z"}
    if name:
        record["name"] = {"en-US": name}
    return record


AMO = {g: _amo_record(g, name, webext) for g, name, webext in [
    ("a@x", "Alpha", True), ("b@x", None, True), ("n@x", "Legacy", False), ("d@x", "Delta", True),
    ("Aa", "Aa", True), ("BB", "BB", True),
]}


def test_items_are_whitelisted_amo_webextensions_in_guid_order():
    # "Aa" and "BB" share Java hashCode 2112 (65·31 + 97 = 66·31 + 66): both dropped.
    # n@x is not a webextension, d@x is not whitelisted, z@x is not in AMO.
    items = interactions.catalogue_items(["n@x", "b@x", "Aa", "z@x", "a@x", "BB"], AMO)
    assert items == [interactions.Item("a@x", item_id("a@x"), "Alpha"), interactions.Item("b@x", item_id("b@x"), "Unknown")]


def test_item_id_collision_fails_the_run_on_request():
    assert item_id("Aa") == item_id("BB") == 2112
    with pytest.raises(ValidationError, match="Aa, BB"):
        interactions.catalogue_items(["Aa", "BB", "a@x"], AMO, on_collision="fail")


def test_artifacts_skip_items_without_factors_and_pass_the_group_validator():
    items = [interactions.Item("a@x", 11, "Alpha"), interactions.Item("b@x", 22, "Unknown"), interactions.Item("c@x", 33, "Gamma")]
    factors = np.array([[0.5, -1.0], [0.0, 0.0], [np.float32(0.1), 2.0]])
    models = job.build_artifacts(items, factors, np.array([True, False, True]))
    assert models == {
        "item_matrix": [{"id": 11, "features": [0.5, -1.0]},
                        {"id": 33, "features": [float(np.float32(0.1)), 2.0]}],
        "addon_mapping": {"11": {"id": "a@x", "name": "Alpha", "isWebextension": True},
                          "33": {"id": "c@x", "name": "Gamma", "isWebextension": True}},
    }
    artifacts.validate_group("collaborative", models)


# --------------------------------------------------------------------------- interactions (Spark)

ROWS = [
    client_row("c1", "2026-01-10", active_addons=[addon("c@x")]),  # older row of c1: ignored
    client_row("c1", "2026-03-30", active_addons=[addon("a@x", install_day=100), addon("b@x", install_day=101),
                                                  addon("z@x")]),  # z@x is not an item
    client_row("c2", "2026-03-30", sample_id=60, active_addons=[addon("a@x")]),  # sampled out (60 >= 50)
    client_row("c3", "2026-03-30", normalized_channel="beta", active_addons=[addon("a@x")]),
    client_row("c4", "2026-02-01", active_addons=[addon("a@x", user_disabled=True), addon("b@x", install_day=7)]),
    client_row("c5", "2026-03-31", active_addons=[addon("a@x", install_day=5), addon("a@x", install_day=9)]),
    client_row("c6", "2025-12-31", active_addons=[addon("a@x")]),  # before the window
    client_row("c7", "2026-03-31", active_addons=None),
    client_row("c8", "2026-04-01", active_addons=[addon("a@x")]),  # after D
]
GUIDS = ["a@x", "b@x", "c@x"]


@pytest.fixture(scope="module")
def daily(spark, tmp_path_factory):
    from taar_etl.spark.io import read_table

    root = write_tables(tmp_path_factory.mktemp("telemetry"), clients_daily=ROWS)
    return read_table(spark, root, "clients_daily", list(job.SOURCE_COLUMNS), *job.window(D, 90),
                      allow_missing_days=90)  # a few hand-built days


def test_client_items_of_the_latest_sampled_filtered_rows(daily):
    got = sorted(tuple(r) for r in interactions.client_items(daily, GUIDS, sample_id_max=50)
                 .select("client_id", "guid", "install_day").collect())
    # c1: a (100), b (101) from its latest row; c4: b only (a is disabled); c5: a twice -> latest day 9
    assert got == [("c1", "a@x", 100), ("c1", "b@x", 101), ("c4", "b@x", 7), ("c5", "a@x", 9)]


def test_index_interactions_numbers_clients_and_items_densely(daily):
    pairs = interactions.client_items(daily, GUIDS, sample_id_max=50)
    got = sorted(tuple(r) for r in interactions.index_interactions(pairs, GUIDS, seed=5).collect())
    # clients c1 < c4 < c5 -> users 0, 1, 2; items in GUID order: a@x 0, b@x 1
    h = {c: py_xxhash(5, c) for c in ("c1", "c4", "c5")}
    assert got == [(0, 0, 100, h["c1"]), (0, 1, 101, h["c1"]), (1, 1, 7, h["c4"]), (2, 0, 9, h["c5"])]


# --------------------------------------------------------------------------- whole runs on synthetic data

SMALL = ["--grid", "none", "--rank", "8", "--max-iter", "5"]


@pytest.fixture(scope="module")
def inputs(synthetic_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("collab_inputs") / "models"
    publish_inputs(root, synthetic_small.amo, synthetic_small.end_date)
    return root


run_main, dated_bytes = job_runner(job, SMALL)


@pytest.fixture(scope="module")
def first_run(spark, synthetic_small, inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("collab_run1")
    models, etl = root / "models", root / "etl"
    shutil.copytree(inputs, models)
    code = run_main(synthetic_small, models, etl)
    return code, models, etl


def test_first_run_publishes(first_run):
    assert first_run[0] == 0


def test_planted_structure_beats_popularity_on_the_holdout(first_run, synthetic_small):
    _, models, _ = first_run
    sidecar = decode(dated_bytes(models, "metrics", synthetic_small.end_date), "x.bz2")
    ev = sidecar["evaluation"]
    assert ev["protocol"] == "leave-last-out" and ev["k"] == 10 and ev["n_users"] > 300
    model, popularity = ev["model"], ev["baselines"]["popularity"]
    # the clusters planted by the generator make co-installation predictive: clearly above popularity
    assert model["hr@10"] >= popularity["hr@10"] + 0.1
    assert model["ndcg@10"] > popularity["ndcg@10"]
    assert sidecar["params"]["selected"] == {"rank": 8, "reg_param": 0.1, "alpha": 10.0}
    assert sidecar["inputs"]["test_users"] == ev["n_users"]
    # one configuration: no sample, fitted once on every training user
    assert sidecar["params"]["search"]["sampled"] is False and sidecar["params"]["search"]["fits"] == 1


def test_artifacts_round_trip_into_the_service_recommender(first_run, synthetic_small):
    _, models, _ = first_run
    store = open_model_store(str(models))
    loaded = {}
    for key in ("item_matrix", "addon_mapping"):
        obj, descriptor = read_artifact(store, key)
        assert descriptor.version == f"{synthetic_small.end_date:%Y%m%d}"
        loaded[key] = artifacts.normalise(key, obj)
    artifacts.validate_group("collaborative", loaded)
    whitelist, _ = read_artifact(store, "whitelist")
    mapping = loaded["addon_mapping"]
    assert {v["id"] for v in mapping.values()} <= set(whitelist)
    assert all(len(row["features"]) == 8 for row in loaded["item_matrix"])
    engine = build_engine(loaded)
    installed = [mapping[str(row["id"])]["id"] for row in loaded["item_matrix"][:3]]
    recs = engine.collaborative.recommend({"installed_addons": installed}, 5)
    assert len(recs) == 5
    assert not {g for g, _ in recs} & set(installed)


def test_spark_model_is_archived_in_the_etl_store(first_run, synthetic_small):
    _, _, etl = first_run
    archive = etl / "archive" / "collaborative" / f"{synthetic_small.end_date:%Y%m%d}" / "als_model"
    assert (archive / "metadata").is_dir() and (archive / "itemFactors").is_dir()
    metadata = json.loads(next((archive / "metadata").glob("part-*")).read_text().splitlines()[0])
    assert metadata["class"] == "org.apache.spark.ml.recommendation.ALSModel" and metadata["rank"] == 8


def test_rerun_with_one_partition_gives_byte_identical_artifacts_at_4_blocks(first_run, synthetic_small, inputs,
                                                                              tmp_path):
    # first_run: the session's 4 shuffle partitions and the default --num-blocks 4; here every shuffle of
    # the job (and so the ALS input) has a single partition, at the same 4 blocks
    _, first_models, _ = first_run
    assert job.build_parser().parse_args(["--date", "2026-01-01"]).num_blocks == 4
    models = tmp_path / "models"
    shutil.copytree(inputs, models)
    assert run_main(synthetic_small, models, tmp_path / "etl", "--shuffle-partitions", "1",
                    "--no-archive-model") == 0
    for key in ("item_matrix", "addon_mapping", "metrics"):
        assert dated_bytes(models, key, synthetic_small.end_date) == \
            dated_bytes(first_models, key, synthetic_small.end_date), key


def test_clients_daily_is_read_once(first_run, synthetic_small, inputs, tmp_path, monkeypatch):
    # every Parquet file of clients_daily is deleted as soon as the client items are persisted: a second
    # read of the source (the user ranking, the join, a recomputed cache) would fail the run
    _, first_models, _ = first_run
    models = tmp_path / "models"
    shutil.copytree(inputs, models)
    run_with_source_deleted(monkeypatch, interactions, synthetic_small.telemetry, "clients_daily", tmp_path,
                            lambda source: run_main(synthetic_small, models, tmp_path / "etl", "--source", str(source),
                                                    "--no-archive-model"))
    for key in ("item_matrix", "addon_mapping", "metrics"):
        assert dated_bytes(models, key, synthetic_small.end_date) == \
            dated_bytes(first_models, key, synthetic_small.end_date), key


def test_explicit_grid_selects_on_validation_without_refit(spark, synthetic_small, inputs, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(inputs, models)
    assert run_main(synthetic_small, models, tmp_path / "etl", "--grid", "rank=2,8;alpha=10",
                    "--no-refit-full", "--no-archive-model") == 0
    sidecar = decode(dated_bytes(models, "metrics", synthetic_small.end_date), "x.bz2")
    results = sidecar["params"]["grid_results"]
    assert [r["params"]["rank"] for r in results] == [2, 8]
    best = max(results, key=lambda r: (r["validation"]["ndcg@10"], r["validation"]["hr@10"], -r["params"]["rank"]))
    assert sidecar["params"]["selected"] == best["params"]
    matrix, _ = read_artifact(open_model_store(str(models)), "item_matrix")
    assert {len(row["features"]) for row in matrix} == {best["params"]["rank"]}
    assert not (tmp_path / "etl" / "archive").exists()


def test_grid_search_on_a_user_sample_is_reported_and_the_winner_refitted_on_all(spark, synthetic_small, inputs,
                                                                                tmp_path):
    models = tmp_path / "models"
    shutil.copytree(inputs, models)
    fits = []

    def counting_fit(ratings, params, **kwargs):
        fitted = als.fit_als(ratings, params, **kwargs)
        fits.append((params.rank, ratings.select("user").distinct().count()))
        return fitted

    assert run_main(synthetic_small, models, tmp_path / "etl", "--grid", "rank=2,8;alpha=10", "--search-users", "400",
                    "--no-refit-full", "--no-archive-model", fit=counting_fit) == 0
    sidecar = decode(dated_bytes(models, "metrics", synthetic_small.end_date), "x.bz2")
    search, n_users = sidecar["params"]["search"], sidecar["inputs"]["clients"]
    assert search["sampled"] and search["training_users"] == n_users and search["max_users"] == 400
    # rate = 400 / n_users, rounded to the 10^-6 hash buckets sample_clients compares against
    assert search["rate"] == round(400 / n_users * 1_000_000) / 1_000_000
    assert search["fits"] == 2 and search["sweeps"] == 2 * 5
    assert search["interaction_sweeps"] == search["sample_interactions"] * 2 * 5
    assert search["selected"] == sidecar["params"]["selected"]
    # two fits on the sample (a few hundred users), then the winner once on every training user
    (r1, sampled1), (r2, sampled2), (winner, everyone) = fits
    assert (r1, r2) == (2, 8) and sampled1 == sampled2 < n_users / 2 and everyone == n_users
    assert winner == search["selected"]["rank"]
    matrix, _ = read_artifact(open_model_store(str(models)), "item_matrix")
    assert {len(row["features"]) for row in matrix} == {winner}


def shuffled_fit(*args, **kwargs):
    """A deliberately broken trainer: real ALS, then item factor rows permuted across items."""
    fitted = als.fit_als(*args, **kwargs)
    order = np.random.Generator(np.random.PCG64(0)).permutation(fitted.item_factors.shape[0])
    return dataclasses.replace(fitted, item_factors=fitted.item_factors[order])


def test_broken_model_is_refused_and_latest_stays(first_run, synthetic_small, tmp_path):
    _, first_models, _ = first_run
    models, etl = tmp_path / "models", tmp_path / "etl"
    shutil.copytree(first_models, models)
    store = open_model_store(str(models))
    names = [artifacts.get(k).name for k in ("item_matrix", "addon_mapping")]
    before = {n: (store.read_bytes(n), store.stat(n).generation) for n in names}

    assert run_main(synthetic_small, models, etl, fit=shuffled_fit) == 3

    assert {n: (store.read_bytes(n), store.stat(n).generation) for n in names} == before
    report_dir = etl / "reports" / "collaborative" / f"{synthetic_small.end_date:%Y%m%d}"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["decision"] == "refused"
    curves = report["curves"]
    assert curves["collaborative"]["ndcg"][9] < curves["popularity"]["ndcg"][9]
    assert (report_dir / "report.html").is_file()
    assert not (etl / "archive").exists()


def test_empty_window_fails_loudly_and_publishes_nothing(spark, synthetic_small, tmp_path, capsys):
    models = tmp_path / "models"
    old = dt.date(2020, 1, 1)  # no telemetry in the 90 days ending here
    publish_inputs(models, synthetic_small.amo, old)
    argv = ["--date", old.isoformat(), "--model-store", str(models), "--etl-store", str(tmp_path / "etl"),
            "--source", str(synthetic_small.telemetry), *SMALL]
    assert job.main(argv) == 1
    # the 90 days [2019-10-04, 2020-01-01] are all missing, named oldest first
    assert "missing partitions of clients_daily: 2019-10-04, 2019-10-05, " in capsys.readouterr().out
    assert open_model_store(str(models)).stat(artifacts.get("item_matrix").name) is None


def test_missing_dated_inputs_fail(synthetic_small, tmp_path, capsys):
    assert run_main(synthetic_small, tmp_path / "models", tmp_path / "etl") == 1
    assert "input 'whitelist' for 2026-11-20 is missing" in capsys.readouterr().out


def test_colliding_item_ids_fail_with_exit_3_on_request(synthetic_small, tmp_path, capsys):
    models = tmp_path / "models"
    store = open_model_store(str(models))
    publish(store, "amo_database", {g: AMO[g] for g in ("Aa", "BB")}, synthetic_small.end_date, producer_tag("t"))
    publish(store, "whitelist", ["Aa", "BB"], synthetic_small.end_date, producer_tag("t"))
    assert run_main(synthetic_small, models, tmp_path / "etl", "--on-collision", "fail") == 3
    assert "item id collision between GUIDs (2112: Aa, BB)" in capsys.readouterr().out
    assert run_main(synthetic_small, models, tmp_path / "etl") == 1  # both dropped: no item left
    assert "no item" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value", [("--grid", "rank=x"), ("--eval-k", "0"), ("--sample-id-max", "101"),
                                        ("--num-blocks", "0"), ("--search-users", "0"),
                                        ("--on-collision", "keep")])
def test_bad_flags_exit_2(synthetic_small, tmp_path, flag, value):
    try:
        code = run_main(synthetic_small, tmp_path / "models", tmp_path / "etl", flag, value)
    except SystemExit as exc:  # argparse rejects choices while parsing, with exit status 2
        code = exc.code
    assert code == 2
