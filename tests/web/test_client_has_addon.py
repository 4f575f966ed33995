"""``/v1/api/client_has_addon/<id>/<addon_id>/`` (SPEC §4.6)."""

from __future__ import annotations

import pytest

from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.unit

TOKEN = "s3cret-token"


def url(client_id=fixtures.KNOWN, addon="a@x"):
    return f"/v1/api/client_has_addon/{client_id}/{addon}/"


@pytest.mark.parametrize(("addon", "expected"), [
    ("a@x", True),
    ("b@x", False),
    ("A@X", False),  # exact, case-sensitive match
    ("sys@mozilla.org", False),  # system add-ons are not "installed add-ons"
])
def test_known_client(client, addon, expected):
    response = client.get(url(addon=addon))
    assert (response.status_code, response.get_json()) == (200, {"results": expected})
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("client_id", [fixtures.UNKNOWN, fixtures.BROKEN, "8888"])
def test_no_profile_is_false_with_error(client, client_id):
    response = client.get(url(client_id))
    assert (response.status_code, response.get_json()) == (200, {"results": False, "error": "No client found"})


def test_test_id_is_looked_up_like_any_key(client):
    assert client.get(url(fixtures.QA_TEST_ID, "q@x")).get_json() == {"results": True}


def test_invalid_client_id_is_400_false(client):
    response = client.get(url("not-a-hash"))
    assert (response.status_code, response.get_json()) == (400, {"results": False, "error": "invalid client id"})


def test_addon_id_longer_than_255_is_400(client):
    response = client.get(url(addon="x" * 256))
    assert (response.status_code, response.get_json()) == (400, {"results": False, "error": "invalid addon id"})


def test_addon_id_of_255_characters_is_fine(client):
    assert client.get(url(addon="x" * 255)).get_json() == {"results": False}


def test_head_is_served(client):
    response = client.head(url())
    assert (response.status_code, response.data) == (200, b"")


def test_missing_trailing_slash_redirects(client):
    assert client.get(url().rstrip("/")).status_code == 308


@pytest.fixture
def guarded(make_app):
    return make_app(client_has_addon_token=TOKEN).test_client()


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_token_required_when_configured(guarded, header):
    headers = {"Authorization": header} if header else {}
    response = guarded.get(url(), headers=headers)
    assert response.status_code == 401
    assert response.get_json() == {"results": False, "error": "unauthorized"}
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Cache-Control"] == "no-store"


def test_right_token_is_accepted(guarded):
    response = guarded.get(url(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.get_json() == {"results": True}


def test_authentication_comes_before_validation(guarded):
    assert guarded.get(url("not-a-hash", "x" * 300)).status_code == 401


def test_without_a_token_the_route_fails_closed(make_app):
    closed = make_app(client_has_addon_public=False).test_client()
    response = closed.get(url())
    assert (response.status_code, response.get_json()) == (401, {"results": False, "error": "unauthorized"})
    assert response.headers["WWW-Authenticate"] == "Bearer"
    # even a bearer header does not help when no token is configured
    assert closed.get(url(), headers={"Authorization": "Bearer "}).status_code == 401


def test_public_opt_out_opens_the_route_without_a_token(make_app):
    opened = make_app(client_has_addon_public=True).test_client()
    assert opened.get(url()).get_json() == {"results": True}


def test_a_configured_token_wins_over_the_public_flag(make_app):
    both = make_app(client_has_addon_token=TOKEN, client_has_addon_public=True).test_client()
    assert both.get(url()).status_code == 401
    assert both.get(url(), headers={"Authorization": f"Bearer {TOKEN}"}).get_json() == {"results": True}
