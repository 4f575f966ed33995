"""``python -m taar_etl.taar_amowhitelist``: filtered views of the AMO database (SPEC §8.2).

Input: artifact ``amo_database`` dated D (``--allow-latest-inputs`` falls back to
the latest copy when the dated one is absent). Outputs, each a dict GUID → record:

* ``amo_whitelist_db``: not excluded (``--exclude-guids``), has files, first file a
  webextension, rating ≥ ``--min-rating``, ``first_create_date`` ≤ end of D −
  ``--min-age-days`` (ages derive from D, never from the wall clock);
* ``amo_featured_db``: ``"recommended"`` among the promoted categories;
* ``amo_featured_whitelist_db``: in both.

Records of either AMO API shape (v4 / v5) are read through :mod:`taar_etl.amo`.
A record lacking a field a rule needs fails that rule. All three views are
validated before any is published.

Exit codes: 0 published; 1 input missing or write error; 2 usage error; 3 a view
failed validation (e.g. an empty whitelist or featured database).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Iterable, Mapping

from taar.eligibility import EXCLUDED
from taar_etl import amo
from taar_etl.cli import base_parser, end_of_day, run_job

logger = logging.getLogger(__name__)

JOB = "taar_amowhitelist"
FEATURED_CATEGORY = "recommended"
OUTPUT_KEYS = ("amo_whitelist_db", "amo_featured_db", "amo_featured_whitelist_db")


def passes_whitelist(record: Mapping, date: dt.date, min_rating: float = 3.0, min_age_days: int = 60,
                     excluded: Iterable[str] = EXCLUDED) -> bool:
    """True when ``record`` passes every whitelist rule of SPEC §8.2 for logical date ``date``."""
    if not isinstance(record, Mapping) or record.get("guid") in set(excluded):
        return False
    files = amo.current_files(record)
    if not files or not amo.is_webextension(record):
        return False
    if amo.rating(record) < min_rating:
        return False
    created = amo.parse_time(record.get("first_create_date"))
    return created is not None and created <= end_of_day(date) - dt.timedelta(days=min_age_days)


def is_featured(record: Mapping) -> bool:
    """True when AMO promotes the add-on in the ``recommended`` category."""
    return isinstance(record, Mapping) and FEATURED_CATEGORY in amo.promoted_categories(record)


def build_views(database: Mapping[str, Mapping], date: dt.date, min_rating: float = 3.0, min_age_days: int = 60,
                excluded: Iterable[str] = EXCLUDED) -> dict[str, dict]:
    """The three outputs, keyed by artifact key, each sorted by GUID."""
    excluded = frozenset(excluded)
    whitelist = {g: r for g, r in sorted(database.items())
                 if passes_whitelist(r, date, min_rating, min_age_days, excluded)}
    featured = {g: r for g, r in sorted(database.items()) if is_featured(r)}
    both = {g: r for g, r in featured.items() if g in whitelist}
    return {"amo_whitelist_db": whitelist, "amo_featured_db": featured, "amo_featured_whitelist_db": both}


def read_input(store, key: str, date: dt.date, allow_latest: bool):
    """The dated copy of ``key`` for ``date``; the latest one only with ``allow_latest``."""
    from taar.publishing import read_artifact
    from taar.storage import ArtifactNotFound

    try:
        return read_artifact(store, key, date=date)
    except ArtifactNotFound:
        if not allow_latest:
            raise
        logger.warning("%s has no dated copy for %s: using the latest (--allow-latest-inputs)", key, date)
        return read_artifact(store, key)


def build_parser():
    p = base_parser(__doc__, prog="python -m taar_etl.taar_amowhitelist")
    p.add_argument("--min-rating", type=float, default=3.0, help="minimum AMO average rating")
    p.add_argument("--min-age-days", type=int, default=60, help="minimum age of the first file at the end of D")
    p.add_argument("--exclude-guids", default=",".join(sorted(EXCLUDED)), help="comma list of GUIDs never listed")
    return p


def run(options) -> None:
    from taar import artifacts
    from taar.publishing import producer_tag, publish
    from taar.storage import open_model_store

    store = open_model_store(options.model_store)
    database, descriptor = read_input(store, "amo_database", options.date, options.allow_latest_inputs)
    excluded = {g.strip() for g in options.exclude_guids.split(",") if g.strip()}
    views = build_views(database, options.date, options.min_rating, options.min_age_days, excluded)
    logger.info("AMO views from %d records (%s): whitelist %d, featured %d, featured whitelist %d",
                len(database), descriptor.version, *(len(views[k]) for k in OUTPUT_KEYS),
                extra={"fields": {"input": len(database), **{k: len(v) for k, v in views.items()}}})
    for key in OUTPUT_KEYS:  # all three are checked before any is written
        artifacts.validate(key, views[key])
    for key in OUTPUT_KEYS:
        publish(store, key, views[key], options.date, producer_tag(JOB), options.force_latest)


def main(argv: list[str] | None = None) -> int:
    return run_job(run, build_parser().parse_args(argv), JOB)


if __name__ == "__main__":
    sys.exit(main())
