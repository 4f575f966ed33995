"""``python -m taar_etl.taar_update_whitelist``: the curated whitelist (SPEC §8.3).

Input: AMO's editorial "Recommended" feed (``--url``, default
``<amo-url>/api/v5/discovery/editorial/``, with ``recommended=true`` unless
``--no-only-recommended``), fetched with the retry policy of SPEC §8.1.
Output: artifact ``whitelist`` (``addon_recommender/only_guids_top_200.json.bz2``
+ dated copy), the sorted, deduplicated GUIDs.

Entries without a usable GUID (missing, null, ``""``, ``"null"``) are dropped.
With ``--validate-guids`` every GUID must be found by an AMO search ``guid=``
query (batches of at most 50). A list shorter than ``--min-size`` is refused
unless ``--allow-short``: a feed outage must not shrink the service's pool.

Exit codes: 0 published; 1 the feed could not be fetched (non-200 after retries)
or write error; 2 usage error; 3 too short, unknown GUIDs, or invalid list.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from taar_etl import amo
from taar_etl.cli import UsageError, ValidationError, base_parser, run_job

logger = logging.getLogger(__name__)

JOB = "taar_update_whitelist"
VALIDATION_BATCH = 50
MAX_FEED_PAGES = 100


def editorial_guids(results: Iterable) -> list[str]:
    """``results[].addon.guid`` without missing/null/empty/"null" ones, first-occurrence order, unique."""
    guids = []
    for entry in results or ():
        addon = entry.get("addon") if isinstance(entry, dict) else None
        guid = addon.get("guid") if isinstance(addon, dict) else None
        if isinstance(guid, str) and guid.strip() and guid != "null":
            guids.append(guid)
    return list(dict.fromkeys(guids))


def curated_list(guids: Iterable[str], min_size: int, allow_short: bool) -> list[str]:
    """Sorted unique GUIDs; :class:`ValidationError` when fewer than ``min_size`` (unless allowed)."""
    out = sorted(set(guids))
    if len(out) < min_size:
        if not allow_short:
            raise ValidationError(f"the editorial feed gave {len(out)} GUIDs, fewer than --min-size {min_size} "
                                  f"(use --allow-short to publish anyway)")
        logger.warning("publishing a short whitelist of %d GUIDs (--allow-short)", len(out))
    return out


def fetch_feed(client: amo.AmoClient, url: str, only_recommended: bool) -> list[str]:
    """GUIDs of the editorial feed, following ``next`` links when the feed is paginated."""
    params = {"recommended": "true"} if only_recommended else None
    guids, pages = [], 0
    while url:
        body = client.get_json(url, params)
        guids.extend(editorial_guids(body.get("results")))
        pages += 1
        url, params = body.get("next"), None  # ``next`` carries its own query string
        if pages >= MAX_FEED_PAGES and url:
            raise RuntimeError(f"editorial feed still has a next page after {MAX_FEED_PAGES} pages")
    return list(dict.fromkeys(guids))


def missing_guids(client: amo.AmoClient, guids: list[str], batch: int = VALIDATION_BATCH) -> list[str]:
    """GUIDs that an AMO search ``guid=<batch>`` does not return."""
    found = set()
    for i in range(0, len(guids), batch):
        chunk = guids[i:i + batch]
        body = client.search({"guid": ",".join(chunk), "page_size": len(chunk)})
        found.update(r.get("guid") for r in body.get("results") or () if isinstance(r, dict))
    return [g for g in guids if g not in found]


def build_parser():
    p = base_parser(__doc__, prog="python -m taar_etl.taar_update_whitelist")
    p.add_argument("--amo-url", default=amo.DEFAULT_AMO_URL, help="AMO base URL")
    p.add_argument("--url", default=None, help="editorial feed URL (default <amo-url>/api/v5/discovery/editorial/)")
    p.add_argument("--only-recommended", action="store_true", default=True,
                   help="ask only for 'Recommended' entries (recommended=true)")
    p.add_argument("--no-only-recommended", dest="only_recommended", action="store_false",
                   help="take every editorial entry")
    p.add_argument("--validate-guids", action="store_true", help="check every GUID with an AMO search")
    p.add_argument("--min-size", type=int, default=100, help="refuse a shorter list")
    p.add_argument("--allow-short", action="store_true", help="publish a list shorter than --min-size")
    p.add_argument("--retries", type=int, default=6, help="retries per request")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    p.add_argument("--backoff-base", type=float, default=1.0, help="first retry delay (s)")
    p.add_argument("--backoff-cap", type=float, default=60.0, help="longest retry delay (s)")
    return p


def run(options) -> None:
    from taar.publishing import producer_tag, publish
    from taar.storage import open_model_store

    if options.min_size < 1:
        raise UsageError(f"--min-size must be >= 1, got {options.min_size}")
    client = amo.AmoClient(options.amo_url, "v5", amo.RetryPolicy(options.retries, options.backoff_base, options.backoff_cap, options.timeout))
    url = options.url or client.api_url("discovery/editorial/")
    guids = fetch_feed(client, url, options.only_recommended)
    logger.info("editorial feed: %d unique GUIDs", len(guids), extra={"fields": {"guids": len(guids)}})
    if options.validate_guids:
        missing = missing_guids(client, guids)
        if missing:
            raise ValidationError(f"{len(missing)} editorial GUIDs are unknown to AMO search: "
                                  f"{', '.join(sorted(missing))}")
    whitelist = curated_list(guids, options.min_size, options.allow_short)
    publish(open_model_store(options.model_store), "whitelist", whitelist, options.date, producer_tag(JOB), options.force_latest)


def main(argv: list[str] | None = None) -> int:
    return run_job(run, build_parser().parse_args(argv), JOB)


if __name__ == "__main__":
    sys.exit(main())
