"""AMO API client with the retry policy of SPEC §8.1 step 3, and AMO record views (step 6).

:class:`AmoClient` is what every AMO-reading job uses. Each request has a
timeout; connection errors, timeouts, 5xx and 429 answers are retried with
exponential backoff and jitter (``base_s · 2^attempt``, capped at ``cap_s``, half
fixed and half random), and a ``Retry-After`` header replaces the computed delay
(still capped). Any other 4xx fails at once: 404 as :class:`AmoNotFound` (the
caller decides whether a vanished add-on matters), the rest as
:class:`AmoHTTPError`. Sessions are per thread, so one client serves a thread
pool.

AMO records come in two shapes: API v4 puts the files of the current version in
``current_version.files`` (each with ``is_webextension``) and ``promoted`` is an
object or null; API v5 has a single ``current_version.file`` without
``is_webextension`` (v5 lists only webextensions) and ``promoted`` is a list.
The functions below read either shape, so jobs never look at the raw layout.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

logger = logging.getLogger(__name__)

DEFAULT_AMO_URL = "https://addons.mozilla.org"
API_VERSIONS = ("v5", "v4")
USER_AGENT = "taar-etl (+https://github.com/mozilla/taar)"


class AmoError(RuntimeError):
    """An AMO request failed for good (after retries, or at once for a 4xx)."""


class AmoHTTPError(AmoError):
    """AMO answered with an HTTP error status."""

    def __init__(self, status: int, url: str, detail: str = ""):
        super().__init__(f"AMO answered {status} for {url}{': ' + detail if detail else ''}")
        self.status = status
        self.url = url


class AmoNotFound(AmoHTTPError):
    """AMO answered 404 (e.g. an add-on removed during the crawl)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a request is tried (SPEC §8.1 step 3). ``retries`` counts retries after the first try."""

    retries: int = 6
    base_s: float = 1.0
    cap_s: float = 60.0
    timeout_s: float = 30.0

    def __post_init__(self):
        if self.retries < 0 or self.base_s < 0 or self.cap_s < 0 or self.timeout_s <= 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay_s(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        Exponential backoff with "equal jitter": half of ``min(cap, base·2^attempt)``
        is fixed and half is uniform random, so concurrent workers spread out but
        still back off. A server's ``Retry-After`` replaces it, capped at ``cap_s``.
        """
        if retry_after_s is not None:
            return min(self.cap_s, max(0.0, retry_after_s))
        ceiling = min(self.cap_s, self.base_s * (2 ** attempt))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); ``None`` if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class AmoClient:
    """JSON GETs against ``<base_url>/api/<api_version>/...`` with the retry policy."""

    def __init__(self, base_url: str = DEFAULT_AMO_URL, api_version: str = "v5",
                 policy: RetryPolicy | None = None, sleep=time.sleep):
        if api_version not in API_VERSIONS:
            raise ValueError(f"api_version must be one of {API_VERSIONS}, got {api_version!r}")
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._local = threading.local()
        self._rng = random.Random()
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            session.headers["Accept"] = "application/json"
            self._local.session = session
        return session

    def api_url(self, path: str) -> str:
        """Absolute URL of ``path`` under this client's API version."""
        return f"{self.base_url}/api/{self.api_version}/{path.lstrip('/')}"

    def get_json(self, url: str, params: Mapping | None = None) -> dict:
        """GET ``url`` (absolute, or a path under the API) and return the decoded JSON object."""
        import requests

        if "://" not in url:
            url = self.api_url(url)
        last: Exception | None = None
        for attempt in range(self.policy.retries + 1):
            if attempt:
                delay = self.policy.delay_s(attempt - 1, self._rng, getattr(last, "retry_after_s", None))
                logger.warning("retrying %s in %.2f s (attempt %d of %d): %s", url, delay, attempt + 1,
                               self.policy.retries + 1, last)
                with self._lock:
                    self.retries += 1
                self._sleep(delay)
            with self._lock:
                self.requests += 1
            try:
                return self._get_once(url, params)
            except _Retryable as exc:
                last = exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = _Retryable(f"{type(exc).__name__}: {exc}")
        raise AmoError(f"AMO request {url} failed after {self.policy.retries + 1} attempts: {last}")

    def _get_once(self, url: str, params: Mapping | None) -> dict:
        import requests

        try:
            response = self._session().get(url, params=params, timeout=self.policy.timeout_s)
        except requests.exceptions.ChunkedEncodingError as exc:  # connection dropped mid-body
            raise _Retryable(f"truncated response: {exc}") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
        if status == 404:
            raise AmoNotFound(status, response.url)
        if status >= 400:
            raise AmoHTTPError(status, response.url, response.text[:200])
        try:
            body = response.json()
        except ValueError as exc:  # a 200 with a cut-off body: transient
            raise _Retryable(f"invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise AmoError(f"AMO answered a JSON {type(body).__name__} for {response.url}, expected an object")
        return body

    # ------------------------------------------------------------------ endpoints

    def search(self, params: Mapping) -> dict:
        """One page of ``addons/search/`` (``count``, ``next``, ``page_count``, ``results``)."""
        return self.get_json("addons/search/", params)

    def versions(self, guid: str, page: int = 1, page_size: int = 50) -> dict:
        """One page of an add-on's versions, newest first; :class:`AmoNotFound` if it vanished."""
        return self.get_json(f"addons/addon/{quote(guid, safe='')}/versions/",
                             {"page": page, "page_size": page_size})


# --------------------------------------------------------------------------- record views (v4 and v5)


def current_files(record: Mapping) -> list:
    """Files of the current version: the v4 ``files`` list, or ``[file]`` for v5."""
    version = record.get("current_version")
    return version_files(version) if isinstance(version, Mapping) else []


def version_files(version: Mapping) -> list:
    """Files of one version object in either shape."""
    files = version.get("files")
    if isinstance(files, list):
        return [f for f in files if isinstance(f, Mapping)]
    file = version.get("file")
    return [file] if isinstance(file, Mapping) else []


def is_webextension(record: Mapping) -> bool:
    """The first file's ``is_webextension``; true when the flag is absent (v5); false without files."""
    files = current_files(record)
    if not files:
        return False
    flag = files[0].get("is_webextension", True)
    return True if flag is None else flag is True


def rating(record: Mapping) -> float:
    """``ratings.average`` as a float; 0.0 when missing or not a number."""
    ratings = record.get("ratings")
    value = ratings.get("average") if isinstance(ratings, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def promoted_categories(record: Mapping) -> list[str]:
    """Promoted categories: v4 ``{"category": c}`` or null, v5 ``[{"category": c}, ...]`` (or strings)."""
    promoted = record.get("promoted")
    entries = promoted if isinstance(promoted, list) else [promoted]
    out = []
    for entry in entries:
        category = entry.get("category") if isinstance(entry, Mapping) else entry
        if isinstance(category, str) and category:
            out.append(category)
    return out


def name(record: Mapping) -> str:
    """The add-on's name in its default locale (then en-US, then any); "" when absent."""
    value = record.get("name")
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping) or not value:
        return ""
    for locale in (record.get("default_locale"), "en-US"):
        if isinstance(value.get(locale), str):
            return value[locale]
    strings = [v for _, v in sorted(value.items()) if isinstance(v, str)]
    return strings[0] if strings else ""


def parse_time(value) -> dt.datetime | None:
    """An AMO timestamp (ISO 8601, ``Z`` or offset, optional fraction) as aware UTC; ``None`` if unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def format_time(when: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC (the form AMO and our artifacts use)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_created(version: Mapping) -> str | None:
    """Creation time of a version: its first file's ``created``, else the version's own."""
    for file in version_files(version):
        if isinstance(file.get("created"), str) and file["created"]:
            return file["created"]
    created = version.get("created")
    return created if isinstance(created, str) and created else None


def with_first_create_date(record: Mapping, first_create_date: str) -> dict:
    """The record as AMO returned it plus ``first_create_date`` (what ``amo_database`` stores)."""
    out = dict(record)
    out["first_create_date"] = first_create_date
    return out


def webextension_guids(database: Mapping[str, Mapping]) -> set[str]:
    """GUIDs of an ``amo_database`` that AMO reports as webextensions (rule 5 of SPEC §7.4)."""
    return {guid for guid, record in database.items() if is_webextension(record)}
