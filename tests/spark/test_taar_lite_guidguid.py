"""jobs/taar_lite_guidguid.py (SPEC §8.8) on hand-built clients_daily rows.

Tests that run ``main(argv)`` as far as Spark take the shared ``spark`` fixture, so
the job's ``job_session`` reuses that session instead of starting a second JVM.
"""

import datetime as dt
import logging

import pytest

from jobs import taar_lite_guidguid as job
from taar import artifacts
from taar.publishing import producer_tag, publish, read_artifact
from taar.recommenders import build_engine
from taar.storage import open_model_store
from tests.fixtures.parquet_builders import addon, client_row, write_tables
from tests.fixtures.spark import py_xxhash

pytestmark = pytest.mark.spark

D = dt.date(2026, 3, 28)
D1 = D - dt.timedelta(days=1)


def _amo_record(guid, webext=True):
    return {"guid": guid, "first_create_date": "2020-01-01T00:00:00Z",
            "current_version": {"files": [{"is_webextension": webext}]}}


AMO_DB = {g: _amo_record(g) for g in ("a@x", "b@x", "c@x", "d@x")} | {"L@x": _amo_record("L@x", webext=False)}
WEBEXT = {"a@x", "b@x", "c@x", "d@x"}


def _addons(*guids, **flags):
    return [addon(g, **flags) for g in guids]


ROWS = [
    client_row("k1", D, _addons("a@x", "b@x", "c@x")),  # ab ac bc
    client_row("k2", D, _addons("b@x", "a@x")),  # ab
    client_row("k3", D, _addons("a@x", "b@x", "L@x")),  # ab (L is a legacy add-on)
    client_row("k4", D, _addons("a@x", "c@x") + [addon("b@x", user_disabled=True)]),  # ac
    client_row("k5", D, _addons("a@x")),  # one valid add-on: no pair
    client_row("k6", D, _addons("a@x", "b@x", "x@unknown")),  # ab (x is not in AMO)
    client_row("k7", D1, _addons("c@x", "d@x")),  # older row of k7: ignored
    client_row("k7", D, _addons("a@x", "d@x")),  # ad
    client_row("k8", D, _addons("a@x", "b@x"), normalized_channel="beta"),
    client_row("k9", D, _addons("a@x", "a@x", "b@x")),  # ab once
    client_row("k10", D1, _addons("c@x", "d@x")),  # only in a 2-day window: cd
]
# Two-day window counts: ab = k1 k2 k3 k6 k9 = 5; ac = k1 k4 = 2; bc = k1 = 1; ad = k7 = 1; cd = k10 = 1.
ALL_PAIRS = {"a@x": {"b@x": 5, "c@x": 2, "d@x": 1}, "b@x": {"a@x": 5, "c@x": 1},
             "c@x": {"a@x": 2, "b@x": 1, "d@x": 1}, "d@x": {"a@x": 1, "c@x": 1}}


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_tables(tmp_path_factory.mktemp("telemetry"), clients_daily=ROWS)


@pytest.fixture(scope="module")
def source_x10(tmp_path_factory):
    """Every client of ROWS ten times over (ids k1#0..k1#9): each count is 10 x ALL_PAIRS, so the
    job runs with the floor --k-anonymity 10 and keeps every pair."""
    rows = [{**r, "client_id": f"{r['client_id']}#{i}"} for r in ROWS for i in range(10)]
    return write_tables(tmp_path_factory.mktemp("telemetry-x10"), clients_daily=rows)


@pytest.fixture(scope="module")
def daily_2d(spark, source):
    from taar_etl.spark.io import read_table

    return read_table(spark, source, "clients_daily", list(job.SOURCE_COLUMNS), D1, D).cache()


def test_client_addons_are_the_sorted_valid_webextensions(daily_2d):
    got = {r.client_id: list(r.addons) for r in job.client_addons(daily_2d, WEBEXT, seed=1).collect()}
    assert got == {"k1": ["a@x", "b@x", "c@x"], "k2": ["a@x", "b@x"], "k3": ["a@x", "b@x"], "k4": ["a@x", "c@x"],
                   "k6": ["a@x", "b@x"], "k7": ["a@x", "d@x"], "k9": ["a@x", "b@x"], "k10": ["c@x", "d@x"]}


@pytest.mark.parametrize("k, expected", [
    (1, ALL_PAIRS),
    # k = 2 keeps ab (5) and ac (2): bc, ad, cd go in both directions, d's row empties
    (2, {"a@x": {"b@x": 5, "c@x": 2}, "b@x": {"a@x": 5}, "c@x": {"a@x": 2}}),
    (5, {"a@x": {"b@x": 5}, "b@x": {"a@x": 5}}),
])
def test_symmetric_counts_with_the_k_anonymity_cut(daily_2d, k, expected):
    model, stats = job.build_coinstall_model(daily_2d, WEBEXT, seed=1, k_anonymity=k)
    assert model == expected
    assert stats["inputs"]["clients"] == 8 and stats["outputs"]["pairs_counted"] == 5
    artifacts.validate("coinstall", model)


def test_every_pair_suppressed_fails(daily_2d):
    with pytest.raises(job.JobFailed, match="fewer than --k-anonymity 6"):
        job.build_coinstall_model(daily_2d, WEBEXT, seed=1, k_anonymity=6)


def test_min_addons_three_keeps_only_k1(daily_2d):
    model, _ = job.build_coinstall_model(daily_2d, WEBEXT, seed=1, min_addons=3, k_anonymity=1)
    assert model == {"a@x": {"b@x": 1, "c@x": 1}, "b@x": {"a@x": 1, "c@x": 1}, "c@x": {"a@x": 1, "b@x": 1}}


def test_sampling_keeps_exactly_the_hashed_half(daily_2d):
    got = {r.client_id for r in job.client_addons(daily_2d, WEBEXT, seed=4, sample_rate=0.5).collect()}
    eligible = {"k1", "k2", "k3", "k4", "k6", "k7", "k9", "k10"}
    assert got == {c for c in eligible if py_xxhash(4, c) % 1_000_000 < 500_000}


def _argv(store, source, *extra):
    return ["--date", D.isoformat(), "--model-store", store.uri, "--source", source, "--spark-master", "local[2]",
            "--days", "2", "--k-anonymity", "10", *extra]


def _store(path):
    s = open_model_store(str(path))
    publish(s, "amo_database", AMO_DB, D, producer_tag("test"))
    return s


def test_main_publishes_a_loadable_model_identically_across_partitionings(spark, tmp_path, source_x10):
    stores = []
    for n in (1, 4):
        s = _store(tmp_path / f"models-{n}")
        assert job.main(_argv(s, source_x10, "--shuffle-partitions", str(n))) == 0
        stores.append(s)
    art = artifacts.get("coinstall")
    for name in (art.name, art.dated_name(D), "taar/lite/taar_lite_guidguid_metrics.json.bz2"):
        assert stores[0].read_bytes(name) == stores[1].read_bytes(name), name
    obj, _ = read_artifact(stores[0], "coinstall")
    assert obj == {a: {b: 10 * n for b, n in row.items()} for a, row in ALL_PAIRS.items()}
    engine = build_engine({"coinstall": artifacts.normalise("coinstall", obj)})
    assert {g for g, _ in engine.guid_based.recommend("a@x", limit=4)} == {"b@x", "c@x", "d@x"}


def test_main_fails_loudly_on_an_empty_window(spark, tmp_path, source, capsys):
    s = _store(tmp_path / "models")
    assert job.main(_argv(s, source, "--date", "2026-05-01", "--allow-latest-inputs")) == 1
    assert "missing partitions of clients_daily: 2026-04-30, 2026-05-01" in capsys.readouterr().out
    assert s.stat(artifacts.get("coinstall").name) is None


def test_main_without_the_dated_amo_database_fails(tmp_path, source, capsys):
    s = open_model_store(str(tmp_path / "models"))
    publish(s, "amo_database", AMO_DB, D1, producer_tag("test"))
    assert job.main(_argv(s, source)) == 1
    assert "amo_database" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--k-anonymity", "0"), ("--k-anonymity", "9"), ("--min-addons", "1"),
                                         ("--sample-rate", "0")])
def test_bad_parameters_are_usage_errors(tmp_path, source, flag, value):
    assert job.main(_argv(_store(tmp_path / "models"), source, flag, value)) == 2


def test_runs_as_a_script_with_help():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(job.__file__)
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=script.parent)
    assert done.returncode == 0 and "--date" in done.stdout and "Exit codes" not in done.stderr
