"""Operations endpoints: dockerflow (SPEC §4.8), ``/__models__`` and ``/__openapi__.json`` (§4.9).

These follow the dockerflow contract with the dockerflow library's check
messages and levels, but are served by this blueprint rather than the
``dockerflow.flask`` extension: that extension keeps checks in a process-wide
registry (two apps in one test process would share them), adds an
``/__error__`` route that answers 500, and renders a missing version file as
plain text, all at odds with SPEC §4.
"""

from __future__ import annotations

import json
import os

import flask

from .. import services

bp = flask.Blueprint("ops", __name__)
NO_CACHE = "no-cache"


def _json(body, status: int = 200) -> flask.Response:
    response = flask.jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = NO_CACHE
    return response


@bp.route("/__lbheartbeat__", methods=["GET"])
def lbheartbeat():
    """Liveness for the load balancer: touches nothing."""
    return flask.Response(b"", status=200, headers={"Cache-Control": NO_CACHE})


@bp.route("/__heartbeat__", methods=["GET"])
def heartbeat():
    """Every health check; 500 once one reaches error."""
    payload, status = services.current().health.run()
    return _json(payload, status)


@bp.route("/__version__", methods=["GET"])
def version():
    """The deployed ``version.json`` (path ``TAAR_VERSION_FILE``)."""
    path = services.current().settings.version_file
    try:
        with open(path, encoding="utf-8") as fh:
            content = json.load(fh)
    except (OSError, ValueError):
        response = flask.jsonify({"error": "version.json not found"})
        response.status_code = 404
        response.headers["Cache-Control"] = "no-store"
        return response
    return _json(content)


@bp.route("/__models__", methods=["GET"])
def models():
    """Per-artifact state of this worker's model registry."""
    svc = services.current()
    process = flask.current_app.extensions["taar_process"]
    return _json({
        "process": {"pid": os.getpid(), "started_at": process["started_at"]},
        "models": svc.registry.report(),
        "groups": svc.registry.groups_report(),
    })


@bp.route("/__openapi__.json", methods=["GET"])
def openapi():
    """The OpenAPI 3 document of every route (package data ``taar_web/openapi.json``)."""
    document = flask.current_app.extensions["taar_openapi"]
    return flask.Response(document, status=200, mimetype="application/json",
                          headers={"Cache-Control": NO_CACHE})
