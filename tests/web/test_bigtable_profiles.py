"""The service reading profiles from Bigtable (the cbtemulator), as in production (SPEC §3.1, §3.6)."""

from __future__ import annotations

import pytest

from taar.storage import open_profile_store
from tests.fixtures import web_models as fixtures

pytestmark = pytest.mark.integration


@pytest.fixture
def bigtable_client(make_app, bigtable_profile_uri):
    store = open_profile_store(bigtable_profile_uri)
    store.ensure_table()
    store.put_many(fixtures.profile_rows(), ts_ms=1_710_115_200_000)
    # The app opens its own store from the URI (TAAR_PROFILE_STORE), as in production.
    return make_app(profile_store=bigtable_profile_uri).test_client()


def test_known_client_is_read_from_bigtable(bigtable_client):
    response = bigtable_client.get(f"/v1/api/recommendations/{fixtures.KNOWN}/")
    assert response.get_json() == {"results": ["c@x", "d@x", "e@x"]}


def test_unknown_and_undecodable_rows_are_unknown_clients(bigtable_client, metrics):
    for client_id in (fixtures.UNKNOWN, fixtures.BROKEN):
        assert bigtable_client.get(f"/v1/api/recommendations/{client_id}/").get_json() == {"results": []}
    assert metrics.count("taar.profile_not_found") == 1
    assert metrics.count("taar.profile_error") == 1


def test_every_readrows_call_is_counted_beside_the_reads(bigtable_client, metrics):
    # one request at a time: each profile read is its own ReadRows call, so the two counts agree
    before = metrics.count("taar.profile_read_call")  # the app's warm-up read may or may not be counted
    for client_id in (fixtures.KNOWN, fixtures.UNKNOWN, fixtures.KNOWN):
        bigtable_client.get(f"/v1/api/recommendations/{client_id}/")
    assert metrics.count("taar.profile_read_call") - before == 3


def test_client_has_addon_reads_bigtable(bigtable_client):
    assert bigtable_client.get(f"/v1/api/client_has_addon/{fixtures.KNOWN}/a@x/").get_json() == {"results": True}


def test_heartbeat_pings_bigtable(bigtable_client):
    body = bigtable_client.get("/__heartbeat__").get_json()
    assert body["checks"]["profile_store"] == "ok"
