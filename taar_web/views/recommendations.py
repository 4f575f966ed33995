"""Per-user recommendations: ``GET|POST /v1/api/recommendations/<hashed_client_id>/`` (SPEC §4.2-4.5).

The view validates, asks the current snapshot's ``RecommendationManager``, merges
the caller's promoted add-ons in, and answers. Whatever goes wrong below the
validation (unknown client, profile-store trouble, a recommender exception) ends
in a 200 with whatever could be recommended, never a 5xx.
"""

from __future__ import annotations

import logging

import flask

from taar.recommenders import Recommendation

from .. import request_log, sentry, services
from ..validation import parse_client_id, parse_flag, parse_locale, parse_promoted, read_body

logger = logging.getLogger(__name__)
bp = flask.Blueprint("recommendations", __name__)

MAX_LOGGED_PLATFORM = 64


def merge_promoted(promoted, recs) -> list[tuple[str, float, bool]]:
    """SPEC §4.4: promoted first, stable sort by weight descending, first occurrence of each GUID wins.

    Returns ``(guid, weight, is_promoted)`` triples; nothing is truncated.
    """
    tagged = [(g, w, True) for g, w in promoted] + [(g, w, False) for g, w in recs]
    tagged.sort(key=lambda row: row[1], reverse=True)  # list.sort is stable, reverse included
    seen: set[str] = set()
    merged = []
    for guid, weight, is_promoted in tagged:
        if guid not in seen:
            seen.add(guid)
            merged.append((guid, weight, is_promoted))
    return merged


def _recommend(manager, client_id: str, limit: int, extra: dict, seed: int, metrics) -> Recommendation:
    try:
        return manager.recommend(client_id, limit, extra=extra, seed=seed, metrics=metrics)
    except Exception as exc:  # SPEC §4.2 step 3: degrade to no recommendations
        metrics.incr("error_recommendation")
        logger.exception("recommendation failed; answering promoted add-ons only")
        sentry.capture(exc)
        return Recommendation([], {}, seed, False, False)


#: The route's URL rule (the fast path of :mod:`taar_web.fastpath` logs the same one).
ROUTE = "/v1/api/recommendations/<hashed_client_id>/"


def answer(svc, client, promoted, locale: str | None, platform: str | None, explain: bool) -> dict:
    """The response body for validated inputs: recommend, merge the promoted add-ons in, log the outcome.

    Shared by the Flask view and the per-user fast path (:mod:`taar_web.fastpath`),
    so both answer, bind and count exactly the same.
    """
    settings = svc.settings
    seed = settings.random_seed if settings.random_seed is not None else svc.seed_source()
    request_log.bind(client_id=client.value, locale=locale,
                     platform=(platform or "")[:MAX_LOGGED_PLATFORM] or None, seed=seed)

    snapshot = svc.registry.snapshot  # one consistent model set for the whole request
    recommendation = _recommend(snapshot.manager, client.value, settings.max_results,
                                {"locale": locale, "platform": platform}, seed, svc.metrics)
    merged = merge_promoted(promoted, recommendation.results)
    request_log.bind(guids=recommendation.guids, test_client=recommendation.is_test or None)

    body = {"results": [guid for guid, _, _ in merged]}
    if explain:
        body["result_info"] = [
            {"guid": guid, "weight": weight,
             "sources": {"promoted": weight} if is_promoted else recommendation.sources.get(guid, {})}
            for guid, weight, is_promoted in merged
        ]
        body["seed"] = recommendation.seed
        body["model_versions"] = snapshot.versions
    return body


@bp.route(ROUTE, methods=["GET", "POST"])
def recommendations(hashed_client_id: str):
    """Personalised add-ons for one hashed client id, merged with the caller's promoted ones."""
    svc = services.current()
    request = flask.request
    client = parse_client_id(hashed_client_id)
    promoted = []
    if request.method == "POST":
        promoted = parse_promoted(read_body(svc.settings.max_body_bytes), svc.settings.max_promoted)
    args = request.args
    locale, rejected = parse_locale(args.get("locale"))
    if rejected:
        svc.metrics.incr("invalid_locale", tags=["route:recommendations"])
    body = answer(svc, client, promoted, locale, args.get("platform"), parse_flag(args.get("explain")))
    response = flask.jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response
