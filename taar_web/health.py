"""Heartbeat checks (SPEC §4.8): pure functions returning dockerflow messages, and their aggregation.

Each check takes plain values and returns a list of dockerflow ``CheckMessage``
objects whose ids are the stable constants below (operators alert on them).
:func:`aggregate` turns ``{check name: messages}`` into the ``/__heartbeat__``
payload and status code. Only :class:`HealthChecker` touches the world: it reads
the registry and pings the profile store, caching the ping for up to 10 s.
"""

from __future__ import annotations

import datetime as dt
import threading

from dockerflow.checks import ERROR, CheckMessage, Error, level_to_text
from dockerflow.checks import Warning as CheckWarning

MODEL_NOT_LOADED = "taar.models.E001"
MODEL_INVALID = "taar.models.E002"
MODEL_STALE = "taar.models.E003"
MODEL_REFRESH_FAILED = "taar.models.W001"
OPTIONAL_MODEL_MISSING = "taar.models.W002"
OPTIONAL_MODEL_STALE = "taar.models.W003"
GROUP_HELD_BACK = "taar.models.W004"
PROFILE_STORE_UNREACHABLE = "taar.profile_store.E001"
RANKING_UNUSABLE = "taar.taarlite.E001"

PING_CACHE_SECONDS = 10.0
_NOT_LOADED = ("missing", "invalid", "error")
_DEGRADATION = {
    "whitelist": "test ids answer promoted add-ons only; candidate pool falls back to 10 x limit",
    "ensemble_weights": "ensemble weights default to 1.0 each",
    "coinstall": "TAARlite answers []",
    "ranking": "TAARlite answers []",
}


def check_model(key: str, entry: dict, max_age_hours: float) -> list[CheckMessage]:
    """``models.<key>``: one ``/__models__`` entry against the staleness limit."""
    status, required = entry["status"], entry["required"]
    if status in _NOT_LOADED:
        detail = (entry.get("last_refresh") or {}).get("error") or status
        effect = _DEGRADATION.get(key, "its recommender cannot recommend")
        if not required:
            return [CheckWarning(f"optional model {key} is {status} ({detail}); {effect}", id=OPTIONAL_MODEL_MISSING)]
        ident = MODEL_INVALID if status == "invalid" else MODEL_NOT_LOADED
        return [Error(f"required model {key} is {status}: {detail}", id=ident)]
    if status == "stale":
        text = f"model {key} is {entry['age_hours']:.1f} h old (limit {max_age_hours:g} h)"
        if required:
            return [Error(text, id=MODEL_STALE)]
        return [CheckWarning(text, id=OPTIONAL_MODEL_STALE)]
    last = entry.get("last_refresh") or {}
    if last.get("outcome") == "failed":
        return [CheckWarning(f"last refresh of {key} failed, serving version {entry['version']}: {last.get('error')}",
                             id=MODEL_REFRESH_FAILED)]
    return []


def check_groups(groups: dict) -> list[CheckMessage]:
    """``models.groups``: a group held back because its members' taar-dates differ (a warning)."""
    if not groups:
        return []
    # one message (messages are keyed by id): every held-back group's reason
    return [CheckWarning("; ".join(entry["reason"] for _, entry in sorted(groups.items())), id=GROUP_HELD_BACK)]


def check_profile_store(ok: bool, detail: str, timeout_ms: int) -> list[CheckMessage]:
    """``profile_store``: the result of a ``ping`` within the profile deadline."""
    if ok:
        return []
    return [Error(f"profile store did not answer within {timeout_ms} ms: {detail}", id=PROFILE_STORE_UNREACHABLE)]


def check_ranking(loaded: bool, usable: bool) -> list[CheckMessage]:
    """``taarlite.ranking``: a loaded ranking must be non-empty with a finite mean (SPEC §5.6)."""
    if loaded and not usable:
        return [Error("TAARlite ranking is empty or its mean is not finite; the min-installs filter is off",
                      id=RANKING_UNUSABLE)]
    return []


def aggregate(results: dict[str, list[CheckMessage]]) -> tuple[dict, int]:
    """The ``/__heartbeat__`` payload and HTTP status (500 once any check reaches ERROR)."""
    checks, details, worst = {}, {}, 0
    for name, messages in results.items():
        level = max((m.level for m in messages), default=0)
        worst = max(worst, level)
        checks[name] = level_to_text(level)
        if messages:
            details[name] = {"level": level, "messages": {m.id: m.msg for m in messages}}
    payload = {"status": level_to_text(worst), "checks": checks, "details": details}
    return payload, (500 if worst >= ERROR else 200)


class HealthChecker:
    """Runs every heartbeat check for one app; the profile-store ping is cached ≤ 10 s."""

    def __init__(self, registry, profile_store, settings, clock):
        self.registry = registry
        self.profile_store = profile_store
        self.settings = settings
        self.clock = clock
        self._ping: tuple[dt.datetime, bool, str] | None = None
        self._lock = threading.Lock()

    def ping_profile_store(self) -> tuple[bool, str]:
        now = self.clock()
        with self._lock:
            cached = self._ping
        if cached is not None and 0 <= (now - cached[0]).total_seconds() < PING_CACHE_SECONDS:
            return cached[1], cached[2]
        try:
            ok = bool(self.profile_store.ping(self.settings.profile_timeout_s))
            detail = "" if ok else "ping failed"
        except Exception as exc:  # a health check reports trouble, it never raises
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._ping = (now, ok, detail)
        return ok, detail

    def run(self) -> tuple[dict, int]:
        report = self.registry.report()
        results = {
            f"models.{key}": check_model(key, entry, self.registry.max_age_hours(self.registry.states[key]))
            for key, entry in report.items()
        }
        results["models.groups"] = check_groups(self.registry.groups_report())
        ok, detail = self.ping_profile_store()
        results["profile_store"] = check_profile_store(ok, detail, self.settings.profile_timeout_ms)
        engine = self.registry.snapshot.engine
        results["taarlite.ranking"] = check_ranking(report["ranking"]["status"] not in ("missing", "invalid", "error"),
                                                    bool(getattr(engine, "ranking_usable", False)))
        return aggregate(results)
