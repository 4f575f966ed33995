"""``python -m taar_etl.taar_lite_guidranking``: TAARlite install ranking (SPEC §8.4).

Input: the ``addons`` table (one row per ping × active add-on) for D. Output:
artifact ``ranking`` (``taar/lite/guid_install_ranking.json.bz2`` + dated copy),
``{guid: distinct clients}`` over rows of D whose ``addon_id`` is non-empty and
passes the add-on rules 1-4 of SPEC §7.4, on channel ``--channel`` (``all``
disables), with a client id. No ``"null"`` key. Only GUIDs that AMO lists (keys of
the ``amo_database`` dated D in the model store; the latest copy only with
``--allow-latest-inputs``) and that reach ``--min-installs`` clients (default 10,
the documented floor; lower is refused) are published: unlisted and enterprise
GUIDs often carry e-mail addresses or company names.

With ``--source bq`` the count runs server-side as one BigQuery aggregation whose
eligibility conditions are :func:`taar.eligibility.sql_condition` (the same rule
table as the Python and Spark predicates); with a Parquet root the same
aggregation runs in-process with pyarrow, its filter built from that rule table
too. Only D's partition and the needed columns are read. The threshold is part of
both aggregations (``HAVING`` in SQL); the AMO-listed filter is applied to their
result by :func:`finish_ranking`, the one place both paths end.

Exit codes: 0 published; 1 no partition for D, no ``amo_database`` for D, no
eligible row left, or write error;
2 usage error; 3 the ranking failed validation.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping

from taar.eligibility import EXCLUDED, RULES, is_eligible, sql_condition
from taar_etl import sources
from taar_etl.cli import JobFailed, UsageError, base_parser, run_job

logger = logging.getLogger(__name__)

JOB = "taar_lite_guidranking"
COLUMNS = ("client_id", "normalized_channel", "addon_id", *(field for field, _, _ in RULES))
#: Documented floor of ``--min-installs`` (SPEC §8.4).
MIN_INSTALLS_FLOOR = 10


def _channel_ok(value, channel: str) -> bool:
    return channel == "all" or value == channel


def rank_rows(rows: Iterable[Mapping], listed, min_installs: int, channel: str = "release",
              excluded=EXCLUDED) -> dict[str, int]:
    """Reference implementation on Python rows: distinct clients per eligible listed add-on."""
    clients: dict[str, set] = {}
    for row in rows:
        if row.get("client_id") is None or not _channel_ok(row.get("normalized_channel"), channel):
            continue
        if is_eligible(row, excluded=excluded):
            clients.setdefault(row["addon_id"], set()).add(row["client_id"])
    return finish_ranking(((g, len(c)) for g, c in clients.items()), listed, min_installs)


def finish_ranking(counts: Iterable[tuple[str | None, int]], listed, min_installs: int) -> dict[str, int]:
    """Keep GUIDs in ``listed`` (AMO's) with at least ``min_installs`` clients; ints sorted by GUID.

    Null, empty and ``"null"`` keys never survive (they are not AMO GUIDs)."""
    listed = frozenset(listed)
    return {g: int(n) for g, n in sorted((g, n) for g, n in counts
                                         if g and g != "null" and g in listed and n and n >= max(min_installs, 1))}


def arrow_filter(channel: str = "release", excluded=EXCLUDED):
    """The eligibility rules (plus client id and channel) as a pyarrow compute expression."""
    import pyarrow.compute as pc

    addon_id = pc.field("addon_id")
    cond = pc.field("client_id").is_valid() & addon_id.is_valid() & (addon_id != "")
    if excluded:
        cond = cond & ~addon_id.isin(sorted(excluded))
    for field, kind, value in RULES:
        col = pc.field(field)
        if kind == "not_true":
            cond = cond & ~pc.coalesce(col, False)
        elif kind == "equals":
            cond = cond & pc.coalesce(col == value, False)
        elif kind == "equals_if_set":
            cond = cond & (col.is_null() | pc.coalesce(col == value, False))
        else:
            raise ValueError(f"unknown rule kind {kind!r}")
    if channel != "all":
        cond = cond & pc.coalesce(pc.field("normalized_channel") == channel, False)
    return cond


def rank_table(table, listed, min_installs: int, channel: str = "release", excluded=EXCLUDED) -> dict[str, int]:
    """The ranking of an Arrow table of ``addons`` rows (the local, embedded aggregation)."""
    kept = table.filter(arrow_filter(channel, excluded))
    counted = kept.group_by("addon_id").aggregate([("client_id", "count_distinct")])
    return finish_ranking(zip(counted.column("addon_id").to_pylist(),
                              counted.column("client_id_count_distinct").to_pylist(), strict=True), listed, min_installs)


def ranking_sql(table: str, channel: str = "release", excluded=EXCLUDED) -> str:
    """The BigQuery aggregation; parameters ``@date``, ``@min_installs`` and (unless ``all``) ``@channel``."""
    channel_cond = "" if channel == "all" else "\n  AND normalized_channel = @channel"
    return (f"SELECT addon_id, COUNT(DISTINCT client_id) AS installs\nFROM `{table}`\n"
            f"WHERE submission_date = @date\n  AND client_id IS NOT NULL{channel_cond}\n"
            f"  AND {sql_condition(excluded=excluded)}\nGROUP BY addon_id\n"
            f"HAVING COUNT(DISTINCT client_id) >= @min_installs")


def compute_ranking(options, listed) -> dict[str, int]:
    """Read D's rows from ``--source`` and aggregate them there (BigQuery) or here (pyarrow)."""
    if options.source == "bq":
        sources.check_complete("bq", "addons", options.date, options.date, options.allow_missing_days,
                               options.bq_project, sources.bq_tables(options.bq_tables))
        params = {"date": options.date, "min_installs": options.min_installs}
        if options.channel != "all":
            params["channel"] = options.channel
        table = sources.query(ranking_sql(sources.bq_tables(options.bq_tables)["addons"], options.channel), params,
                              options.bq_project)
        return finish_ranking(zip(table.column("addon_id").to_pylist(), table.column("installs").to_pylist(),
                                  strict=True), listed, options.min_installs)
    table = sources.read_table(options.source, "addons", COLUMNS, options.date, options.date,
                               allow_missing_days=options.allow_missing_days)
    logger.info("read %d addons rows for %s", table.num_rows, options.date, extra={"fields": {"rows": table.num_rows}})
    return rank_table(table, listed, options.min_installs, options.channel)


def listed_guids(store, date, allow_latest: bool) -> set[str]:
    """GUIDs of the ``amo_database`` dated ``date`` (the AMO-listed add-ons)."""
    from taar.publishing import read_artifact
    from taar.storage import ArtifactNotFound

    try:
        amo, descriptor = read_artifact(store, "amo_database", date=date)
    except ArtifactNotFound as exc:
        if not allow_latest:
            raise JobFailed(f"input 'amo_database' for {date:%Y-%m-%d} is missing ({exc}); "
                            "pass --allow-latest-inputs to use the latest copy") from exc
        amo, descriptor = read_artifact(store, "amo_database")
        logger.warning("input amo_database: no dated copy for %s, using version %s", date, descriptor.version)
    if not isinstance(amo, Mapping) or not amo:
        raise JobFailed(f"amo_database {descriptor.version} is empty or not a GUID mapping")
    return set(amo)


def build_parser():
    p = base_parser(__doc__, prog="python -m taar_etl.taar_lite_guidranking")
    p.add_argument("--min-installs", type=int, default=MIN_INSTALLS_FLOOR,
                   help=f"distinct clients a GUID needs to be published (>= {MIN_INSTALLS_FLOOR})")
    sources.add_bq_arguments(p)
    sources.add_completeness_argument(p)
    return p


def run(options) -> None:
    from taar.publishing import producer_tag, publish
    from taar.storage import open_model_store

    if options.min_installs < MIN_INSTALLS_FLOOR:
        raise UsageError(f"--min-installs must be >= {MIN_INSTALLS_FLOOR} (the documented floor), "
                         f"got {options.min_installs}")
    store = open_model_store(options.model_store)
    listed = listed_guids(store, options.date, options.allow_latest_inputs)
    ranking = compute_ranking(options, listed)
    if not ranking:
        raise JobFailed(f"no AMO-listed add-on with at least {options.min_installs} eligible installs in addons "
                        f"for {options.date} (channel {options.channel})")
    logger.info("ranking of %d add-ons", len(ranking), extra={"fields": {"addons": len(ranking)}})
    publish(store, "ranking", ranking, options.date, producer_tag(JOB), options.force_latest)


def main(argv: list[str] | None = None) -> int:
    return run_job(run, build_parser().parse_args(argv), JOB)


if __name__ == "__main__":
    sys.exit(main())
