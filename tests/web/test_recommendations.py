"""``/v1/api/recommendations/<id>/`` over the fixture models (SPEC §4.2-4.5, §4.10).

The expected rankings are worked out in ``tests/fixtures/web_models.py``: the known client
(en-US, a@x installed) scores c 1.2, d 0.5, e 0.3, b 0.0, so with 3 results and
no randomisation the answer is [c, d, e].
"""

from __future__ import annotations

import json

import pytest

from taar import hashing
from taar.storage import ProfileTimeout, open_model_store
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit

KNOWN_URL = f"/v1/api/recommendations/{fixtures.KNOWN}/"


def post(client, url, body):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json")


def test_known_client_gets_ensemble_top_three(client):
    response = client.get(KNOWN_URL)
    assert response.status_code == 200
    assert response.get_json() == {"results": ["c@x", "d@x", "e@x"]}


def test_per_user_responses_are_not_cacheable(client):
    assert client.get(KNOWN_URL).headers["Cache-Control"] == "no-store"


def test_uppercase_hashed_id_is_lowercased_before_lookup(client):
    response = client.get(f"/v1/api/recommendations/{fixtures.KNOWN.upper()}/")
    assert response.get_json()["results"] == ["c@x", "d@x", "e@x"]


def test_explain_reports_weighted_sources_seed_and_versions(client):
    body = client.get(KNOWN_URL + "?explain=1").get_json()
    # c: collaborative 1.0 x 1.0 + locale 0.4 x 0.5 = 1.2; d: 0.5 x 1.0; e: 0.6 x 0.5 = 0.3
    assert body["result_info"] == [
        {"guid": "c@x", "weight": pytest.approx(1.2),
         "sources": {"collaborative": pytest.approx(1.0), "locale": pytest.approx(0.2)}},
        {"guid": "d@x", "weight": pytest.approx(0.5), "sources": {"collaborative": pytest.approx(0.5)}},
        {"guid": "e@x", "weight": pytest.approx(0.3), "sources": {"locale": pytest.approx(0.3)}},
    ]
    assert body["seed"] == 42
    assert body["model_versions"] == {key: "20240310" for key in fixtures.models()}


@pytest.mark.parametrize("flag", ["0", "false", "yes", "TRUE", ""])
def test_explain_is_off_unless_1_or_true(client, flag):
    assert "result_info" not in client.get(KNOWN_URL + f"?explain={flag}").get_json()


def test_promoted_rows_merge_by_weight_and_dedupe(client):
    # promoted d 2.0 and x 0.7 + recs c 1.2, d 0.5, e 0.3 -> d 2.0, c 1.2, x 0.7, (d 0.5 dropped), e 0.3
    body = post(client, KNOWN_URL + "?explain=true",
                {"options": {"promoted": [["x@promo", 0.7], ["d@x", 2]]}}).get_json()
    assert body["results"] == ["d@x", "c@x", "x@promo", "e@x"]
    assert body["result_info"][0] == {"guid": "d@x", "weight": 2, "sources": {"promoted": 2}}


def test_promoted_win_ties_against_recommendations_and_keep_their_order(client):
    # p1 0.5, p2 0.5 and d 0.5 tie: the stable sort keeps promoted order first, then d.
    body = post(client, KNOWN_URL, {"options": {"promoted": [["p1@x", 0.5], ["p2@x", 0.5]]}}).get_json()
    assert body["results"] == ["c@x", "p1@x", "p2@x", "d@x", "e@x"]


def test_promoted_installed_addon_is_kept(client):
    # a@x is installed by the known client; promoted GUIDs are never filtered.
    body = post(client, KNOWN_URL, {"options": {"promoted": [["a@x", 0.1]]}}).get_json()
    assert body["results"] == ["c@x", "d@x", "e@x", "a@x"]


def test_unknown_client_gets_promoted_only(client):
    url = f"/v1/api/recommendations/{fixtures.UNKNOWN}/"
    assert client.get(url).get_json() == {"results": []}
    body = post(client, url, {"options": {"promoted": [["p@x", 1.5], ["q@x", 3]]}}).get_json()
    assert body == {"results": ["q@x", "p@x"]}


def test_unknown_client_is_counted(client, metrics):
    client.get(f"/v1/api/recommendations/{fixtures.UNKNOWN}/")
    assert metrics.count("taar.profile_not_found") == 1


def test_undecodable_profile_is_an_unknown_client(client, metrics):
    response = client.get(f"/v1/api/recommendations/{fixtures.BROKEN}/")
    assert (response.status_code, response.get_json()) == (200, {"results": []})
    assert metrics.count("taar.profile_error") == 1


def test_profile_timeout_is_an_unknown_client(make_app, metrics):
    class StallingStore:
        uri = "stalling://"

        def get(self, row_key, timeout_s):
            raise ProfileTimeout(f"no answer within {timeout_s} s")

        def ping(self, timeout_s):
            return False

    client = make_app(profile_store=StallingStore()).test_client()
    response = post(client, KNOWN_URL, {"options": {"promoted": [["p@x", 1]]}})
    assert (response.status_code, response.get_json()) == (200, {"results": ["p@x"]})
    assert metrics.count("taar.profile_timeout") == 1


def test_recommender_exception_degrades_to_promoted_and_is_counted(app, metrics, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["taar_models"].snapshot.manager, "recommend", explode)
    response = post(app.test_client(), KNOWN_URL, {"options": {"promoted": [["p@x", 1]]}})
    assert (response.status_code, response.get_json()) == (200, {"results": ["p@x"]})
    assert metrics.count("taar.error_recommendation") == 1


@pytest.mark.parametrize("test_id", ["1111-1111", "aaaa", "-z-z-", "F" * 64])
def test_test_ids_get_whitelist_by_test_weight(client, metrics, test_id):
    expected = sorted(fixtures.WHITELIST, key=lambda g: (-hashing.test_weight(g), g))[:3]
    body = client.get(f"/v1/api/recommendations/{test_id}/?explain=1").get_json()
    assert body["results"] == expected
    assert [row["sources"] for row in body["result_info"]] == [{"test": hashing.test_weight(g)} for g in expected]
    assert metrics.count("taar.test_client") == 1


def test_test_id_does_not_touch_the_profile_store(make_app):
    class ExplodingStore:
        uri = "exploding://"

        def get(self, row_key, timeout_s):
            raise AssertionError("profile store read for a test id")

        def ping(self, timeout_s):
            return True

    response = make_app(profile_store=ExplodingStore()).test_client().get("/v1/api/recommendations/2222/")
    assert len(response.get_json()["results"]) == 3


def test_test_id_without_whitelist_gets_promoted_only(make_app, tmp_path):
    store = open_model_store(str(tmp_path / "models"))
    objs = fixtures.models()
    del objs["whitelist"]
    fixtures.publish_models(store, objs)
    client = make_app(model_store=store).test_client()
    body = post(client, "/v1/api/recommendations/3333/", {"options": {"promoted": [["p@x", 1]]}}).get_json()
    assert body == {"results": ["p@x"]}


def test_locale_parameter_used_when_profile_has_none(client):
    # the German client has no locale and no known add-on: locale "de" gives f 1.0 x 0.5
    url = f"/v1/api/recommendations/{fixtures.KNOWN_DE}/?locale=de&platform=WINNT"
    assert client.get(url).get_json() == {"results": ["f@x"]}


def test_locale_parameter_ignored_when_profile_has_one(client):
    assert client.get(KNOWN_URL + "?locale=de").get_json()["results"] == ["c@x", "d@x", "e@x"]


def test_malformed_locale_is_ignored_and_counted(client, metrics):
    url = f"/v1/api/recommendations/{fixtures.KNOWN_DE}/?locale=de$"
    response = client.get(url)
    assert (response.status_code, response.get_json()) == (200, {"results": []})
    assert metrics.count("taar.invalid_locale") == 1


def test_first_of_repeated_parameters_wins(client):
    url = f"/v1/api/recommendations/{fixtures.KNOWN_DE}/?locale=de&locale=en-US"
    assert client.get(url).get_json()["results"] == ["f@x"]


def test_get_ignores_any_body(client):
    response = client.open(KNOWN_URL, method="GET", data=b"{not json")
    assert response.get_json() == {"results": ["c@x", "d@x", "e@x"]}


def test_head_is_served_without_body(client):
    response = client.head(KNOWN_URL)
    assert (response.status_code, response.data) == (200, b"")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_missing_trailing_slash_redirects_308(client, method):
    response = client.open(KNOWN_URL.rstrip("/") + "?explain=1", method=method)
    assert response.status_code == 308
    assert response.headers["Location"].endswith(KNOWN_URL + "?explain=1")


@pytest.mark.parametrize("bad_id", [
    "abc",
    "0123456789abcdef" * 4 + "0",  # 65 hex characters
    ("0123456789abcdef" * 4)[:63],
    "1" * 129,  # a test id, but too long
    "123e4567-e89b-12d3-a456-426614174000",  # a raw telemetry client id
    "----",
    "zz-y",
])
def test_invalid_client_id_is_400(client, bad_id):
    response = client.get(f"/v1/api/recommendations/{bad_id}/")
    assert response.status_code == 400
    assert response.get_json() == {"results": [], "error": "invalid client id"}
    assert response.headers["Cache-Control"] == "no-store"


def test_invalid_request_counter_has_route_and_reason(client, metrics):
    client.get("/v1/api/recommendations/abc/")
    assert metrics.count("taar.invalid_request", "reason:invalid_client_id") == 1
    assert metrics.count("taar.invalid_request", "route:recommendations.recommendations") == 1


@pytest.mark.parametrize("body", [b"", b"   \n\t ", b'{"options": null}', b'{"options": {"promoted": null}}',
                                  b'{"other": 1, "options": {"other": []}}'])
def test_bodies_without_promoted_rows_are_fine(client, body):
    response = client.post(KNOWN_URL, data=body, content_type="text/plain")
    assert response.get_json() == {"results": ["c@x", "d@x", "e@x"]}


def test_body_is_parsed_whatever_the_content_type(client):
    response = client.post(KNOWN_URL, data=b'{"options": {"promoted": [["p@x", 9]]}}',
                           content_type="application/x-www-form-urlencoded")
    assert response.get_json()["results"][0] == "p@x"


@pytest.mark.parametrize(("body", "error"), [
    (b"{", "invalid JSON"),
    (b"\xff\xfe{}", "invalid JSON"),
    (b'{"options": {"promoted": [["a@x", NaN]]}}', "invalid JSON"),
    (b"[" * 60000, "invalid JSON"),  # deeper than the JSON parser recurses
    (b"[1, 2]", "invalid body"),
    (b'"options"', "invalid body"),
    (b'{"options": []}', "invalid options"),
    (b'{"options": {"promoted": {"a@x": 1}}}', "invalid options"),
    (b'{"options": {"promoted": ["a@x"]}}', "invalid promoted row 0"),
    (b'{"options": {"promoted": [["a@x", 1, 2]]}}', "invalid promoted row 0"),
    (b'{"options": {"promoted": [["a@x", true]]}}', "invalid promoted row 0"),
    (b'{"options": {"promoted": [["a@x", "1"]]}}', "invalid promoted row 0"),
    (b'{"options": {"promoted": [["", 1]]}}', "invalid promoted row 0"),
    (b'{"options": {"promoted": [[1, 2]]}}', "invalid promoted row 0"),
    (b'{"options": {"promoted": [["a@x", 1e999]]}}', "invalid promoted row 0"),
    (b'{"options": {"promoted": [["a@x", 1], ["b@x", null]]}}', "invalid promoted row 1"),
    (json.dumps({"options": {"promoted": [["x" * 256, 1]]}}).encode(), "invalid promoted row 0"),
    (json.dumps({"options": {"promoted": [[f"g{i}", i] for i in range(101)]}}).encode(), "too many promoted rows"),
    (b" " * 65537, "request body too large"),
])
def test_bad_bodies_are_400(client, body, error):
    response = client.post(KNOWN_URL, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"results": [], "error": error}


def test_exactly_max_promoted_rows_are_accepted(client):
    rows = [[f"g{i:03d}@x", 1000 - i] for i in range(100)]
    body = post(client, KNOWN_URL, {"options": {"promoted": rows}}).get_json()
    assert body["results"][:2] == ["g000@x", "g001@x"] and len(body["results"]) == 103


def test_body_limit_is_configurable(make_app):
    client = make_app(max_body_bytes=10).test_client()
    response = client.post(KNOWN_URL, data=b'{"options": {}}')
    assert response.get_json() == {"results": [], "error": "request body too large"}


def test_randomized_answers_replay_with_the_same_seed(make_app):
    client = make_app(randomize=True, random_seed=None, seed_source=lambda: 7).test_client()
    first = client.get(KNOWN_URL + "?explain=1").get_json()
    second = client.get(KNOWN_URL + "?explain=1").get_json()
    assert first["seed"] == second["seed"] == 7
    assert first["results"] == second["results"]
    assert sorted(first["results"]) == sorted(set(first["results"])) and len(first["results"]) == 3


@pytest.mark.parametrize("row", ['["a\\u0000x", 1.0]', '["\\ud800", 1.0]', '["x\\udfffy", 2]', '["tab\\there", 1]'])
def test_promoted_guid_with_a_lone_surrogate_or_control_character_is_400(client, row):
    body = '{"options": {"promoted": [' + row + ']}}'
    response = client.post(f"/v1/api/recommendations/{fixtures.KNOWN}/", data=body)
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid promoted row 0")


def test_promoted_guid_with_non_ascii_letters_is_fine(client):
    response = client.post(f"/v1/api/recommendations/{fixtures.KNOWN}/",
                           data='{"options": {"promoted": [["\\u00e9l\\u00e8ve@\\u4e2d", 9.0]]}}')
    assert response.get_json()["results"][0] == "élève@中"
