"""jobs/taar_locale.py (SPEC §8.6) on hand-built clients_daily rows.

Tests that run ``main(argv)`` as far as Spark take the shared ``spark`` fixture, so
the job's ``job_session`` reuses that session instead of starting a second JVM.
"""

import datetime as dt
import logging
import math

import numpy as np
import pytest
from scipy import stats

from jobs import taar_locale as job
from taar import artifacts
from taar.publishing import producer_tag, publish, read_artifact
from taar.recommenders import build_engine
from taar.storage import open_model_store
from tests.fixtures.parquet_builders import addon, client_row, write_tables
from tests.fixtures.spark import py_xxhash

pytestmark = pytest.mark.spark

D = dt.date(2026, 3, 28)  # window of 28 days: [2026-03-01, 2026-03-28]
WHITELIST = ["a@x", "b@x", "c@x"]

ROWS = [
    # c1: an older row in another locale; the latest row (03-20) counts: en-US, a
    client_row("c1", "2026-03-01", locale="de", active_addons=[addon("c@x")]),
    client_row("c1", "2026-03-20", locale="en-US", active_addons=[addon("a@x")]),
    # c2: b is user-disabled -> en-US, a
    client_row("c2", "2026-03-28", locale="en-US", active_addons=[addon("a@x"), addon("b@x", user_disabled=True)]),
    client_row("c3", "2026-03-10", locale="en-US", active_addons=[addon("b@x")]),  # en-US, b
    # c4: z@x is not whitelisted -> de, c
    client_row("c4", "2026-03-05", locale="de", active_addons=[addon("z@x"), addon("c@x")]),
    # c5: system and unsigned add-ons are not eligible -> de, a
    client_row("c5", "2026-03-06", locale="de",
               active_addons=[addon("b@x", is_system=True), addon("c@x", signed_state=0), addon("a@x")]),
    client_row("c6", "2026-03-06", locale="fr", normalized_channel="beta", active_addons=[addon("a@x")]),
    client_row("c7", "2026-03-06", locale="null", active_addons=[addon("a@x")]),
    client_row("c8", "2026-02-28", locale="en-US", active_addons=[addon("c@x")]),  # before the window
    client_row("c9", "2026-03-07", locale="it", active_addons=[]),  # observed locale, no contribution
    client_row("c10", "2026-03-07", locale="pl", app_name="Fennec", active_addons=[addon("a@x")]),
    client_row("c11", "2026-03-29", locale="en-US", active_addons=[addon("c@x")]),  # after D
    client_row(None, "2026-03-07", locale="en-US", active_addons=[addon("c@x")]),
]
# Exact counts: en-US {a: 2, b: 1, c: 0}; de {a: 1, b: 0, c: 1}; it {0, 0, 0}.
EXACT_COUNTS = {("en-US", "a@x"): 2, ("en-US", "b@x"): 1, ("de", "a@x"): 1, ("de", "c@x"): 1}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_tables(tmp_path_factory.mktemp("telemetry"), clients_daily=ROWS)


@pytest.fixture(scope="module")
def daily(spark, source):
    from taar_etl.spark.io import read_table

    # the hand-built rows cover a few days of the 28-day window
    return read_table(spark, source, "clients_daily", list(job.SOURCE_COLUMNS), *job.window(D, 28),
                      allow_missing_days=28)


@pytest.fixture()
def store(tmp_path):
    s = open_model_store(str(tmp_path / "models"))
    publish(s, "whitelist", WHITELIST, D, producer_tag("test"))
    return s


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


# --------------------------------------------------------------------------- Spark transforms


def test_select_clients_keeps_the_latest_row_of_filtered_clients(daily):
    got = sorted((r.client_id, r.locale) for r in job.select_clients(daily).collect())
    assert got == [("c1", "en-US"), ("c2", "en-US"), ("c3", "en-US"), ("c4", "de"), ("c5", "de"), ("c9", "it")]


def test_exact_counts_on_the_hand_built_rows(daily):
    clients = job.select_clients(daily)
    counts = job.locale_addon_counts(job.limited_contributions(clients, WHITELIST, addon_limit=1, seed=42))
    assert counts == EXACT_COUNTS


def test_contribution_limit_keeps_the_m_smallest_seeded_hashes(spark):
    guids = ["a@x", "b@x", "c@x", "d@x"]
    df = spark.createDataFrame([("c1", "en-US", [addon(g) for g in guids])],
                               "client_id string, locale string, active_addons array<struct<"
                               + ",".join(f"{k} {_sql_type(v)}" for k, v in addon("a@x").items()) + ">>")
    by_hash = sorted(guids, key=lambda g: (py_xxhash(7, "c1", g), g))
    for m in (1, 2):
        rows = job.limited_contributions(df, guids, addon_limit=m, seed=7).collect()
        assert sorted(r.addon_id for r in rows) == sorted(by_hash[:m])
    other_seed = {tuple(sorted(r.addon_id for r in job.limited_contributions(df, guids, 2, s).collect()))
                  for s in range(6)}
    assert len(other_seed) > 1  # the seed, not the GUID order, decides


def _sql_type(value):
    return {bool: "boolean", int: "bigint", str: "string"}[type(value)]


def test_build_model_without_noise_is_the_normalised_exact_counts(daily):
    model, stats_ = job.build_locale_model(daily, WHITELIST, seed=1, noise=False, min_locale_clients=1)
    # en-US: n = 3 clients; shifted by min 0 -> 2/3, 1/3, 0. de: 1/2, 1/2 (tie -> GUID order), 0.
    # it: n = 0 < 1 -> dropped.
    assert model == {
        "en-US": [["a@x", pytest.approx(2 / 3)], ["b@x", pytest.approx(1 / 3)], ["c@x", 0.0]],
        "de": [["a@x", 0.5], ["c@x", 0.5], ["b@x", 0.0]],
    }
    # contributions: en-US 2 + 1, de 1 + 1 = 5
    assert stats_["inputs"] == {"clients": 6, "contributions": 5, "locales_observed": 3, "whitelist_size": 3}


def test_min_locale_clients_and_num_addons(daily):
    model, _ = job.build_locale_model(daily, WHITELIST, seed=1, noise=False, min_locale_clients=2.5, num_addons=1)
    assert model == {"en-US": [["a@x", pytest.approx(2 / 3)]]}  # de has 2 clients < 2.5


def test_no_eligible_addon_anywhere_fails(daily):
    with pytest.raises(job.JobFailed, match="eligible whitelisted"):
        job.build_locale_model(daily, ["q@x"], seed=1, noise=False, min_locale_clients=0)


# --------------------------------------------------------------------------- noise (driver side)

KEY = b"k" * 32


def test_noise_key_is_fresh_per_date_and_reproducible_per_rerun():
    grid = job.count_grid(EXACT_COUNTS, ["de", "en-US", "it"], WHITELIST)
    seed_d = job.noise_seed(KEY, D, grid)
    assert seed_d == job.noise_seed(KEY, D, grid.copy())  # a rerun of D on the same input
    others = {job.noise_seed(KEY, D + dt.timedelta(days=1), grid),  # the next date
              job.noise_seed(b"q" * 32, D, grid),  # another secret
              job.noise_seed(KEY, D, grid + np.eye(3))}  # a rerun that saw different input
    assert seed_d not in others and len(others) == 3
    noise = {day: job.add_laplace_noise(grid, 0.4, 1, job.noise_seed(KEY, day, grid)) - grid
             for day in (D, D + dt.timedelta(days=1))}
    assert not np.allclose(noise[D], noise[D + dt.timedelta(days=1)])  # no noise matrix repeats
    # The seed is HMAC-SHA256 over "taar_locale/noise/v1|<date>|<sha256 of the grid>", 256 bits.
    import hashlib
    import hmac
    digest = hashlib.sha256(grid.tobytes() + repr(grid.shape).encode()).hexdigest()
    mac = hmac.new(KEY, f"taar_locale/noise/v1|2026-03-28|{digest}".encode(), hashlib.sha256).digest()
    assert seed_d == int.from_bytes(mac, "big")


def test_noise_key_sources(monkeypatch):
    env_key = "e" * 40
    assert job.resolve_noise_key(None, {job.NOISE_KEY_ENV: env_key}, dev=False) == (env_key.encode(), "env")
    assert job.resolve_noise_key(None, {job.NOISE_KEY_ENV: env_key}, dev=True) == (job.DEV_NOISE_KEY, "dev")
    asked = []
    monkeypatch.setattr(job, "access_secret", lambda name: asked.append(name) or b"s" * 32)
    ref = "sm://projects/p/secrets/taar-locale-noise/versions/3"
    assert job.resolve_noise_key(None, {job.NOISE_KEY_ENV: ref}, dev=False) == (b"s" * 32, "secret-manager")
    assert job.resolve_noise_key(ref, {}, dev=False)[1] == "secret-manager"
    assert asked == ["projects/p/secrets/taar-locale-noise/versions/3"] * 2
    for bad in ({}, {job.NOISE_KEY_ENV: "short"}, {job.NOISE_KEY_ENV: "sm://nonsense"}):
        with pytest.raises(job.UsageError):
            job.resolve_noise_key(None, bad, dev=False)

    def unreachable(name):
        raise PermissionError("403 " + name)

    monkeypatch.setattr(job, "access_secret", unreachable)
    with pytest.raises(job.JobFailed, match="Secret Manager: PermissionError"):
        job.resolve_noise_key(ref, {}, dev=False)


def test_budget_per_28_days_is_basic_composition():
    # ceil(28 / N) release dates in any 28 days, each costing epsilon
    assert job.epsilon_28_days(0.4, 7) == pytest.approx(4 * 0.4)
    assert job.epsilon_28_days(0.4, 10) == pytest.approx(3 * 0.4)
    assert job.epsilon_28_days(0.05, 1) == pytest.approx(28 * 0.05)
    # 2026-03-28 is day 20540 after 1970-01-01 (56 years = 20454 days with 14 leap days, + 31 + 28 + 27),
    # so 20538 days after the anchor Saturday 1970-01-03: 20538 = 7 * 2934 = 14 * 1467, 20538 mod 10 = 8
    assert job.is_release_day(D, 7) and job.is_release_day(D, 14) and not job.is_release_day(D, 10)
    assert not job.is_release_day(D + dt.timedelta(days=1), 7) and job.is_release_day(D + dt.timedelta(days=7), 7)
    assert D.strftime("%a") == "Sat"


def test_laplace_noise_has_scale_m_over_epsilon():
    grid = np.zeros((50, 200))
    for m, eps in ((1, 0.4), (2, 0.4)):
        noise = job.add_laplace_noise(grid, eps, m, seed=3).ravel()
        b = m / eps  # 2.5, then 5.0; Laplace sd = b * sqrt(2)
        assert abs(noise.mean()) < 4 * b * math.sqrt(2) / math.sqrt(noise.size)
        assert noise.std() == pytest.approx(b * math.sqrt(2), rel=0.05)
        assert stats.kstest(noise, stats.laplace(scale=b).cdf).pvalue > 1e-3


def test_noise_is_fixed_by_the_seed():
    grid = np.arange(12.0).reshape(3, 4)
    a, b = job.add_laplace_noise(grid, 0.4, 1, seed=5), job.add_laplace_noise(grid, 0.4, 1, seed=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, job.add_laplace_noise(grid, 0.4, 1, seed=6))
    # row-major draws: cell (i, j) gets draw number 4i + j of PCG64(5)
    draws = np.random.Generator(np.random.PCG64(5)).laplace(0, 2.5, size=12)
    assert np.allclose(a.ravel() - grid.ravel(), draws, rtol=0, atol=1e-12)


def test_noisy_weights_are_unbiased_around_the_exact_ones_over_many_seeds():
    # en-US: 60 clients with a, 20 with b, none with c; a locale "xx" with no client at all.
    locales, guids = ["en-US", "xx"], ["a@x", "b@x", "c@x"]
    grid = job.count_grid({("en-US", "a@x"): 60, ("en-US", "b@x"): 20}, locales, guids)
    w_a, kept_xx = [], 0
    for seed in range(300):
        noisy = job.add_laplace_noise(grid, 0.4, 1, seed)
        model = job.top_addons(noisy, locales, guids, 1, min_locale_clients=40, num_addons=3)
        kept_xx += "xx" in model
        w_a.append(dict(model["en-US"])["a@x"])
    # exact weight of a: 60 / 80 = 0.75; noise sd per cell 2.5*sqrt(2) = 3.5 moves it by a few 0.01
    assert np.mean(w_a) == pytest.approx(0.75, abs=0.02)
    assert 0.005 < np.std(w_a) < 0.06
    # xx: noisy count ~ sum of 3 Laplace(2.5), sd 6.1; 40 is 6.5 sd away
    assert kept_xx == 0


def test_keyed_noisy_model_from_spark_rows(daily):
    keyed = {"seed": 11, "noise_key": KEY, "date": D, "epsilon": 50.0, "min_locale_clients": 1}
    model_a, _ = job.build_locale_model(daily, WHITELIST, **keyed)
    model_b, _ = job.build_locale_model(daily, WHITELIST, **keyed)
    assert model_a == model_b
    # epsilon 50 -> Laplace scale 0.02: the ranking of the exact counts survives, weights move a little
    assert [g for g, _ in model_a["en-US"]] == ["a@x", "b@x", "c@x"]
    assert dict(model_a["en-US"])["a@x"] == pytest.approx(2 / 3, abs=0.05)


# --------------------------------------------------------------------------- the job end to end


def _argv(store, source, *extra, dev_key=True):
    # default --cadence-days 7: D (a Saturday) is a release day; 4 releases x 0.4 = 1.6 per 28 days
    return ["--date", D.isoformat(), "--model-store", store.uri, "--source", source, "--spark-master", "local[2]",
            "--min-locale-clients", "1", "--allow-missing-days", "28", *(["--dev-noise-key"] if dev_key else []), *extra]


def test_main_publishes_a_model_the_service_loads_and_is_idempotent_across_partitionings(spark, tmp_path, source):
    stores = []
    for n in (1, 4):
        s = open_model_store(str(tmp_path / f"models-{n}"))
        publish(s, "whitelist", WHITELIST, D, producer_tag("test"))
        assert job.main(_argv(s, source, "--shuffle-partitions", str(n), "--seed", "9")) == 0
        stores.append(s)
    names = [artifacts.get("locale").name, artifacts.get("locale").dated_name(D),
             "taar/locale/taar_locale_metrics.json.bz2"]
    for name in names:
        assert stores[0].read_bytes(name) == stores[1].read_bytes(name), name

    obj, descriptor = read_artifact(stores[0], "locale")
    assert descriptor.version == "20260328" and set(obj) <= {"en-US", "de", "it"}
    engine = build_engine({"locale": artifacts.normalise("locale", obj)})
    recs = engine.locale.recommend({"locale": "en-US"}, 3)
    assert [g for g, _ in recs] == [g for g, _ in obj["en-US"]]
    sidecar, _ = read_artifact(stores[0], artifacts.metrics_artifact("taar_locale", "taar/locale"))
    assert sidecar["evaluation"] is None and sidecar["seed"] == 9 and sidecar["inputs"]["clients"] == 6
    assert sidecar["outputs"]["privacy"] == {
        "mechanism": "laplace", "key": "hmac-sha256(secret, date, counts)", "key_source": "dev",
        "epsilon_per_release": 0.4, "epsilon_28_days": pytest.approx(1.6)}


def _every_output(store):
    """Every object of a store, bz2 objects also decompressed, as bytes."""
    import bz2

    for name in store.list(""):
        data = store.read_bytes(name)
        yield name, data
        if name.endswith(".bz2"):
            yield name, bz2.decompress(data)
    for path in store.root.rglob("*.meta.json"):
        yield path.name, path.read_bytes()


def test_the_secret_reaches_no_artifact_sidecar_or_log_line(spark, tmp_path, source, capfd, monkeypatch):
    import base64

    secret = "correct-horse-battery-staple-0123456789"
    monkeypatch.setenv(job.NOISE_KEY_ENV, secret)
    runs = []
    for attempt in range(2):  # a rerun of D publishes identical bytes: same key, date and input
        s = open_model_store(str(tmp_path / f"models-{attempt}"))
        publish(s, "whitelist", WHITELIST, D, producer_tag("test"))
        # the largest allowed epsilon (1.0; D is a release day of N = 14, 2 x 1.0 per 28 days) and no
        # locale threshold, so the handful of hand-built clients survive the noise
        assert job.main(_argv(s, source, "--log-level", "DEBUG", "--epsilon", "1.0", "--cadence-days", "14",
                              "--min-locale-clients", "0", dev_key=False)) == 0
        runs.append(s)
    name = artifacts.get("locale").dated_name(D)
    assert runs[0].read_bytes(name) == runs[1].read_bytes(name)
    out = capfd.readouterr()
    forms = [secret.encode(), secret.encode().hex().encode(), base64.b64encode(secret.encode())]
    outputs = [("stdout", out.out.encode()), ("stderr", out.err.encode()),
               *(o for s in runs for o in _every_output(s))]
    assert len(outputs) > 6 and b"locale model built" in outputs[0][1]
    leaks = [(where, form) for where, data in outputs for form in forms if form in data]
    assert leaks == []
    sidecar, _ = read_artifact(runs[0], artifacts.metrics_artifact("taar_locale", "taar/locale"))
    assert sidecar["outputs"]["privacy"]["key_source"] == "env"


def test_off_the_cadence_a_store_is_bootstrapped_once_then_left_alone(spark, store, source, capsys):
    # Sunday D + 1 is not a release day, but nothing is published yet -> one bootstrap release
    sunday, monday = D + dt.timedelta(days=1), D + dt.timedelta(days=2)
    assert job.main(_argv(store, source, "--date", sunday.isoformat(), "--allow-latest-inputs")) == 0
    assert "publishing once (bootstrap)" in capsys.readouterr().out
    assert store.stat(artifacts.get("locale").dated_name(sunday)) is not None
    assert job.main(_argv(store, source, "--date", monday.isoformat(), "--allow-latest-inputs")) == 0
    assert "not a release day" in capsys.readouterr().out
    assert store.stat(artifacts.get("locale").dated_name(monday)) is None
    assert read_artifact(store, "locale")[1].version == "20260329"  # the published model stays


def test_the_development_key_follows_the_deploy_target():
    key = {job.NOISE_KEY_ENV: "k" * 40}
    assert job.wants_dev_key(False, None, {"TAAR_DEPLOY_TARGET": "local"})
    assert not job.wants_dev_key(False, None, {"TAAR_DEPLOY_TARGET": "local", **key})  # a real key wins
    assert not job.wants_dev_key(False, None, {"TAAR_DEPLOY_TARGET": "gcp"})
    assert not job.wants_dev_key(False, None, {})
    assert job.wants_dev_key(True, None, {})
    with pytest.raises(job.UsageError, match="gcp deploy target"):
        job.wants_dev_key(True, None, {"TAAR_DEPLOY_TARGET": "gcp", **key})


@pytest.mark.parametrize("extra, dev_key, env, message", [
    (["--epsilon", "1.5"], True, None, "floor"),
    (["--epsilon", "0.4", "--cadence-days", "1"], True, None, "11.2 per 28 days"),  # 28 x 0.4
    ([], False, None, "no noise key"),
    ([], False, "too-short", "shorter than 32 bytes"),
    (["--no-noise"], False, "x" * 40, "only allowed with --dev-noise-key"),
    (["--noise-key-ref", "x" * 40], False, None, "reference"),
    (["--model-store", "gs://bucket/models"], True, None, "refused for a gs:// model store"),
])
def test_weak_privacy_settings_are_usage_errors(store, source, capsys, monkeypatch, extra, dev_key, env, message):
    monkeypatch.delenv(job.NOISE_KEY_ENV, raising=False)
    monkeypatch.delenv("TAAR_DEPLOY_TARGET", raising=False)
    if env:
        monkeypatch.setenv(job.NOISE_KEY_ENV, env)
    assert job.main(_argv(store, source, *extra, dev_key=dev_key)) == 2
    assert message in capsys.readouterr().out


def test_main_fails_loudly_on_an_empty_window(spark, store, source, capsys):
    # 2026-07-04 is D + 98 days, a Saturday: a release day
    code = job.main(_argv(store, source, "--date", "2026-07-04", "--allow-latest-inputs"))
    assert code == 1
    # every day of [06-07, 07-04] (28 days ending at D) is missing: tolerated (--allow-missing-days 28), but nothing to read
    assert "no partition of clients_daily in [2026-06-07, 2026-07-04]" in capsys.readouterr().out
    assert store.stat(artifacts.get("locale").name) is None


def test_main_fails_without_the_dated_whitelist(tmp_path, source, capsys):
    s = open_model_store(str(tmp_path / "models"))
    publish(s, "whitelist", WHITELIST, D - dt.timedelta(days=1), producer_tag("test"))
    assert job.main(_argv(s, source)) == 1
    assert "whitelist" in capsys.readouterr().out


def test_main_fails_loudly_on_a_write_error(spark, store, source, tmp_path):
    (tmp_path / "models" / "taar").mkdir(parents=True)
    (tmp_path / "models" / "taar" / "locale").write_text("a file where the artifact directory should be")
    assert job.main(_argv(store, source, "--no-noise")) == 1


def test_bad_epsilon_is_a_usage_error(store, source):
    assert job.main(_argv(store, source, "--epsilon", "0")) == 2


def test_runs_as_a_script_with_help():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(job.__file__)
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=script.parent)
    assert done.returncode == 0 and "--date" in done.stdout and "Exit codes" not in done.stderr
