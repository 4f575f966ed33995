"""``python -m taar_etl.taar_amodump``: dump the AMO extension catalogue (SPEC §8.1).

Inputs: the AMO API at ``--amo-url`` (search and versions endpoints, ``--api-version``
v5 or v4). Output: artifact ``amo_database``
(``addon_recommender/extended_addons_database.json.bz2`` + dated copy), a dict
GUID → AMO record as returned by search plus ``first_create_date``.

How: the search query (extensions for Firefox created before the end of D, by
creation date) is split into creation-date ranges, bisecting every range whose
reported count exceeds AMO's result window (``--max-window``), so each range can
be paged to the end. Pages are fetched by a bounded pool of ``--workers``
threads through :class:`taar_etl.amo.AmoClient` (timeouts, retries with backoff
on connection errors, 5xx and 429). The merged GUIDs are checked against the
counts AMO reported, per range and overall; a range that comes up short is
crawled once more (``--recrawl-passes``), then the job fails. Finally each
add-on's oldest version gives ``first_create_date``.

Exit codes: 0 published; 1 incomplete crawl, AMO failure (after retries, or any
4xx other than a vanished add-on), too many vanished add-ons, write error;
2 usage error; 3 the database failed validation. Nothing is published on failure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import sys

from taar_etl import amo
from taar_etl.cli import JobFailed, UsageError, base_parser, end_of_day, run_job
from taar_etl.parallel import Progress, bounded_map

logger = logging.getLogger(__name__)

JOB = "taar_amodump"
#: Lower bound used only to pick bisection midpoints; the oldest range stays open below.
AMO_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
SEARCH_PARAMS = {"app": "firefox", "type": "extension", "sort": "created"}


@dataclasses.dataclass
class Partition:
    """A creation-date range ``[gte, lt)`` of the search (``gte`` None = open below)."""

    gte: dt.datetime | None
    lt: dt.datetime
    count: int
    records: dict = dataclasses.field(default_factory=dict)

    def params(self) -> dict:
        out = {**SEARCH_PARAMS, "created__lt": amo.format_time(self.lt)}
        if self.gte is not None:
            out["created__gte"] = amo.format_time(self.gte)
        return out

    def label(self) -> str:
        low = amo.format_time(self.gte) if self.gte else "-inf"
        return f"[{low}, {amo.format_time(self.lt)})"


def allowed_missing(count: int, tolerance: float) -> int:
    """Slack for add-ons appearing or vanishing mid-crawl: max(2, ⌈tolerance × count⌉)."""
    return max(2, math.ceil(tolerance * count))


def is_complete(received: int, count: int, tolerance: float) -> bool:
    """SPEC §8.1 step 4: unique GUIDs received ≥ reported count − slack."""
    return received >= count - allowed_missing(count, tolerance)


def merge_page(records: dict, results) -> int:
    """Add a page's results to ``records`` by GUID; return how many results had no GUID."""
    skipped = 0
    for record in results or ():
        guid = record.get("guid") if isinstance(record, dict) else None
        if isinstance(guid, str) and guid:
            records[guid] = record
        else:
            skipped += 1
    return skipped


def first_create_date(record: dict, oldest_version: dict | None) -> str | None:
    """``created`` of the oldest version's file, else the add-on's own ``created`` (normalised to Z form)."""
    created = amo.version_created(oldest_version) if oldest_version else None
    created = created or record.get("created")
    parsed = amo.parse_time(created)
    return amo.format_time(parsed) if parsed else created if isinstance(created, str) and created else None


class Crawler:
    """Crawls the search endpoint for one logical date (SPEC §8.1 steps 1-5)."""

    def __init__(self, client: amo.AmoClient, page_size=50, workers=8, max_window=25000, tolerance=0.001,
                 max_missing_versions=0.01, recrawl_passes=1, progress_interval_s=30.0):
        self.client = client
        self.page_size = page_size
        self.workers = workers
        self.max_window = max_window
        self.tolerance = tolerance
        self.max_missing_versions = max_missing_versions
        self.recrawl_passes = recrawl_passes
        self.progress_interval_s = progress_interval_s

    @property
    def capacity(self) -> int:
        """Most results a range may hold: every page of it must end within the result window."""
        return (self.max_window // self.page_size) * self.page_size

    def _page(self, partition: Partition, page: int) -> dict:
        return self.client.search({**partition.params(), "page": page, "page_size": self.page_size})

    def _count(self, body: dict, what: str) -> int:
        count = body.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise JobFailed(f"AMO search for {what} reported no usable count ({count!r})")
        return count

    def partitions(self, end: dt.datetime) -> tuple[int, list[Partition]]:
        """Step 1-2: the total count and ranges each within the result window (page 1 kept)."""
        top = Partition(None, end, 0)
        body = self._page(top, 1)
        top.count = total = self._count(body, top.label())
        logger.info("AMO reports %d extensions created before %s", total, amo.format_time(end))
        stack, leaves = [(top, body)], []
        while stack:
            part, body = stack.pop()
            if part.count <= self.capacity:
                merge_page(part.records, body.get("results"))
                leaves.append(part)
                continue
            low = part.gte or AMO_EPOCH
            span_s = int((part.lt - low).total_seconds())
            if span_s < 2:
                raise JobFailed(f"cannot split {part.label()}: {part.count} add-ons created within one second "
                                f"exceed the result window {self.max_window}")
            mid = low + dt.timedelta(seconds=span_s // 2)
            halves = [Partition(part.gte, mid, 0), Partition(mid, part.lt, 0)]
            for half, half_body in bounded_map(lambda h: (h, self._page(h, 1)), halves, 2):
                half.count = self._count(half_body, half.label())
                stack.append((half, half_body))
            logger.info("split %s (%d add-ons) at %s", part.label(), part.count, amo.format_time(mid))
        leaves.sort(key=lambda p: p.lt)
        return total, leaves

    def _n_pages(self, part: Partition) -> int:
        return max(1, math.ceil(part.count / self.page_size))

    def fetch_pages(self, parts: list[Partition], first_page_done: bool) -> None:
        """Step 3: every page of every partition, ``workers`` requests at a time."""
        start = 2 if first_page_done else 1
        tasks = [(i, page) for i, part in enumerate(parts) for page in range(start, self._n_pages(part) + 1)]
        progress = Progress("search pages", len(tasks), self.progress_interval_s)
        skipped = 0
        for i, body in bounded_map(lambda t: (t[0], self._page(parts[t[0]], t[1])), tasks, self.workers):
            skipped += merge_page(parts[i].records, body.get("results"))
            progress.advance()
        progress.finish()
        if skipped:
            logger.warning("%d search results had no GUID and were ignored", skipped)

    def crawl(self, end: dt.datetime) -> dict:
        """Steps 1-4: GUID → search record for every extension created before ``end``."""
        total, parts = self.partitions(end)
        logger.info("crawling %d partitions", len(parts), extra={"fields": {"partitions": len(parts)}})
        self.fetch_pages(parts, first_page_done=True)
        short = [p for p in parts if not is_complete(len(p.records), p.count, self.tolerance)]
        for attempt in range(self.recrawl_passes):
            if not short:
                break
            logger.warning("pass %d: re-crawling %d incomplete partitions: %s", attempt + 2, len(short),
                           ", ".join(f"{p.label()} {len(p.records)}/{p.count}" for p in short[:5]))
            self.fetch_pages(short, first_page_done=False)
            short = [p for p in short if not is_complete(len(p.records), p.count, self.tolerance)]
        if short:
            detail = "; ".join(f"{p.label()}: {len(p.records)} of {p.count}" for p in short[:10])
            raise JobFailed(f"incomplete crawl: {len(short)} partitions short of their AMO count: {detail}")
        records = {}
        for part in parts:
            records.update(part.records)
        if not is_complete(len(records), total, self.tolerance):
            raise JobFailed(f"incomplete crawl: {len(records)} unique GUIDs received, AMO reported {total}")
        logger.info("received %d unique GUIDs (AMO reported %d)", len(records), total,
                    extra={"fields": {"guids": len(records), "reported": total}})
        return records

    def oldest_version(self, guid: str) -> dict | None:
        """The add-on's oldest listed version (versions are newest first); ``None`` when it has none."""
        body = self.client.versions(guid, 1, self.page_size)
        count = body.get("count")
        pages = body.get("page_count") or (math.ceil(count / self.page_size) if isinstance(count, int) else 1)
        if pages > 1:
            body = self.client.versions(guid, pages, self.page_size)
        results = [v for v in body.get("results") or () if isinstance(v, dict)]
        return results[-1] if results else None

    def add_first_create_dates(self, records: dict) -> dict:
        """Step 5-6: the database records, dropping vanished add-ons within the allowance."""

        def one(guid):
            try:
                return guid, self.oldest_version(guid), False
            except amo.AmoNotFound:
                return guid, None, True

        progress = Progress("versions", len(records), self.progress_interval_s)
        database, vanished = {}, []
        for guid, oldest, gone in bounded_map(one, sorted(records), self.workers):
            progress.advance()
            created = None if gone else first_create_date(records[guid], oldest)
            if created is None:
                vanished.append(guid)
                continue
            database[guid] = amo.with_first_create_date(records[guid], created)
        progress.finish()
        if vanished:
            logger.warning("%d add-ons vanished or had no creation date and were dropped: %s", len(vanished),
                           ", ".join(sorted(vanished)[:20]))
        if records and len(vanished) > self.max_missing_versions * len(records):
            raise JobFailed(f"{len(vanished)} of {len(records)} add-ons have no version data, more than "
                            f"--max-missing-versions {self.max_missing_versions:g}")
        return dict(sorted(database.items()))


def build_parser():
    p = base_parser(__doc__, prog="python -m taar_etl.taar_amodump")
    p.add_argument("--amo-url", default=amo.DEFAULT_AMO_URL, help="AMO base URL")
    p.add_argument("--api-version", choices=amo.API_VERSIONS, default="v5", help="AMO API version")
    p.add_argument("--page-size", type=int, default=50, help="search page size (AMO max 50)")
    p.add_argument("--workers", type=int, default=8, help="concurrent requests")
    p.add_argument("--max-window", type=int, default=25000, help="AMO search result window")
    p.add_argument("--retries", type=int, default=6, help="retries per request")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    p.add_argument("--backoff-base", type=float, default=1.0, help="first retry delay (s)")
    p.add_argument("--backoff-cap", type=float, default=60.0, help="longest retry delay (s)")
    p.add_argument("--completeness-tolerance", type=float, default=0.001, help="share of the count allowed missing")
    p.add_argument("--max-missing-versions", type=float, default=0.01,
                   help="share of add-ons that may vanish before their versions are read")
    p.add_argument("--recrawl-passes", type=int, default=1, help="re-crawls of short partitions before failing")
    p.add_argument("--progress-interval", type=float, default=30.0, help="seconds between progress logs")
    return p


def check_options(page_size: int, workers: int, max_window: int, retries: int, recrawl_passes: int,
                  completeness_tolerance: float, max_missing_versions: float) -> None:
    """Reject parameter values the crawl cannot use (exit 2)."""
    if not 1 <= page_size <= 50:
        raise UsageError(f"--page-size must be in [1, 50], got {page_size}")
    if workers < 1 or max_window < page_size or retries < 0 or recrawl_passes < 0:
        raise UsageError("--workers >= 1, --max-window >= --page-size, --retries >= 0, --recrawl-passes >= 0")
    if not 0 <= completeness_tolerance < 1 or not 0 <= max_missing_versions < 1:
        raise UsageError("--completeness-tolerance and --max-missing-versions must be in [0, 1)")


def run(options) -> None:
    from taar.publishing import producer_tag, publish
    from taar.storage import open_model_store

    check_options(options.page_size, options.workers, options.max_window, options.retries, options.recrawl_passes,
                  options.completeness_tolerance, options.max_missing_versions)
    client = amo.AmoClient(options.amo_url, options.api_version,
                           amo.RetryPolicy(options.retries, options.backoff_base, options.backoff_cap, options.timeout))
    crawler = Crawler(client, options.page_size, options.workers, options.max_window, options.completeness_tolerance,
                      options.max_missing_versions, options.recrawl_passes, options.progress_interval)
    records = crawler.crawl(end_of_day(options.date))
    database = crawler.add_first_create_dates(records)
    logger.info("AMO dump: %d add-ons, %d requests, %d retries", len(database), client.requests, client.retries,
                extra={"fields": {"addons": len(database), "requests": client.requests, "retries": client.retries}})
    store = open_model_store(options.model_store)
    publish(store, "amo_database", database, options.date, producer_tag(JOB), options.force_latest)


def main(argv: list[str] | None = None) -> int:
    return run_job(run, build_parser().parse_args(argv), JOB)


if __name__ == "__main__":
    sys.exit(main())
