"""The Python and Spark forms of the shared rules agree (SPEC §3.5, §7.4).

One DataFrame per table of cases, evaluated by the Spark column expression, and
each row checked against the Python function on the same input, nulls included.
"""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taar.eligibility import client_filter_column, client_passes, eligible_column, is_eligible, sql_condition
from taar.profile import ADDON_FIELDS, row_to_payload, spark_payload_column
from tests.fixtures.eligibility_cases import CASES, OK
from tests.fixtures.parquet_builders import ADDON_TYPE, SCHEMAS, addon

pytestmark = pytest.mark.spark

#: The unit case table plus add-ons that only the AMO / whitelist rules separate.
ADDON_CASES = [(name, {f: a.get(f) for f in ADDON_FIELDS}) for name, a, _ in CASES] + [
    ("not in amo", {f: (OK | {"addon_id": "b@x"}).get(f) for f in ADDON_FIELDS}),
    ("not curated", {f: (OK | {"addon_id": "c@x"}).get(f) for f in ADDON_FIELDS}),
    ("all null", dict.fromkeys(ADDON_FIELDS)),
]
RULE_SETS = [
    ("predicate only", None, None),
    ("amo", {"a@x", "c@x"}, None),
    ("whitelist", None, {"a@x", "b@x"}),
    ("amo and whitelist", {"a@x", "c@x"}, {"a@x", "b@x"}),
]


def _as_dataframe(spark, path, rows, schema):
    """Rows -> Parquet (exact Arrow types, nulls kept) -> Spark DataFrame."""
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return spark.read.parquet(str(path))


@pytest.fixture(scope="module")
def addon_df(spark, tmp_path_factory):
    schema = pa.schema([("case", pa.string()), ("addon", ADDON_TYPE)])
    rows = [{"case": n, "addon": a} for n, a in ADDON_CASES]
    return _as_dataframe(spark, tmp_path_factory.mktemp("addons") / "a.parquet", rows, schema).cache()


@pytest.mark.parametrize("label, amo, whitelist", RULE_SETS, ids=[r[0] for r in RULE_SETS])
def test_eligible_column_agrees_with_is_eligible(addon_df, label, amo, whitelist):
    got = {r.case: r.ok for r in addon_df.select("case", eligible_column("addon", amo, whitelist).alias("ok"))
           .collect()}
    expected = {name: is_eligible(a, amo, whitelist) for name, a in ADDON_CASES}
    assert got == expected
    assert any(expected.values()) and not all(expected.values())  # the table separates both ways


def test_eligible_column_works_inside_a_higher_order_filter(spark):
    from pyspark.sql import functions as F

    addons = [addon("a@x"), addon("b@x", is_system=True), addon(None), addon("c@x", signed_state=None)]
    df = spark.createDataFrame([("c1", addons)], "client_id string, addons array<struct<"
                               + ",".join(f"{k} {_sql_type(k)}" for k in ADDON_FIELDS) + ">>")
    [row] = df.select(F.transform(F.filter("addons", lambda a: eligible_column(a)), lambda a: a["addon_id"])
                      .alias("ids")).collect()
    assert list(row.ids) == ["a@x", "c@x"]


def _sql_type(field):
    sample = addon("x")[field]
    return {bool: "boolean", int: "bigint", str: "string"}[type(sample)]


def test_sql_condition_agrees_when_evaluated_by_spark_sql(addon_df):
    from pyspark.sql import functions as F

    got = {r.case: r.ok for r in addon_df.select("case", F.expr(sql_condition("addon.")).alias("ok")).collect()}
    assert got == {name: is_eligible(a) for name, a in ADDON_CASES}


CLIENT_CASES = [
    {"client_id": c, "app_name": app, "normalized_channel": ch}
    for c in ("c", None) for app in ("Firefox", "Fennec", None) for ch in ("release", "beta", None)
]


@pytest.mark.parametrize("channel", ["release", "beta", "all"])
def test_client_filter_column_agrees_with_client_passes(spark, channel):
    df = spark.createDataFrame([(i, *r.values()) for i, r in enumerate(CLIENT_CASES)],
                               "i int, client_id string, app_name string, normalized_channel string")
    got = {r.i for r in df.where(client_filter_column(channel)).collect()}
    expected = {i for i, r in enumerate(CLIENT_CASES) if client_passes(r, channel)}
    assert got == expected and expected


PAYLOAD_ROWS = [
    {"client_id": "c1", "city": "Rome", "subsession_hours_sum": 1.5, "locale": "it", "os": "Linux",
     "places_bookmarks_count_mean": 2.5, "scalar_parent_browser_engagement_tab_open_event_count_sum": 7,
     "scalar_parent_browser_engagement_total_uri_count_sum": 70,
     "scalar_parent_browser_engagement_unique_domains_count_mean": 3.5,
     "active_addons": [addon("a@x"), addon("b@x", signed_state=None, install_day=None, name=None)]},
    # every nullable source value null
    {"client_id": "c2", "city": None, "subsession_hours_sum": None, "locale": None, "os": None,
     "places_bookmarks_count_mean": None, "scalar_parent_browser_engagement_tab_open_event_count_sum": None,
     "scalar_parent_browser_engagement_total_uri_count_sum": None,
     "scalar_parent_browser_engagement_unique_domains_count_mean": None, "active_addons": None},
    # rounding edges: 0.0001 h = 0.36 s -> 0; 0.49 -> 0; x.5 rounds away from zero
    {"client_id": "ü-client", "city": "", "subsession_hours_sum": 0.0001, "locale": "", "os": "Darwin",
     "places_bookmarks_count_mean": 0.49, "scalar_parent_browser_engagement_tab_open_event_count_sum": 0,
     "scalar_parent_browser_engagement_total_uri_count_sum": 0,
     "scalar_parent_browser_engagement_unique_domains_count_mean": 0.5,
     "active_addons": [dict.fromkeys(ADDON_FIELDS)]},
    {"client_id": "c4", "city": "Köln", "subsession_hours_sum": 12345.678, "locale": "de", "os": "Windows_NT",
     "places_bookmarks_count_mean": 1e6 + 0.5, "scalar_parent_browser_engagement_tab_open_event_count_sum": 2**40,
     "scalar_parent_browser_engagement_total_uri_count_sum": 5,
     "scalar_parent_browser_engagement_unique_domains_count_mean": 99.4999, "active_addons": []},
]


def test_spark_payload_column_agrees_with_row_to_payload(spark, tmp_path):
    schema = pa.schema([f for f in SCHEMAS["clients_daily"] if f.name in PAYLOAD_ROWS[0]])
    df = _as_dataframe(spark, tmp_path / "rows.parquet", PAYLOAD_ROWS, schema)
    got = [r.p.asDict(recursive=True) for r in df.select(spark_payload_column().alias("p")).collect()]
    expected = [row_to_payload(r) for r in PAYLOAD_ROWS]
    assert got == expected
    # spot-check the hand-computed values: 1.5 h -> 5400 s, round(2.5) = 3, round(3.5) = 4, round(0.5) = 1
    assert (got[0]["subsession_length"], got[0]["bookmark_count"], got[0]["unique_tlds"]) == (5400, 3, 4)
    assert (got[1]["geo_city"], got[1]["subsession_length"], got[1]["active_addons"]) == ("", 0, [])
    assert (got[2]["subsession_length"], got[2]["bookmark_count"], got[2]["unique_tlds"]) == (0, 0, 1)
