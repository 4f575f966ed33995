import pytest

from taar.eligibility import client_passes, eligible_addon_ids, is_eligible, sql_condition
from tests.fixtures.eligibility_cases import CASES, OK

pytestmark = pytest.mark.unit

@pytest.mark.parametrize("case, addon, expected", CASES, ids=[c[0] for c in CASES])
def test_rule_table(case, addon, expected):
    assert is_eligible(addon) is expected


def test_amo_and_whitelist_rules():
    assert is_eligible(OK, amo_webext={"a@x"}, whitelist={"a@x"})
    assert not is_eligible(OK, amo_webext={"b@x"})
    assert not is_eligible(OK, whitelist=set())


def test_eligible_ids_dedupe_after_filtering():
    addons = [OK, OK | {"addon_id": "b@x", "is_system": True}, OK | {"addon_id": "c@x"}, OK]
    assert eligible_addon_ids(addons) == ["a@x", "c@x"]
    assert eligible_addon_ids(None) == []


def test_sql_condition_comes_from_the_rule_table():
    sql = sql_condition("a.")
    assert "NOT COALESCE(a.is_system, FALSE)" in sql
    assert "COALESCE(a.type = 'extension', FALSE)" in sql
    assert "(a.signed_state IS NULL OR a.signed_state = 2)" in sql
    assert "a.addon_id NOT IN ('pioneer-opt-in@mozilla.org')" in sql


@pytest.mark.parametrize(
    "row, channel, expected",
    [({"client_id": "c", "app_name": "Firefox", "normalized_channel": "release"}, "release", True),
     ({"client_id": None, "app_name": "Firefox", "normalized_channel": "release"}, "release", False),
     ({"client_id": "c", "app_name": "Fennec", "normalized_channel": "release"}, "release", False),
     ({"client_id": "c", "app_name": "Firefox", "normalized_channel": "beta"}, "release", False),
     ({"client_id": "c", "app_name": "Firefox", "normalized_channel": "beta"}, "all", True)],
)
def test_client_filter(row, channel, expected):
    assert client_passes(row, channel) is expected
