"""jobs/taar_similarity.py (SPEC §8.7): candidates, clustering, donor quotas and selection, LR curves.

Tests that run ``main(argv)`` as far as Spark take the shared ``spark`` fixture, so
the job's ``job_session`` reuses that session instead of starting a second JVM.
"""

import datetime as dt
import hashlib
import logging
import math
from collections import Counter

import numpy as np
import pytest

from jobs import taar_similarity as job
from taar import artifacts
from taar.publishing import producer_tag, publish, read_artifact
from taar.recommenders import build_engine
from taar.storage import open_model_store
from tests.fixtures.parquet_builders import addon, client_row, write_tables
from tests.fixtures.spark import py_xxhash

pytestmark = pytest.mark.spark

D = dt.date(2026, 3, 28)
WHITELIST = ["a@x", "b@x", "c@x", "d@x", "e@x", "f@x", "g@x", "h@x"]
C0 = 1 / (0.35 * math.sqrt(2 * math.pi))  # Gaussian kernel peak for h = 0.35: 1.139835...


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _last_seen(spark, tmp_path, rows):
    from taar_etl.spark.io import read_table

    root = write_tables(tmp_path, clients_last_seen=rows)
    return read_table(spark, root, "clients_last_seen", list(job.SOURCE_COLUMNS), D, D)


def _addons(*guids, **flags):
    return [addon(g, **flags) for g in guids]


# --------------------------------------------------------------------------- candidates


def test_select_candidates_keeps_clients_with_enough_valid_addons(spark, tmp_path):
    rows = [
        client_row("s1", D, _addons("c@x", "a@x", "b@x"), city="Berlin", subsession_hours_sum=1.5,
                   places_bookmarks_count_mean=10.4,
                   scalar_parent_browser_engagement_unique_domains_count_mean=5.5),
        client_row("s2", D, _addons("a@x", "b@x", "z@x")),  # z not curated: 2 valid
        client_row("s3", D, _addons("a@x", "b@x", "a@x") + [addon("c@x", signed_state=None)]),  # a twice
        client_row("s4", D, _addons("a@x", "b@x", "c@x", "d@x", "e@x")),  # 5 raw add-ons > max 4
        client_row("s5", D, _addons("a@x", "b@x", "c@x"), normalized_channel="beta"),
        client_row("s6", D, _addons("a@x", "b@x") + [addon("c@x", foreign_install=True)]),
        client_row("s7", D, None),
    ]
    got = job.select_candidates(_last_seen(spark, tmp_path, rows), WHITELIST, min_addons=3, max_raw_addons=4)
    by_id = {r.client_id: r for r in got.collect()}
    assert set(by_id) == {"s1", "s3"}
    assert list(by_id["s1"].valid_addons) == ["a@x", "b@x", "c@x"]
    assert list(by_id["s3"].valid_addons) == ["a@x", "b@x", "c@x"]
    p = by_id["s1"].payload
    # 1.5 h = 5400 s; round(10.4) = 10; round(5.5) = 6 (half away from zero)
    assert (p.geo_city, p.subsession_length, p.bookmark_count, p.unique_tlds) == ("Berlin", 5400, 10, 6)
    assert p.client_id == hashlib.sha256(b"s1").hexdigest()


# --------------------------------------------------------------------------- clustering and donors


def test_clustering_separates_disjoint_addon_sets(spark, tmp_path):
    rows = [client_row(f"A{i}", D, _addons("a@x", "b@x", "c@x")) for i in range(6)]
    rows += [client_row(f"B{i}", D, _addons("d@x", "e@x", "f@x", "g@x")) for i in range(6)]
    candidates = job.select_candidates(_last_seen(spark, tmp_path, rows), WHITELIST)
    clusters = {r.client_id: r.cluster for r in job.cluster_clients(candidates, 2, seed=1).collect()}
    a_side = {clusters[f"A{i}"] for i in range(6)}
    b_side = {clusters[f"B{i}"] for i in range(6)}
    assert len(a_side) == 1 and len(b_side) == 1 and a_side != b_side


@pytest.mark.parametrize("sizes, n, expected", [
    ({0: 50, 1: 30, 2: 20}, 10, {0: 5, 1: 3, 2: 2}),  # exact shares
    ({0: 7, 1: 7, 2: 6}, 10, {0: 4, 1: 3, 2: 3}),  # 3.5, 3.5, 3.0 -> floors 9, tie on .5 -> cluster 0
    ({0: 1, 1: 1, 2: 98}, 10, {0: 0, 1: 0, 2: 10}),  # 0.1, 0.1, 9.8 -> the leftover goes to 2
    ({2: 3, 0: 2}, 10, {0: 2, 2: 3}),  # fewer clients than donors: everyone
    ({0: 0, 1: 5}, 3, {1: 3}),
])
def test_donor_quotas_largest_remainder(sizes, n, expected):
    assert job.donor_quotas(sizes, n) == expected


def test_donor_quotas_are_exact_and_within_one_of_the_proportional_share():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = {c: int(s) for c, s in enumerate(rng.integers(0, 5000, size=rng.integers(2, 25)))}
        total = sum(sizes.values())
        n = int(rng.integers(100, 2000))
        quotas = job.donor_quotas(sizes, n)
        assert sum(quotas.values()) == min(n, total)
        for c, q in quotas.items():
            assert q <= sizes[c]
            if total > n:
                assert abs(q - n * sizes[c] / total) < 1  # not quadratic, not skewed


def test_select_donors_takes_the_smallest_seeded_hashes_per_cluster(spark):
    ids = [f"client-{i}" for i in range(12)]
    df = spark.createDataFrame([(c, i % 3) for i, c in enumerate(ids)], "client_id string, cluster int")
    expected = set()
    for cluster, quota in ((0, 2), (1, 1)):
        members = [c for i, c in enumerate(ids) if i % 3 == cluster]
        expected |= set(sorted(members, key=lambda c: (py_xxhash(5, c), c))[:quota])
    # the per-partition pre-selection must not change the pick, however the rows are spread
    for partitions in (1, 5):
        got = job.select_donors(df.repartition(partitions), {0: 2, 1: 1, 2: 0}, seed=5).collect()
        assert {r.client_id for r in got} == expected and len(got) == 3


# --------------------------------------------------------------------------- LR curves (pure)


def _donor(city, locale, os_, x, addons=("a@x",)):
    d = dict(zip(("subsession_length", "bookmark_count", "tab_open_count", "total_uri", "unique_tlds"),
                 [x] * 5, strict=True))
    d.update(geo_city=city, locale=locale, os=os_, active_addons=list(addons))
    return d


def test_donor_pairs_intra_and_inter_counts():
    clusters = np.array([0, 0, 0, 0, 1, 1, 2])
    intra, inter = job.donor_pairs(clusters, seed=3)
    # intra: 4 // 2 + 2 // 2 = 3 pairs (the singleton cluster 2 has none);
    # inter: cluster 0 min(4, 3) = 3, cluster 1 min(2, 5) = 2 -> 5
    assert intra.shape == (3, 2) and inter.shape == (5, 2)
    assert all(clusters[a] == clusters[b] for a, b in intra)
    assert all(clusters[a] != clusters[b] for a, b in inter)
    assert len(set(intra.ravel())) == 6  # no donor in two intra pairs
    again_intra, again_inter = job.donor_pairs(clusters, seed=3)
    assert np.array_equal(intra, again_intra) and np.array_equal(inter, again_inter)


def test_gaussian_kde_values():
    # one sample at 0, h = 1: 1/sqrt(2 pi) = 0.398942 at 0 and 0.398942 * e^-0.5 = 0.241971 at 1
    assert job.gaussian_kde([0.0, 1.0], [0.0], 1.0) == pytest.approx([0.398942, 0.241971], abs=1e-6)
    # samples 0 and 2 at x = 1: 2 * e^-0.5 / (2 sqrt(2 pi)) = 0.241971
    assert job.gaussian_kde([1.0], [0.0, 2.0], 1.0) == pytest.approx([0.241971], abs=1e-6)


def test_lr_curves_of_two_well_separated_clusters():
    donors = [_donor(f"city{i}", "de", "Linux", 1) for i in range(4)]
    donors += [_donor(f"city{i}", "fr", "Windows_NT", 3) for i in range(4, 8)]
    clusters = np.array([0] * 4 + [1] * 4)
    xd, cd = job.donor_features(donors)
    intra_pairs, inter_pairs = job.donor_pairs(clusters, seed=1)
    intra, inter = job.pair_distances(xd, cd, intra_pairs), job.pair_distances(xd, cd, inter_pairs)
    # intra: same features except the city -> (0 + 0.001) * 1/3
    assert intra == pytest.approx([0.001 / 3] * 4)
    # inter: canberra 5 * |1 - 3| / (1 + 3) = 2.5, all three categorical differ -> 2.501
    assert inter == pytest.approx([2.501] * 8)
    curve = job.lr_curves(intra, inter, bandwidth=0.35, num_points=1000)
    xs = [p[0] for p in curve]
    num = np.array([p[1][0] for p in curve])
    den = np.array([p[1][1] for p in curve])
    assert len(curve) == 1000 and xs[0] == pytest.approx(0.001 / 3) and xs[-1] == pytest.approx(2.501)
    assert all(b > a for a, b in zip(xs, xs[1:], strict=False))
    assert num[0] == pytest.approx(C0) and den[-1] == pytest.approx(C0)
    # exp(-(2.501 - 1/3000)^2 / (2 * 0.35^2)) = exp(-25.52) ~ 8e-12 at the far ends, same value by symmetry
    assert num[-1] == pytest.approx(den[0], rel=1e-9) and num[-1] < 1e-10
    assert np.all(np.diff(num) < 0) and np.all(np.diff(den) > 0)  # LR falls with distance
    artifacts.validate("lr_curves", curve)


def test_lr_curves_widen_a_degenerate_range():
    curve = job.lr_curves(np.array([0.5, 0.5]), np.array([0.5]), bandwidth=0.35, num_points=5)
    assert [p[0] for p in curve] == pytest.approx([-0.5, 0.0, 0.5, 1.0, 1.5])
    assert curve[2][1] == pytest.approx([C0, C0])  # both KDEs peak at the shared distance


def test_lr_curves_without_inter_pairs_fail():
    with pytest.raises(job.JobFailed, match="intra and inter"):
        job.lr_curves(np.array([0.1]), np.array([]))


# --------------------------------------------------------------------------- the whole transform and the job


def _three_groups():
    """24 clients: three add-on groups, each with its own locale/OS/usage, 8 clients each."""
    groups = [
        (("a@x", "b@x", "c@x"), "de", "Linux", 1.0),
        (("d@x", "e@x", "f@x"), "fr", "Darwin", 10.0),
        (("g@x", "h@x", "a@x"), "it", "Windows_NT", 100.0),
    ]
    rows = []
    for g, (guids, locale, os_, hours) in enumerate(groups):
        for i in range(8):
            rows.append(client_row(f"g{g}-{i}", D, _addons(*guids), locale=locale, os=os_, city=f"city{g}",
                                   subsession_hours_sum=hours, places_bookmarks_count_mean=hours * 10,
                                   scalar_parent_browser_engagement_tab_open_event_count_sum=int(hours * 5),
                                   scalar_parent_browser_engagement_total_uri_count_sum=int(hours * 50),
                                   scalar_parent_browser_engagement_unique_domains_count_mean=hours))
    return rows


def test_one_cluster_only_fails(spark, tmp_path):
    rows = [client_row(f"c{i}", D, _addons("a@x", "b@x", "c@x")) for i in range(5)]
    with pytest.raises(job.JobFailed, match="two clusters"):
        job.build_similarity_model(_last_seen(spark, tmp_path, rows), WHITELIST, seed=1, num_clusters=3,
                                   num_donors=100)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_tables(tmp_path_factory.mktemp("telemetry"), clients_last_seen=_three_groups())


def test_build_model_publishes_exactly_num_donors_in_proportion(spark, source):
    from taar_etl.spark.io import read_table

    last_seen = read_table(spark, source, "clients_last_seen", list(job.SOURCE_COLUMNS), D, D)
    donors, curves, stats = job.build_similarity_model(last_seen, WHITELIST, seed=2, num_clusters=3,
                                                       num_donors=10, num_pdf_points=50)
    # three clusters of 8: shares 10 * 8 / 24 = 3.33 each -> floors 3 + 3 + 3, the leftover to the
    # smallest cluster id -> 4, 3, 3
    assert len(donors) == 10 and len(curves) == 50
    assert sorted(stats["inputs"]["cluster_sizes"].values()) == [8, 8, 8]
    assert sorted(Counter(d["locale"] for d in donors).values()) == [3, 3, 4]
    assert list(stats["outputs"]["donor_quotas"].values()) == [4, 3, 3]
    artifacts.validate_group("similarity", {"donors": donors, "lr_curves": curves})


def _argv(store, source, *extra):
    return ["--date", D.isoformat(), "--model-store", store.uri, "--source", source, "--spark-master", "local[2]",
            "--num-clusters", "3", "--num-donors", "100", "--num-pdf-points", "200", *extra]


def test_main_publishes_loadable_donors_and_curves_identically_across_partitionings(spark, tmp_path, source):
    stores = []
    for n in (1, 4):
        s = open_model_store(str(tmp_path / f"models-{n}"))
        publish(s, "whitelist", WHITELIST, D, producer_tag("test"))
        assert job.main(_argv(s, source, "--shuffle-partitions", str(n))) == 0
        stores.append(s)
    for key in ("donors", "lr_curves"):
        art = artifacts.get(key)
        for name in (art.name, art.dated_name(D)):
            assert stores[0].read_bytes(name) == stores[1].read_bytes(name), name

    donors, _ = read_artifact(stores[0], "donors")
    curves, _ = read_artifact(stores[0], "lr_curves")
    assert len(donors) == 24  # fewer clients than --num-donors: all of them
    assert set(donors[0]) == {"geo_city", "locale", "os", "subsession_length", "bookmark_count",
                              "tab_open_count", "total_uri", "unique_tlds", "active_addons"}
    de = next(d for d in donors if d["locale"] == "de")
    # 1 h -> 3600 s; bookmarks round(10.0) = 10; tabs int(5) = 5; uri 50; tlds 1
    assert (de["subsession_length"], de["bookmark_count"], de["tab_open_count"], de["total_uri"],
            de["unique_tlds"], de["active_addons"]) == (3600, 10, 5, 50, 1, ["a@x", "b@x", "c@x"])
    assert len(curves) == 200

    engine = build_engine({"donors": artifacts.normalise("donors", donors),
                           "lr_curves": artifacts.normalise("lr_curves", curves)})
    profile = {k: de[k] for k in de if k != "active_addons"} | {"installed_addons": []}
    recs = [g for g, _ in engine.similarity.recommend(profile, 3)]
    assert recs == ["a@x", "b@x", "c@x"]  # the German donors vote for their add-ons
    sidecar, _ = read_artifact(stores[0], artifacts.metrics_artifact("taar_similarity", "taar/similarity"))
    assert sidecar["evaluation"] is None and sidecar["outputs"]["donors"] == 24


def test_main_fails_loudly_on_an_empty_input(spark, tmp_path, source, capsys):
    s = open_model_store(str(tmp_path / "models"))
    publish(s, "whitelist", WHITELIST, D, producer_tag("test"))
    assert job.main(_argv(s, source, "--channel", "nightly")) == 1
    assert "no clients_last_seen client" in capsys.readouterr().out
    assert s.stat(artifacts.get("donors").name) is None and s.stat(artifacts.get("lr_curves").name) is None


def test_too_few_donors_is_a_usage_error(tmp_path, source):
    s = open_model_store(str(tmp_path / "models"))
    assert job.main(_argv(s, source, "--num-donors", "99")) == 2


def test_runs_as_a_script_with_help():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(job.__file__)
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=script.parent)
    assert done.returncode == 0 and "--date" in done.stdout and "Exit codes" not in done.stderr
