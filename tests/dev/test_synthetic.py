"""Synthetic telemetry generator (SPEC §7.5): schema, determinism, planted structure, ground truth."""

import collections
import datetime as dt
import hashlib
import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taar.eligibility import is_eligible
from taar_dev import synthetic
from taar_dev.synthetic import Params, catalogue_for, generate, read_table

pytestmark = pytest.mark.unit

EPOCH = dt.date(1970, 1, 1)

# SPEC §7.2, written out by hand (not taken from the generator).
ADDON_FIELDS = [
    ("addon_id", pa.string()), ("blocklisted", pa.bool_()), ("name", pa.string()),
    ("user_disabled", pa.bool_()), ("app_disabled", pa.bool_()), ("version", pa.string()),
    ("scope", pa.int64()), ("type", pa.string()), ("foreign_install", pa.bool_()),
    ("has_binary_components", pa.bool_()), ("install_day", pa.int64()), ("update_day", pa.int64()),
    ("signed_state", pa.int64()), ("is_system", pa.bool_()), ("is_web_extension", pa.bool_()),
    ("multiprocess_compatible", pa.bool_()),
]
DAILY = [
    ("submission_date", pa.date32()), ("client_id", pa.string()), ("sample_id", pa.int64()),
    ("app_name", pa.string()), ("normalized_channel", pa.string()), ("locale", pa.string()),
    ("city", pa.string()), ("os", pa.string()), ("subsession_hours_sum", pa.float64()),
    ("places_bookmarks_count_mean", pa.float64()),
    ("scalar_parent_browser_engagement_tab_open_event_count_sum", pa.int64()),
    ("scalar_parent_browser_engagement_total_uri_count_sum", pa.int64()),
    ("scalar_parent_browser_engagement_unique_domains_count_mean", pa.float64()),
    ("active_addons", "ADDONS"),
]
SPEC_COLUMNS = {
    "clients_daily": DAILY,
    "clients_last_seen": [*DAILY, ("days_since_seen", pa.int64())],
    "addons": [
        ("submission_date", pa.date32()), ("client_id", pa.string()), ("sample_id", pa.int64()),
        ("normalized_channel", pa.string()), ("addon_id", pa.string()), ("is_system", pa.bool_()),
        ("user_disabled", pa.bool_()), ("app_disabled", pa.bool_()), ("type", pa.string()),
        ("foreign_install", pa.bool_()), ("blocklisted", pa.bool_()), ("signed_state", pa.int64()),
    ],
    "deletion_request": [("submission_timestamp", pa.timestamp("us", tz="UTC")), ("client_id", pa.string())],
}


def _day(row):
    return (row["submission_date"] - EPOCH).days


def _latest_rows(rows):
    """Latest clients_daily row per client."""
    latest = {}
    for row in rows:
        cur = latest.get(row["client_id"])
        if cur is None or row["submission_date"] > cur["submission_date"]:
            latest[row["client_id"]] = row
    return latest


@pytest.fixture(scope="module")
def small(synthetic_small):
    return synthetic_small


@pytest.fixture(scope="module")
def daily_rows(small):
    """Every clients_daily row as Python values (read once for the module)."""
    return read_table(small.telemetry, "clients_daily").to_pylist()


@pytest.fixture(scope="module")
def latest(daily_rows):
    return _latest_rows(daily_rows)


@pytest.fixture(scope="module")
def ground_truth(small):
    return {r["client_id"]: r for r in pq.read_table(small.ground_truth).to_pylist()}


@pytest.fixture(scope="module")
def amo_docs(small):
    catalogue = json.loads((small.amo / "catalogue.json").read_text(encoding="utf-8"))
    editorial = json.loads((small.amo / "editorial.json").read_text(encoding="utf-8"))
    return catalogue, editorial


# --- schema and layout ------------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(SPEC_COLUMNS))
def test_schema_matches_spec(small, table):
    schema = read_table(small.telemetry, table).schema
    names = [name for name, _ in SPEC_COLUMNS[table]]
    if table == "deletion_request":
        names.append("submission_date")  # the Hive partition
    assert sorted(schema.names) == sorted(names)
    for name, kind in SPEC_COLUMNS[table]:
        if kind == "ADDONS":
            element = schema.field(name).type.value_type
            assert [(f.name, f.type) for f in element] == ADDON_FIELDS
        else:
            assert schema.field(name).type == kind, name


def test_files_are_hive_partitions_without_the_partition_column(small):
    files = sorted((small.telemetry / "clients_daily").glob("submission_date=*/part-*.parquet"))
    assert files, "no clients_daily part files"
    dates = {f.parent.name.split("=", 1)[1] for f in files}
    assert small.end_date.isoformat() in dates
    assert all(dt.date.fromisoformat(d) <= small.end_date for d in dates)
    assert "submission_date" not in pq.read_schema(files[0]).names


def test_deletion_requests_are_partitioned_by_their_timestamp_date(small):
    rows = read_table(small.telemetry, "deletion_request").to_pylist()
    assert rows
    assert all(r["submission_timestamp"].date() == r["submission_date"] for r in rows)


# --- determinism ------------------------------------------------------------------------------


def _tiny(seed=7, **kw):
    return Params(end_date=dt.date(2026, 3, 31), clients=900, addons=120, recommended=30, days=30,
                  chunk_size=300, seed=seed, last_seen_dates=(dt.date(2026, 3, 24), dt.date(2026, 3, 31)), **kw)


def _contents(root):
    """Every Parquet file under ``root`` (relative path -> table) plus the JSON side files."""
    out = {str(p.relative_to(root)): pq.read_table(p) for p in sorted(root.rglob("*.parquet"))}
    out["manifest"] = json.loads((root / "telemetry" / "_synthetic" / "manifest.json").read_text())
    out["catalogue"] = (root / "amo" / "catalogue.json").read_bytes()
    out["editorial"] = (root / "amo" / "editorial.json").read_bytes()
    out["sample"] = (root / "telemetry" / "_synthetic" / "sample_hashed_ids.txt").read_bytes()
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], pa.Table):
            assert a[key].equals(b[key]), key
        else:
            assert a[key] == b[key], key


def test_same_seed_same_output_whatever_the_workers_and_on_rerun(tmp_path):
    params = _tiny()
    generate(params, tmp_path / "w1" / "telemetry", tmp_path / "w1" / "amo", workers=1)
    generate(params, tmp_path / "w2" / "telemetry", tmp_path / "w2" / "amo", workers=2)
    one, two = _contents(tmp_path / "w1"), _contents(tmp_path / "w2")
    assert sum(1 for k in one if k.startswith("telemetry/clients_daily/")) >= 3 * 10  # 3 chunks, many days
    _assert_same(one, two)
    generate(params, tmp_path / "w1" / "telemetry", tmp_path / "w1" / "amo", workers=2)  # rerun in place
    _assert_same(one, _contents(tmp_path / "w1"))


def test_different_seed_different_output(tmp_path):
    generate(_tiny(seed=7), tmp_path / "a" / "telemetry", tmp_path / "a" / "amo")
    generate(_tiny(seed=8), tmp_path / "b" / "telemetry", tmp_path / "b" / "amo")
    ids_a = set(read_table(tmp_path / "a" / "telemetry", "clients_daily", ["client_id"]).column(0).to_pylist())
    ids_b = set(read_table(tmp_path / "b" / "telemetry", "clients_daily", ["client_id"]).column(0).to_pylist())
    assert not ids_a & ids_b
    assert (tmp_path / "a" / "amo" / "catalogue.json").read_bytes() != (tmp_path / "b" / "amo" / "catalogue.json").read_bytes()


def test_manifest_counts_match_the_files(small):
    for table, count in small.manifest["row_counts"].items():
        assert read_table(small.telemetry, table).num_rows == count, table
    assert small.manifest["seed"] == 42
    assert pq.read_metadata(small.ground_truth).num_rows == 3000


# --- per-client invariants --------------------------------------------------------------------


def test_system_addons_on_every_row(small, daily_rows):
    system = set(small.manifest["catalogue"]["system"])
    assert len(system) == 5
    for row in daily_rows:
        present = {a["addon_id"] for a in row["active_addons"] if a["is_system"]}
        assert present == system


def test_install_days_strictly_increasing_and_not_after_the_row(daily_rows):
    for row in daily_rows:
        days = [a["install_day"] for a in row["active_addons"]]
        assert all(b > a for a, b in itertools.pairwise(days)), days
        assert days[-1] <= _day(row)
        assert all(a["install_day"] <= a["update_day"] <= _day(row) for a in row["active_addons"])


def test_a_clients_rows_grow_by_install_day(daily_rows):
    """An earlier row holds exactly the add-ons of the latest row installed by its own day."""
    by_client = collections.defaultdict(list)
    for row in daily_rows:
        by_client[row["client_id"]].append(row)
    checked = 0
    for rows in by_client.values():
        rows.sort(key=lambda r: r["submission_date"])
        last = rows[-1]["active_addons"]
        for row in rows[:-1]:
            day = (row["submission_date"] - EPOCH).days
            expected = [a["addon_id"] for a in last if a["install_day"] <= day]
            assert [a["addon_id"] for a in row["active_addons"]] == expected
            checked += 1
    assert checked > 1000


def test_last_seen_days_since_seen(small, latest):
    seen = read_table(small.telemetry, "clients_last_seen").to_pylist()
    d = small.end_date
    expected = {c for c, r in latest.items() if (d - r["submission_date"]).days < 28}
    assert {r["client_id"] for r in seen} == expected
    for r in seen:
        assert r["submission_date"] == d
        assert r["days_since_seen"] == (d - latest[r["client_id"]]["submission_date"]).days
        assert r["active_addons"] == latest[r["client_id"]]["active_addons"]


def test_addons_table_is_the_flattened_daily_rows_of_d(small, daily_rows):
    on_d = [r for r in daily_rows if r["submission_date"] == small.end_date]
    expected = [(r["client_id"], a["addon_id"], a["signed_state"]) for r in on_d for a in r["active_addons"]]
    got = [(r["client_id"], r["addon_id"], r["signed_state"]) for r in read_table(small.telemetry, "addons").to_pylist()]
    assert got == expected
    assert len(got) > 100


def test_deleted_clients_have_no_activity_after_the_request(small, latest):
    rows = read_table(small.telemetry, "deletion_request").to_pylist()
    assert len(rows) >= 1  # 3000 clients x 0.002 = 6 expected
    for r in rows:
        assert latest[r["client_id"]]["submission_date"] <= r["submission_timestamp"].date()


def test_filters_have_rows_to_exercise(ground_truth):
    apps = collections.Counter(r["app_name"] for r in ground_truth.values())
    channels = collections.Counter(r["normalized_channel"] for r in ground_truth.values())
    # 3000 clients: 1 % non-Firefox (30 expected), 3 % non-release (90 expected).
    assert 5 <= sum(n for a, n in apps.items() if a != "Firefox") <= 80
    assert 40 <= sum(n for c, n in channels.items() if c != "release") <= 160


def test_add_on_entry_flags_occur(daily_rows):
    flat = [a for row in daily_rows for a in row["active_addons"] if not a["is_system"]]
    share = {f: sum(bool(a[f]) for a in flat) / len(flat) for f in ("user_disabled", "app_disabled", "foreign_install")}
    assert 0.015 < share["user_disabled"] < 0.05  # 3 %
    assert 0.002 < share["app_disabled"] < 0.025  # 1 %
    assert 0.008 < share["foreign_install"] < 0.04  # 2 %
    assert any(a["signed_state"] is None for a in flat)
    assert any(a["signed_state"] == 0 for a in flat)
    assert any(not a["is_web_extension"] for a in flat)
    assert any(a["blocklisted"] for a in flat)


# --- planted structure ------------------------------------------------------------------------


def test_clients_install_mostly_from_their_cluster(small, latest, ground_truth):
    cat = catalogue_for(small.params)
    index = {g: i for i, g in enumerate(cat.guids)}
    own = other = within = cross = 0
    for cid, row in latest.items():
        subsets = [cat.cluster_of[index[a["addon_id"]]] for a in row["active_addons"] if not a["is_system"]]
        subsets = [s for s in subsets if s >= 0]
        own += sum(s == ground_truth[cid]["cluster"] for s in subsets)
        other += sum(s != ground_truth[cid]["cluster"] for s in subsets)
        for a, b in itertools.combinations(subsets, 2):
            within += a == b
            cross += a != b
    n_clusters = small.params.clusters
    assert own > other  # the own subset beats the other 11 together
    assert own / (other / (n_clusters - 1)) > 5
    # Co-installation rate per possible pair: subsets of size s, C clusters.
    s = (cat.cluster_of >= 0).sum() / n_clusters
    within_rate = within / (n_clusters * s * (s - 1) / 2)
    cross_rate = cross / (n_clusters * (n_clusters - 1) / 2 * s * s)
    assert within_rate > 3 * cross_rate


def test_locale_addons_are_more_popular_in_their_locale(small, latest, ground_truth):
    cat = catalogue_for(small.params)
    locale_of = {c: ground_truth[c]["locale"] for c in latest}
    holders = collections.defaultdict(set)
    for cid, row in latest.items():
        for a in row["active_addons"]:
            holders[a["addon_id"]].add(cid)
    sizes = collections.Counter(locale_of.values())
    compared = 0
    for name, addon_ids in zip(cat.locale_names, cat.locale_addons, strict=True):
        if sizes[name] < 150:
            continue
        for i in addon_ids:
            inside = sum(locale_of[c] == name for c in holders[cat.guids[i]])
            outside = len(holders[cat.guids[i]]) - inside
            assert inside / sizes[name] > 3 * outside / (len(latest) - sizes[name]), (name, cat.guids[i])
            compared += 1
    assert compared >= 8  # en-US, de, fr and more have >= 150 of 3000 clients


def test_cities_belong_to_the_clients_locale(small, latest):
    from taar_dev.synthetic_catalogue import LOCALES

    cities = {loc: set(c) for loc, _, c in LOCALES}
    for row in latest.values():
        if row["locale"] and row["city"]:
            assert row["city"] in cities[row["locale"]]


# --- catalogue and curated list ---------------------------------------------------------------


def test_curated_list_is_popular_eligible_listed_webextensions(small, amo_docs):
    catalogue, editorial = amo_docs
    records = {a["guid"]: a for a in catalogue["addons"]}
    curated = [e["guid"] for e in editorial["results"] if e["recommended"] and e["guid"]]
    assert len(set(curated)) == 60
    end_of_d = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    for guid in set(curated):
        rec = records[guid]
        assert rec["listed"] and rec["is_webextension"] and rec["type"] == "extension"
        assert rec["ratings"]["average"] >= 3.0
        first = dt.datetime.fromisoformat(rec["versions"][0]["file"]["created"].replace("Z", "+00:00"))
        assert (end_of_d - first).days >= 60
        assert rec["promoted"] == "recommended"
    # Malformed entries a feed consumer has to drop (SPEC §8.3).
    assert {e["guid"] for e in editorial["results"]} >= {None, ""}


def test_catalogue_mix(amo_docs):
    addons = amo_docs[0]["addons"]
    n = len(addons)
    assert n == 300
    assert sum(not a["is_webextension"] for a in addons) >= 1  # 2 % legacy
    assert sum(not a["listed"] for a in addons) >= 5 + 1  # system + unlisted
    low = sum(a["ratings"]["average"] < 3.0 for a in addons) / n
    assert 0.07 < low < 0.25  # about 15 %
    assert all(1 <= len(a["versions"]) <= 20 for a in addons)
    assert len({a["guid"] for a in addons}) == n
    forms = collections.Counter("uuid" if a["guid"].startswith("{") else "at" for a in addons)
    assert forms["uuid"] > 30 and forms["at"] > 30


# --- ground truth -----------------------------------------------------------------------------


def test_ground_truth_held_out_is_the_newest_eligible_curated_addon(latest, ground_truth, amo_docs):
    catalogue, editorial = amo_docs
    amo_webext = {a["guid"] for a in catalogue["addons"] if a["listed"] and a["is_webextension"]}
    whitelist = {e["guid"] for e in editorial["results"] if e["recommended"] and e["guid"]}
    with_target = 0
    for cid, truth in ground_truth.items():
        row = latest[cid]
        ok = [a for a in row["active_addons"] if is_eligible(a, amo_webext=amo_webext, whitelist=whitelist)]
        expected = max(ok, key=lambda a: (a["install_day"], a["addon_id"]))["addon_id"] if ok else None
        assert truth["held_out_addon"] == expected, cid
        assert truth["n_eligible_curated"] == len(ok)
        assert truth["hashed_client_id"] == hashlib.sha256(cid.encode("utf-8")).hexdigest()
        assert truth["last_active_date"] == row["submission_date"]
        with_target += expected is not None
    assert with_target > 1000  # most clients with add-ons have a curated one


def test_sample_hashed_ids_are_profiled_clients(small, ground_truth):
    lines = (small.telemetry / "_synthetic" / "sample_hashed_ids.txt").read_text().split()
    by_hash = {t["hashed_client_id"]: t for t in ground_truth.values()}
    assert len(lines) == 100
    for h in lines:
        t = by_hash[h]
        assert t["n_eligible_curated"] >= 1 and not t["deleted"] and t["app_name"] == "Firefox"
        assert (small.end_date - t["last_active_date"]).days < 28


# --- CLI --------------------------------------------------------------------------------------


def test_cli_help_lists_the_spec_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--amo-out", "--clients", "--addons", "--recommended", "--clusters", "--end-date",
                 "--days", "--active-days-mean", "--last-seen-dates", "--addons-days", "--deletion-rate",
                 "--seed", "--workers", "--chunk-size"):
        assert flag in text


@pytest.mark.parametrize("argv", [
    ["--set", "legacy_share=2"],
    ["--set", "nope=1"],
    ["--set", "clients=5"],
    ["--end-date", "2026-13-01"],
    ["--last-seen-dates", "2020-01-01", "--end-date", "2026-11-20"],
    ["--addons-days", "5", "--days", "3"],
])
def test_cli_bad_arguments_exit_2(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        synthetic.main(["--out", str(tmp_path / "t"), "--amo-out", str(tmp_path / "a"), *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_cli_end_to_end_with_set(tmp_path, capsys):
    code = synthetic.main(["--out", str(tmp_path / "t"), "--amo-out", str(tmp_path / "a"), "--clients", "200",
                           "--addons", "80", "--recommended", "10", "--days", "10", "--end-date", "20260301",
                           "--workers", "1", "--set", "no_addons_share=0.0"])
    assert code == 0
    manifest = json.loads((tmp_path / "t" / "_synthetic" / "manifest.json").read_text())
    assert manifest["params"]["no_addons_share"] == 0.0
    assert manifest["params"]["end_date"] == "2026-03-01"
    rows = read_table(tmp_path / "t", "clients_daily", ["active_addons"]).column(0).to_pylist()
    # no_addons_share=0: every client's latest row has a user add-on, so most rows do.
    assert sum(any(not a["is_system"] for a in r) for r in rows) > 0.8 * len(rows)
