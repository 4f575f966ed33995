"""A fake addons.mozilla.org API over the synthetic catalogue (SPEC §7.6).

``python -m taar_dev.fake_amo --catalogue ./var/amo --port 8765`` serves, on
loopback, the ``catalogue.json`` / ``editorial.json`` written by
:mod:`taar_dev.synthetic` in both API shapes the AMO jobs read:

* ``GET /api/<v4|v5>/addons/search/`` — ``app``, ``type``, ``sort=created``,
  ``page``, ``page_size`` (default 25, at most 50), ``created__gte``,
  ``created__lt`` (ISO date or datetime, naive = UTC, or epoch seconds) and
  ``guid`` (comma list, at most 50). Sorted by creation time descending (ties:
  id descending). Answers ``{"count", "next", "previous", "page_count",
  "results"}`` with absolute ``next``/``previous`` URLs. A page reaching beyond
  ``max_window`` results is a 400, as Elasticsearch's result window is on AMO; a
  page past the last one is a 404.
* ``GET /api/<v>/addons/addon/<guid>/versions/`` — the add-on's versions, newest
  first, paginated the same way, each with ``created`` and its file(s).
* ``GET /api/<v>/addons/addon/<guid>/`` — one add-on record.
* ``GET /api/<v>/discovery/editorial/[?recommended=true]`` — ``{"results":
  [{"addon": {"guid": ...}}, ...]}``, malformed entries included as generated.

Shapes: v4 records carry ``current_version.files`` (a list, with
``is_webextension``), ``promoted`` as an object or null and ``categories`` as
``{"firefox": [...]}``; v5 records carry ``current_version.file`` (no
``is_webextension``), ``promoted`` as a list and ``categories`` as a list. As on
the real v5 API, legacy (non-webextension) add-ons are not served by v5 at all.
Unlisted add-ons (system, side-loaded) are served by neither.

Fault injection, deterministic for a seed: the n-th request of a given URL fails
iff ``sha256(seed, url, n)`` falls under ``fail_rate`` (status 500, 503 or 429;
the last two with ``Retry-After``), so a retrying client eventually gets through
whatever the thread interleaving; a page is served short (its last items
silently dropped) iff ``sha256(seed, url)`` falls under ``truncate_pages``, on
every attempt; ``latency_ms`` delays every response.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import http.server
import json
import logging
import math
import re
import sys
import threading
import time
import urllib.parse
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 50
MAX_GUIDS = 50
_ROUTES = (
    ("search", re.compile(r"^/api/(v4|v5)/addons/search/?$")),
    ("versions", re.compile(r"^/api/(v4|v5)/addons/addon/([^/]+)/versions/?$")),
    ("addon", re.compile(r"^/api/(v4|v5)/addons/addon/([^/]+)/?$")),
    ("editorial", re.compile(r"^/api/(v4|v5)/discovery/editorial/?$")),
)


class BadRequest(ValueError):
    """A client error: rendered as ``{"detail": message}`` with ``status``."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def _epoch(text):
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def parse_time(value, name):
    """Parse a ``created__*`` bound: ISO date/datetime (naive = UTC) or epoch seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: not an ISO date, datetime or epoch seconds: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _int_param(query, name, default):
    raw = query.get(name, [None])[-1]
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise BadRequest(f"{name} must be >= 1, got {value}")
    return value


class Catalogue:
    """The catalogue documents rendered once per API version."""

    def __init__(self, catalogue_dir):
        folder = Path(catalogue_dir)
        try:
            doc = json.loads((folder / "catalogue.json").read_text(encoding="utf-8"))
            self.editorial = json.loads((folder / "editorial.json").read_text(encoding="utf-8"))["results"]
        except (OSError, ValueError, KeyError) as exc:
            raise FileNotFoundError(f"no readable AMO catalogue in {folder}: {exc}") from exc
        self.addons = {a["guid"]: a for a in doc["addons"]}
        self.created = {a["guid"]: _epoch(a["created"]) for a in doc["addons"]}
        self.served = {}
        for version in ("v4", "v5"):
            keep = [a for a in doc["addons"] if a["listed"] and (version == "v4" or a["is_webextension"])]
            keep.sort(key=lambda a: (self.created[a["guid"]], a["id"]), reverse=True)
            self.served[version] = keep
        self.served_guids = {v: {a["guid"] for a in recs} for v, recs in self.served.items()}


def _file(version_rec, api, base):
    f = version_rec["file"]
    out = {
        "id": f["id"],
        "created": f["created"],
        "hash": "sha256:" + hashlib.sha256(str(f["id"]).encode()).hexdigest(),
        "size": f["size"],
        "status": f["status"],
        "url": f"{base}/firefox/downloads/file/{f['id']}/addon.xpi",
    }
    if api == "v4":
        out["is_webextension"] = f["is_webextension"]
        out["platform"] = "all"
    return out


def render_version(rec, version_rec, api, base):
    """One version object in the ``api`` shape."""
    out = {"id": version_rec["id"], "version": version_rec["version"], "created": version_rec["created"],
           "channel": "listed", "license": {"slug": "MPL-2.0"}}
    if api == "v4":
        out["files"] = [_file(version_rec, api, base)]
    else:
        out["file"] = _file(version_rec, api, base)
    return out


def render_addon(rec, api, base):
    """One add-on search/detail record in the ``api`` shape."""
    promoted = rec["promoted"]
    apps = ["firefox", "android"]
    ratings = rec["ratings"]
    out = {
        "id": rec["id"],
        "guid": rec["guid"],
        "slug": rec["slug"],
        "type": rec["type"],
        "default_locale": rec["default_locale"],
        "name": rec["name"],
        "summary": rec["summary"],
        "created": rec["created"],
        "last_updated": rec["last_updated"],
        "status": "public",
        "is_disabled": False,
        "is_experimental": False,
        "requires_payment": False,
        "url": f"{base}/en-US/firefox/addon/{rec['slug']}/",
        "ratings": {"average": ratings["average"], "bayesian_average": ratings["average"],
                    "count": ratings["count"], "text_count": ratings["count"] // 3},
        "average_daily_users": rec["average_daily_users"],
        "weekly_downloads": rec["average_daily_users"] // 7,
        "current_version": render_version(rec, rec["versions"][-1], api, base),
    }
    if api == "v4":
        out["promoted"] = {"category": promoted, "apps": apps} if promoted else None
        out["categories"] = {"firefox": [rec["category"]]}
    else:
        out["promoted"] = [{"category": promoted, "apps": apps}] if promoted else []
        out["categories"] = [rec["category"]]
    return out


def _unit(*parts):
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64, digest[8]


class FakeAMO:
    """The fake AMO server; ``start()`` returns its base URL, ``stop()`` shuts it down.

    ``requests`` is the request log (dicts with method, path, query, route,
    status) and ``counters`` counts requests by route and by status.
    """

    def __init__(self, catalogue_dir, max_window=25000, fail_rate=0.0, latency_ms=0, truncate_pages=0.0,
                 seed=0, host="127.0.0.1", port=0, retry_after_s=1):
        for name, rate in (("fail_rate", fail_rate), ("truncate_pages", truncate_pages)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        self.catalogue = Catalogue(catalogue_dir)
        self.max_window = max_window
        self.fail_rate = fail_rate
        self.latency_ms = latency_ms
        self.truncate_pages = truncate_pages
        self.seed = seed
        self.host, self.port = host, port
        self.retry_after_s = retry_after_s
        self.requests = []
        self.counters = collections.Counter()
        self._attempts = collections.Counter()
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self):
        """Bind and serve in a daemon thread; return the base URL (``http://host:port``)."""
        handler = type("Handler", (_Handler,), {"amo": self})
        self._server = http.server.ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-amo", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    @property
    def base_url(self):
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- request handling -------------------------------------------------------------------------
    def handle(self, path, query_string, base):
        """Return ``(status, headers, body_dict, route)`` for one GET."""
        query = urllib.parse.parse_qs(query_string, keep_blank_values=True)
        canonical = path + "?" + urllib.parse.urlencode(sorted((k, v) for k, vs in query.items() for v in vs))
        route, match = next(((name, m) for name, rx in _ROUTES if (m := rx.match(path))), (None, None))
        if path == "/":
            return 200, {}, {"service": "fake-amo", "addons": len(self.catalogue.addons)}, "root"
        if route is None:
            return 404, {}, {"detail": "Not found."}, "unknown"
        with self._lock:
            attempt = self._attempts[canonical]
            self._attempts[canonical] += 1
        u, pick = _unit(self.seed, "fail", canonical, attempt)
        if u < self.fail_rate:
            status = (500, 503, 429)[pick % 3]
            headers = {"Retry-After": str(self.retry_after_s)} if status != 500 else {}
            return status, headers, {"detail": f"injected failure {status}"}, route
        try:
            api = match.group(1)
            if route == "search":
                body = self._search(api, query, path, base)
            elif route == "versions":
                body = self._versions(api, urllib.parse.unquote(match.group(2)), query, path, base)
            elif route == "addon":
                body = render_addon(self._addon(api, urllib.parse.unquote(match.group(2))), api, base)
            else:
                body = self._editorial(query)
        except BadRequest as exc:
            return exc.status, {}, {"detail": str(exc)}, route
        if "results" in body and "count" in body and self.truncate_pages > 0 and body["results"]:
            if _unit(self.seed, "truncate", canonical)[0] < self.truncate_pages:
                drop = max(1, len(body["results"]) // 5)
                body["results"] = body["results"][:-drop]
        return 200, {}, body, route

    def _addon(self, api, guid):
        if guid not in self.catalogue.served_guids[api]:
            raise BadRequest("Not found.", status=404)
        return self.catalogue.addons[guid]

    def _page(self, items, query, path, base, render):
        page = _int_param(query, "page", 1)
        size = min(_int_param(query, "page_size", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
        if page * size > self.max_window:
            raise BadRequest(f"page {page} of size {size} reaches beyond the result window of {self.max_window}")
        count = len(items)
        pages = max(1, math.ceil(count / size))
        if page > pages:
            raise BadRequest("Invalid page.", status=404)

        def link(p):
            params = {k: v[-1] for k, v in query.items()}
            params["page"] = str(p)
            return f"{base}{path}?{urllib.parse.urlencode(params)}"

        return {
            "count": count,
            "page_count": pages,
            "next": link(page + 1) if page < pages else None,
            "previous": link(page - 1) if page > 1 else None,
            "results": [render(x) for x in items[(page - 1) * size : page * size]],
        }

    def _search(self, api, query, path, base):
        app = query.get("app", ["firefox"])[-1]
        if app not in ("firefox", "android"):
            raise BadRequest(f"app must be firefox or android, got {app!r}")
        sort = query.get("sort", ["created"])[-1]
        if sort not in ("created", ""):
            raise BadRequest(f"only sort=created is supported, got {sort!r}")
        items = self.catalogue.served[api]
        kind = query.get("type", [""])[-1]
        if kind:
            items = [a for a in items if a["type"] == kind]
        created = self.catalogue.created
        if query.get("created__gte", [""])[-1]:
            lo = parse_time(query["created__gte"][-1], "created__gte")
            items = [a for a in items if created[a["guid"]] >= lo]
        if query.get("created__lt", [""])[-1]:
            hi = parse_time(query["created__lt"][-1], "created__lt")
            items = [a for a in items if created[a["guid"]] < hi]
        if query.get("guid", [""])[-1]:
            wanted = {g for g in query["guid"][-1].split(",") if g}
            if len(wanted) > MAX_GUIDS:
                raise BadRequest(f"guid accepts at most {MAX_GUIDS} GUIDs, got {len(wanted)}")
            items = [a for a in items if a["guid"] in wanted]
        return self._page(items, query, path, base, lambda rec: render_addon(rec, api, base))

    def _versions(self, api, guid, query, path, base):
        rec = self._addon(api, guid)
        newest_first = rec["versions"][::-1]
        return self._page(newest_first, query, path, base, lambda v: render_version(rec, v, api, base))

    def _editorial(self, query):
        only = query.get("recommended", [""])[-1].lower() == "true"
        return {
            "results": [
                {"addon": {"guid": e["guid"]}, "custom_heading": None, "custom_description": ""}
                for e in self.catalogue.editorial
                if e["recommended"] or not only
            ]
        }

    def record(self, method, path, query, route, status):
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "route": route, "status": status})
            self.counters[route] += 1
            self.counters[status] += 1


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive clients otherwise wait ~40 ms per response (delayed ACK)
    wbufsize = 1 << 16  # headers and body leave in one write
    amo: FakeAMO  # set on the subclass made by FakeAMO.start

    def do_GET(self):  # noqa: N802 (http.server naming)
        amo = self.amo
        if amo.latency_ms:
            time.sleep(amo.latency_ms / 1000.0)
        path, _, query = self.path.partition("?")
        base = f"http://{self.headers.get('Host') or amo.base_url.split('//', 1)[1]}"
        try:
            status, headers, body, route = amo.handle(path, query, base)
        except Exception:  # a bug in the fake must show as a 500, not a dropped connection
            logger.exception("fake AMO failed on %s", self.path)
            status, headers, body, route = 500, {}, {"detail": "internal error"}, "error"
        amo.record("GET", path, query, route, status)  # before replying, so a client sees its request logged
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        logger.debug("%s " + fmt, self.address_string(), *args)


def main(argv=None) -> int:
    """Serve until interrupted; exit 2 when the catalogue is missing."""
    p = argparse.ArgumentParser(prog="python -m taar_dev.fake_amo", description=__doc__.split("\n\n")[0])
    p.add_argument("--catalogue", default="./var/amo", help="directory with catalogue.json and editorial.json")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-window", type=int, default=25000, help="search result window (default %(default)s)")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests failing with 500/503/429")
    p.add_argument("--latency-ms", type=int, default=0, help="delay added to every response")
    p.add_argument("--truncate-pages", type=float, default=0.0, help="share of pages served silently short")
    p.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on 429/503")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        amo = FakeAMO(args.catalogue, max_window=args.max_window, fail_rate=args.fail_rate,
                      latency_ms=args.latency_ms, truncate_pages=args.truncate_pages, seed=args.seed,
                      host=args.host, port=args.port, retry_after_s=args.retry_after)
    except (FileNotFoundError, ValueError) as exc:
        p.error(str(exc))
    url = amo.start()
    print(f"fake AMO serving {len(amo.catalogue.addons)} add-ons on {url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        amo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
