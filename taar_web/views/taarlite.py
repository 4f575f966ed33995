"""TAARlite: ``GET /taarlite/api/v1/addon_recommendations/<guid>/`` (SPEC §4.7).

Answers are exactly ``TAARLITE_MAX_RESULTS`` GUIDs or none. They depend only on
the loaded ``coinstall`` and ``ranking`` artifacts and the request's options, so
the ETag is a digest of those two checksums plus mode, result count and explain
flag, and a matching ``If-None-Match`` is answered 304 without computing anything.
"""

from __future__ import annotations

import functools
import hashlib
import logging

import flask

from .. import request_log, sentry, services
from ..validation import parse_flag, parse_guid, parse_normalize

logger = logging.getLogger(__name__)
bp = flask.Blueprint("taarlite", __name__)


@functools.lru_cache(maxsize=256)
def taarlite_etag(coinstall_sha: str | None, ranking_sha: str | None, mode: str, limit: int,
                  explain: bool) -> str | None:
    """The strong ETag of a TAARlite answer, or None when the TAARlite models are not loaded.

    Memoised: the arguments take a handful of values per loaded model set (five
    modes x explain), so a request looks its ETag up instead of hashing.
    """
    if not coinstall_sha or not ranking_sha:
        return None
    seed = f"{coinstall_sha}:{ranking_sha}:{mode}:{limit}:{int(explain)}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def _recommend(engine, guid, mode, limit, metrics) -> list[tuple[str, float]]:
    try:
        recs = engine.guid_based.recommend(guid, mode=mode, limit=limit, metrics=metrics)
    except Exception as exc:  # degrade to [] (SPEC §4.1), counted
        metrics.incr("error_recommendation", tags=["route:taarlite"])
        logger.exception("TAARlite recommendation failed")
        sentry.capture(exc)
        return []
    return recs if len(recs) >= limit else []


#: The route's URL rule (the fast path of :mod:`taar_web.fastpath` logs the same one).
ROUTE = "/taarlite/api/v1/addon_recommendations/<guid>/"
#: The Cache-Control of an answer without models: an empty answer no cache should keep.
NO_STORE = "no-store"


def answer(svc, guid: str, mode: str, explain: bool, not_modified=None) -> tuple[dict | None, str | None, str]:
    """``(body, etag, cache_control)`` for validated inputs; binds ``guid``, ``mode`` and ``guids`` for the log.

    ``etag`` is None when the TAARlite models are not loaded (the body is then
    ``{"results": []}`` with :data:`NO_STORE`). ``not_modified(etag)`` says whether
    the caller's copy is current: then ``body`` is None (the view answers 304)
    and nothing is computed. Shared by the Flask view and the fast path
    (:mod:`taar_web.fastpath`), so both answer, bind and count exactly the same.
    """
    limit = svc.settings.taarlite_max_results
    request_log.bind(guid=guid)
    snapshot = svc.registry.snapshot  # one consistent model set for the whole request
    etag = taarlite_etag(snapshot.checksum("coinstall"), snapshot.checksum("ranking"), mode, limit, explain)
    if etag is None:
        return {"results": []}, None, NO_STORE
    cache_control = f"public, max-age={svc.settings.taarlite_cache_max_age}"
    if not_modified is not None and not_modified(etag):
        return None, etag, cache_control

    engine = snapshot.engine
    recs = _recommend(engine, guid, mode, limit, svc.metrics)
    request_log.bind(mode=mode, guids=[g for g, _ in recs])  # on the request.summary line
    body = {"results": [g for g, _ in recs]}
    if explain:
        body["result_info"] = [{"guid": g, "weight": w, "installs": engine.guid_based.installs(g)} for g, w in recs]
    return body, etag, cache_control


@bp.route(ROUTE, methods=["GET"])
def addon_recommendations(guid: str):
    """Add-ons often installed together with ``guid``."""
    args = flask.request.args
    guid = parse_guid(guid)
    mode = parse_normalize(args.get("normalize"))
    body, etag, cache_control = answer(services.current(), guid, mode, parse_flag(args.get("explain")),
                                       flask.request.if_none_match.contains_weak)
    response = flask.Response(status=304) if body is None else flask.jsonify(body)
    if etag is not None:
        response.set_etag(etag)
    response.headers["Cache-Control"] = cache_control
    return response
