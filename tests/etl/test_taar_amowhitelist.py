"""taar_amowhitelist: every rule at its boundary on hand-built v4/v5 records, and the job's publishing."""

import datetime as dt

import pytest

from taar.publishing import producer_tag, publish, read_artifact
from taar.storage import open_model_store
from taar_etl.taar_amowhitelist import build_views, is_featured, main, passes_whitelist

pytestmark = pytest.mark.unit

D = dt.date(2026, 3, 31)
# End of D = 2026-04-01T00:00Z. 60 days earlier: 31 days back to 2026-03-01, 28 more to 2026-02-01,
# one more to 2026-01-31, so the age cut-off is 2026-01-31T00:00:00Z (inclusive).
CUTOFF = "2026-01-31T00:00:00Z"


def v5(guid="a@x", rating=4.0, created="2020-01-01T00:00:00Z", promoted=()):
    return {"guid": guid, "ratings": {"average": rating}, "first_create_date": created,
            "current_version": {"file": {"created": created}}, "promoted": [{"category": c} for c in promoted]}


def v4(guid="b@x", rating=4.0, created="2020-01-01T00:00:00Z", webext=(True,), promoted=None):
    return {"guid": guid, "ratings": {"average": rating, "count": 5}, "first_create_date": created,
            "current_version": {"files": [{"is_webextension": w} for w in webext]},
            "promoted": {"category": promoted} if promoted else None}


@pytest.mark.parametrize("record, expected", [
    (v5(rating=3.0), True),  # exactly the minimum rating
    (v5(rating=2.99), False),
    (v4(rating=3.0), True),
    (v5(created=CUTOFF), True),  # exactly 60 days old at the end of D
    (v5(created="2026-01-31T00:00:01Z"), False),  # one second too young
    (v4(created="2026-01-30T23:59:59+00:00"), True),
    (v4(webext=(False, True)), False),  # the first file decides
    (v4(webext=(True, False)), True),
    (v4(webext=()), False),  # no files
    (v4(webext=(None,)), True),  # a null flag counts as absent, i.e. webextension
])
def test_whitelist_rule_boundaries(record, expected):
    assert passes_whitelist(record, D) is expected


@pytest.mark.parametrize("drop", ["ratings", "first_create_date", "current_version"])
def test_a_missing_field_fails_its_rule(drop):
    record = v5()
    assert passes_whitelist(record, D)
    del record[drop]
    assert not passes_whitelist(record, D)


def test_bad_dates_and_excluded_guids_fail():
    assert not passes_whitelist(v5(created="yesterday"), D)
    assert not passes_whitelist(v5(guid="pioneer-opt-in@mozilla.org"), D)
    assert not passes_whitelist(v5(guid="a@x"), D, excluded={"a@x"})
    assert passes_whitelist(v5(guid="pioneer-opt-in@mozilla.org"), D, excluded=())


def test_thresholds_are_parameters():
    assert passes_whitelist(v5(rating=3.5), D, min_rating=3.5)
    assert not passes_whitelist(v5(rating=3.49), D, min_rating=3.5)
    assert passes_whitelist(v5(created="2026-03-31T00:00:00Z"), D, min_age_days=1)  # end of D - 1 day


def test_featured_reads_both_promoted_shapes():
    assert is_featured(v4(promoted="recommended")) and not is_featured(v4(promoted="line"))
    assert is_featured(v5(promoted=("line", "recommended"))) and not is_featured(v5())
    assert not is_featured(v4())  # promoted null


def test_build_views_intersects_featured_and_whitelist():
    db = {
        "good@x": v5("good@x", promoted=("recommended",)),
        "plain@x": v4("plain@x"),
        "lowrated@x": v4("lowrated@x", rating=1.0, promoted="recommended"),
        "young@x": v5("young@x", created="2026-03-01T00:00:00Z"),
    }
    views = build_views(db, D)
    assert list(views["amo_whitelist_db"]) == ["good@x", "plain@x"]
    assert list(views["amo_featured_db"]) == ["good@x", "lowrated@x"]
    assert list(views["amo_featured_whitelist_db"]) == ["good@x"]
    assert views["amo_whitelist_db"]["good@x"] is db["good@x"]  # records are kept as they are


def _seed_input(store, date, db):
    publish(store, "amo_database", db, date, producer_tag("test"))


def test_main_publishes_the_three_views_for_d(tmp_path):
    store = open_model_store(str(tmp_path))
    _seed_input(store, D, {"good@x": v5("good@x", promoted=("recommended",)), "plain@x": v4("plain@x")})
    assert main(["--date", "2026-03-31", "--model-store", str(tmp_path)]) == 0
    assert list(read_artifact(store, "amo_whitelist_db", date=D)[0]) == ["good@x", "plain@x"]
    assert list(read_artifact(store, "amo_featured_db", date=D)[0]) == ["good@x"]
    assert list(read_artifact(store, "amo_featured_whitelist_db")[0]) == ["good@x"]


def test_main_reads_only_the_dated_input_unless_allowed(tmp_path):
    store = open_model_store(str(tmp_path))
    _seed_input(store, D - dt.timedelta(days=1), {"good@x": v5("good@x", promoted=("recommended",))})
    assert main(["--date", "2026-03-31", "--model-store", str(tmp_path)]) == 1
    assert store.stat("addon_recommender/whitelist_addons_database.json.bz2") is None
    assert main(["--date", "2026-03-31", "--model-store", str(tmp_path), "--allow-latest-inputs"]) == 0
    assert list(read_artifact(store, "amo_whitelist_db", date=D)[0]) == ["good@x"]


def test_an_empty_view_is_refused_and_nothing_is_published(tmp_path):
    store = open_model_store(str(tmp_path))
    _seed_input(store, D, {"plain@x": v4("plain@x")})  # whitelisted, but nothing is featured
    assert main(["--date", "2026-03-31", "--model-store", str(tmp_path)]) == 3
    assert store.list("addon_recommender/whitelist_addons") == []  # validated before the first publish
    assert store.list("addon_recommender/featured") == []
