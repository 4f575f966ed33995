"""``/taarlite/api/v1/addon_recommendations/<guid>/`` (SPEC §4.7, §5.6).

Fixture graph (``tests/fixtures/web_models.py``): coinstall a-b 10, a-c 8, a-d 6, a-e 4,
b-c 2; ranking a 100, b 50, c 40, d 30, e 20. m = 0.05 x mean(ranking) = 0.05 x 48
= 2.4, so the b-c pair is filtered out. Unfiltered row sums: a 28, b 12, c 10,
d 6, e 4. For a@x, D = {b 10, c 8, d 6, e 4} (T = 20 keeps all four).
"""

from __future__ import annotations

import pytest

from taar.storage import open_model_store
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit

BASE = "/taarlite/api/v1/addon_recommendations"


def get(client, guid="a@x", query="", headers=None):
    return client.get(f"{BASE}/{guid}/{query}", headers=headers or {})


@pytest.mark.parametrize(("query", "expected"), [
    # rownorm_sum: P = D/28; row_norm_sum b = 10/28 + 2/10 = 0.5571, c = 8/28 + 2/12 = 0.4524,
    # d = 6/28, e = 4/28 -> w b 0.6410, c 0.6316, d 1.0, e 1.0; d/e tie -> installs 30 > 20.
    ("", ["d@x", "e@x", "b@x", "c@x"]),
    ("?normalize=", ["d@x", "e@x", "b@x", "c@x"]),
    ("?normalize=rownorm_sum", ["d@x", "e@x", "b@x", "c@x"]),
    # none: w = D -> b 10, c 8, d 6, e 4
    ("?normalize=none", ["b@x", "c@x", "d@x", "e@x"]),
    # row_count: rows holding b: a, c (2); c: a, b (2); d: a (1); e: a (1)
    # -> b 5, c 4, d 6, e 4; c/e tie -> installs 40 > 20
    ("?normalize=row_count", ["d@x", "b@x", "c@x", "e@x"]),
    # row_sum: column sums b 12, c 10, d 6, e 4 -> b 0.833, c 0.8, d 1, e 1
    ("?normalize=row_sum", ["d@x", "e@x", "b@x", "c@x"]),
    # guidception: P1 = D/28; P2 = all mass back on a; P3 = a's row again.
    # w = P1 + 4/9 P2 + 1/9 P3 = (10/9) P1 off a, w(a) = 0 -> b > c > d > e
    ("?normalize=guidception", ["b@x", "c@x", "d@x", "e@x"]),
])
def test_modes_return_exactly_four(client, query, expected):
    response = get(client, query=query)
    assert (response.status_code, response.get_json()) == (200, {"results": expected})


def test_explain_adds_weights_and_installs(client):
    info = get(client, query="?explain=1").get_json()["result_info"]
    assert [(r["guid"], r["installs"]) for r in info] == [("d@x", 30), ("e@x", 20), ("b@x", 50), ("c@x", 40)]
    # b: (10/28) / (10/28 + 2/10) = 0.357143 / 0.557143 = 0.641026
    assert info[2]["weight"] == pytest.approx(0.641026, abs=1e-6)


@pytest.mark.parametrize("guid", [
    "b@x",  # only a@x is left after the min-installs filter: 1 < 4
    "unknown@x",
])
def test_fewer_than_four_is_empty(client, guid):
    assert get(client, guid).get_json() == {"results": []}


def test_result_count_follows_setting(make_app):
    client = make_app(taarlite_max_results=2).test_client()
    assert get(client).get_json() == {"results": ["d@x", "e@x"]}


def test_url_encoded_guid_is_decoded(client):
    assert get(client, "a%40x").get_json()["results"][0] == "d@x"


def test_cache_headers(client):
    response = get(client)
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert response.headers["ETag"].startswith('"') and len(response.headers["ETag"]) == 34


def test_max_age_follows_setting(make_app):
    response = get(make_app(taarlite_cache_max_age=60).test_client())
    assert response.headers["Cache-Control"] == "public, max-age=60"


def test_matching_etag_gets_304(client):
    etag = get(client).headers["ETag"]
    for header in (etag, f'"other", {etag}', "*", "W/" + etag):
        response = get(client, headers={"If-None-Match": header})
        assert (response.status_code, response.data) == (304, b"")
        assert response.headers["ETag"] == etag


def test_stale_etag_gets_200(client):
    response = get(client, headers={"If-None-Match": '"0123"'})
    assert response.status_code == 200


def test_etag_depends_on_mode(client):
    assert get(client).headers["ETag"] != get(client, query="?normalize=none").headers["ETag"]


def test_etag_is_stable_across_apps(make_app):
    assert get(make_app().test_client()).headers["ETag"] == get(make_app().test_client()).headers["ETag"]


def test_unknown_mode_is_400(client):
    response = get(client, query="?normalize=ROWNORM_SUM")
    assert response.status_code == 400
    assert response.get_json() == {"results": [], "error": "unknown normalize mode"}
    assert response.headers["Cache-Control"] == "no-store"


def test_guid_longer_than_255_is_400(client):
    response = get(client, "g" * 256)
    assert (response.status_code, response.get_json()) == (400, {"results": [], "error": "invalid guid"})


def test_models_missing_gives_empty_uncached_answer(make_app, tmp_path):
    store = open_model_store(str(tmp_path / "models"))
    objs = fixtures.models()
    del objs["coinstall"], objs["ranking"]
    fixtures.publish_models(store, objs)
    response = get(make_app(model_store=store).test_client())
    assert (response.status_code, response.get_json()) == (200, {"results": []})
    assert response.headers["Cache-Control"] == "no-store" and "ETag" not in response.headers


def test_recommender_exception_gives_empty_answer(app, metrics, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["taar_models"].snapshot.engine.guid_based, "recommend", explode)
    assert get(app.test_client()).get_json() == {"results": []}
    assert metrics.count("taar.error_recommendation") == 1


def test_head_and_trailing_slash(client):
    assert (client.head(f"{BASE}/a@x/").status_code, client.head(f"{BASE}/a@x/").data) == (200, b"")
    assert client.get(f"{BASE}/a@x").status_code == 308


def test_openapi_normalize_enum_lists_the_recommender_modes():
    import json
    from importlib import resources

    from taar.recommenders.guid_based import MODES

    document = json.loads(resources.files("taar_web").joinpath("openapi.json").read_text())
    enums = [p["schema"]["enum"] for path in document["paths"].values() for op in path.values()
             if isinstance(op, dict) for p in op.get("parameters", ()) if p.get("name") == "normalize"]
    assert enums and all(e == ["", *MODES] for e in enums)


@pytest.mark.parametrize("guid", ["a%00x", "a%1Fx", "a%7Fx", "a%C2%85x"])
def test_guid_with_control_characters_is_400(client, guid):
    response = client.get(f"/taarlite/api/v1/addon_recommendations/{guid}/")
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid guid")
