"""``GET /v1/api/client_has_addon/<hashed_client_id>/<addon_id>/`` (SPEC §4.6).

Authentication comes before any validation, so an unauthenticated caller learns
nothing about the inputs. It fails closed: without ``TAAR_CLIENT_HAS_ADDON_TOKEN``
the route answers 401 unless ``TAAR_CLIENT_HAS_ADDON_PUBLIC=true``.
"""

from __future__ import annotations

import logging

import flask

from .. import request_log, services
from ..validation import check_bearer, parse_client_id, parse_guid

logger = logging.getLogger(__name__)
bp = flask.Blueprint("client_has_addon", __name__)


def _no_store(body: dict) -> flask.Response:
    response = flask.jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/v1/api/client_has_addon/<hashed_client_id>/<addon_id>/", methods=["GET"])
def client_has_addon(hashed_client_id: str, addon_id: str):
    """Whether the client's current active, non-system add-ons include ``addon_id``."""
    svc = services.current()
    check_bearer(svc.settings.client_has_addon_token, svc.settings.client_has_addon_public)
    client = parse_client_id(hashed_client_id, results=False)
    parse_guid(addon_id, results=False, what="addon id")
    request_log.bind(client_id=client.value, guid=addon_id)
    try:
        profile = svc.profile_fetcher.get(client.value)
    except Exception:  # ProfileFetcher never raises; belt and braces for a 200 either way
        logger.exception("profile lookup failed")
        svc.metrics.incr("profile_error")
        profile = None
    if profile is None:
        return _no_store({"results": False, "error": "No client found"})
    return _no_store({"results": addon_id in profile["installed_addons"]})
