"""The model registry: load, refresh and swap the service's artifacts (SPEC §6.3, §4.8).

One :class:`ModelRegistry` per app (extension shape: build it, then
``init_app(app)`` stores it in ``app.extensions["taar_models"]``). Its single
operation is :meth:`ModelRegistry.check_once`, used both for the initial load
and for every refresh:

1. ``stat`` every service artifact; an object whose (name, generation, size) is
   the one already loaded is *unchanged* and costs nothing more.
2. Changed artifacts are downloaded in parallel, checksum-verified by
   ``read_artifact``, decoded and normalised. Members of a group
   (``item_matrix``+``addon_mapping``, ``donors``+``lr_curves``) move together, and
   only when their ``taar-date`` agree (members without metadata agree with
   anything); otherwise the group waits and the next check comes within 60 s.
3. A new :class:`~taar.recommenders.Engine` is built from the last good copy of
   everything plus the new objects and published as a new :class:`Snapshot` in
   one assignment. Requests read ``registry.snapshot`` once, so each request
   sees one consistent model set.

Failures never remove a loaded model: the last good copy keeps serving and the
artifact records ``last_refresh.outcome = "failed"`` with the error, counted in
``model_refresh`` and reported to Sentry. Only a *content* failure (decode or
validation, or an engine build that this artifact breaks) is remembered for that
object version; anything else (I/O, timeouts, auth, a checksum mismatch seen
during a concurrent write) is retried from the next pass on with capped,
jittered exponential backoff. One deadline (``TAAR_MODEL_LOAD_TIMEOUT_SECONDS``)
bounds a whole pass, stats and downloads together.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from taar import artifacts
from taar.publishing import UNKNOWN_VERSION, read_artifact
from taar.storage import ArtifactNotFound, ChecksumMismatch, StorageError

from . import sentry

logger = logging.getLogger(__name__)

EXTENSION = "taar_models"
#: Transient failures are retried after 5 s, 10 s, 20 s ... at most 300 s (or the
#: refresh interval when shorter), each delay scaled by a random factor in [0.5, 1].
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 300.0


@dataclass(frozen=True)
class Snapshot:
    """One consistent model set: what a request reads, swapped in one assignment."""

    engine: object
    manager: object
    models: Mapping[str, object]
    descriptors: Mapping[str, object]
    built_at: dt.datetime | None = None

    def version(self, key: str) -> str | None:
        descriptor = self.descriptors.get(key)
        return descriptor.version if descriptor is not None else None

    @property
    def versions(self) -> dict[str, str]:
        return {key: d.version for key, d in self.descriptors.items()}

    def checksum(self, key: str) -> str | None:
        descriptor = self.descriptors.get(key)
        return descriptor.sha256 if descriptor is not None else None


@dataclass
class ArtifactState:
    """Per-artifact bookkeeping behind ``/__models__`` and the ``models.<key>`` checks."""

    key: str
    uri: str
    required: bool
    cadence: str
    status: str = "missing"  # loaded | missing | invalid | error ("stale" is derived at report time)
    signature: tuple | None = None  # (name, generation, size) of the loaded copy
    failed_signature: tuple | None = None  # a copy whose *content* failed: not downloaded again
    failed_error: str | None = None
    retry_attempts: int = 0  # consecutive transient failures
    retry_at: float | None = None  # monotonic time of the next attempt after a transient failure
    retry_error: str | None = None
    loaded_at: dt.datetime | None = None
    last_refresh: dict | None = None
    descriptor: object = None
    source_updated_at: dt.datetime | None = None

    @property
    def loaded(self) -> bool:
        return self.descriptor is not None

    def clear_retry(self) -> None:
        self.retry_attempts, self.retry_at, self.retry_error = 0, None, None


@dataclass
class RefreshPass:
    """Everything one refresh pass accumulates, handed from step to step."""

    now: dt.datetime
    deadline: float  # monotonic: stats and downloads must finish by then
    outcomes: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    changes: dict[str, _Change] = field(default_factory=dict)
    fetched: dict[str, tuple] = field(default_factory=dict)  # key -> (obj, descriptor, change)
    abandoned: bool = False  # a store call outlived the deadline

    def set(self, key: str, outcome: str, error: str | None = None) -> None:
        self.outcomes[key] = outcome
        if error is None:
            self.errors.pop(key, None)
        else:
            self.errors[key] = error


@dataclass
class _Change:
    """A changed artifact found by ``stat``: what to fetch and its metadata date."""

    key: str
    info: object
    signature: tuple = field(init=False)

    def __post_init__(self):
        self.signature = (self.info.name, self.info.generation, self.info.size)

    @property
    def taar_date(self) -> str:
        return (self.info.metadata or {}).get("taar-date") or UNKNOWN_VERSION


def _dates_agree(dates) -> bool:
    known = {d for d in dates if d and d != UNKNOWN_VERSION}
    return len(known) <= 1


def _end_of(version: str) -> dt.datetime | None:
    try:
        day = dt.datetime.strptime(version, "%Y%m%d").replace(tzinfo=dt.UTC)
    except (TypeError, ValueError):
        return None
    return day + dt.timedelta(days=1)


class ModelRegistry:
    """Loads the service artifacts (SPEC §2.7) and keeps a swappable :class:`Snapshot`.

    Parameters
    ----------
    settings : taar_web.settings.Settings
    store : model store (``taar.storage.open_model_store``)
    clock : callable returning an aware UTC datetime
    metrics : markus-like interface
    engine_builder : callable ``(models, **kwargs) -> Engine``
    manager_factory : callable ``(engine) -> RecommendationManager``
    monotonic : callable, default ``time.monotonic``
        The clock of deadlines and retry backoff.
    rng : random.Random, optional
        Backoff jitter.
    """

    def __init__(self, settings, store, *, clock, metrics, engine_builder: Callable, manager_factory: Callable,
                 monotonic: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.engine_builder = engine_builder
        self.manager_factory = manager_factory
        self.states: dict[str, ArtifactState] = {
            key: ArtifactState(
                key=key,
                uri=self._uri(artifacts.get(key).name),
                required=key in settings.required_models,
                cadence=artifacts.get(key).cadence,
            )
            for key in artifacts.SERVICE_ARTIFACTS
        }
        self.snapshot: Snapshot = self._build({}, {})
        #: group -> why it is held back (its members' taar-dates differ)
        self.groups_waiting: dict[str, str] = {}
        self._lock = threading.Lock()

    def init_app(self, app) -> None:
        app.extensions[EXTENSION] = self

    def _uri(self, name: str) -> str:
        return f"{str(self.store.uri).rstrip('/')}/{name}"

    # ------------------------------------------------------------------ status

    @property
    def required_loaded(self) -> bool:
        """Every required artifact has loaded at least once."""
        return all(s.loaded for s in self.states.values() if s.required)

    @property
    def needs_retry(self) -> bool:
        """The refresher should come back within a minute (SPEC §6.3)."""
        return (not self.required_loaded or bool(self.groups_waiting)
                or any(s.retry_at is not None for s in self.states.values()))

    def groups_report(self) -> dict:
        """The ``groups`` part of ``/__models__``: groups held back for a date mismatch."""
        return {group: {"status": "held_back", "reason": reason}
                for group, reason in sorted(self.groups_waiting.items())}

    def age_hours(self, state: ArtifactState, now: dt.datetime) -> float | None:
        """Hours since the end of the loaded copy's ``taar-date`` (storage time when unknown)."""
        if not state.loaded:
            return None
        reference = _end_of(state.descriptor.version) or state.source_updated_at
        if reference is None:
            return None
        return max(0.0, (now - reference).total_seconds() / 3600.0)

    def max_age_hours(self, state: ArtifactState) -> float:
        """The staleness limit of ``state`` (0 disables; weekly artifacts get 168 h more)."""
        limit = self.settings.model_max_age_hours
        if limit and state.cadence == "weekly":
            limit += 168.0
        return limit

    def report(self) -> dict:
        """The ``models`` part of ``/__models__``."""
        now = self.clock()
        out = {}
        for key, s in self.states.items():
            d = s.descriptor
            age = self.age_hours(s, now)
            status = s.status
            limit = self.max_age_hours(s)
            if s.loaded and limit and age is not None and age > limit:
                status = "stale"
            out[key] = {
                "uri": d.uri if d is not None else s.uri,
                "required": s.required,
                "status": status,
                "version": d.version if d is not None else None,
                "loaded_at": _iso(s.loaded_at),
                "source_updated_at": _iso(s.source_updated_at),
                "age_hours": round(age, 3) if age is not None else None,
                "checksum": d.sha256 if d is not None else None,
                "size": d.size if d is not None else None,
                "last_refresh": dict(s.last_refresh) if s.last_refresh else None,
            }
        return out

    # ------------------------------------------------------------------ refresh

    def check_once(self) -> dict[str, str]:
        """Run one load/refresh pass; return the outcome per artifact key."""
        with self._lock:
            refresh = RefreshPass(now=self.clock(),
                                  deadline=self.monotonic() + self.settings.model_load_timeout_seconds)
            self._check(refresh)
            self._record(refresh)
            return refresh.outcomes

    def _check(self, p: RefreshPass) -> None:
        self.groups_waiting = {}
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=12, thread_name_prefix="taar-load")
        try:
            self._stat_all(p, pool)
            self._hold_back_groups(p)
            self._fetch(p, pool)
        finally:
            # Join the loader threads unless one hangs: gunicorn forks right after the
            # initial load and a fork should not copy threads in flight.
            pool.shutdown(wait=not p.abandoned, cancel_futures=True)
        self._normalise(p)
        self._drop_broken_groups(p)
        if p.fetched:
            self._swap(p)

    def _record(self, p: RefreshPass) -> None:
        for key, outcome in p.outcomes.items():
            state = self.states[key]
            state.last_refresh = {"at": _iso(p.now), "outcome": outcome, "error": p.errors.get(key)}
            if outcome in ("failed", "swapped"):
                self.metrics.incr("model_refresh", tags=[f"model:{key}", f"outcome:{outcome}"])
            age = self.age_hours(state, p.now)
            if age is not None:
                self.metrics.gauge("model_age_seconds", age * 3600.0, tags=[f"model:{key}"])

    def _wait(self, p: RefreshPass, futures: dict, share: float = 1.0):
        """Wait for ``futures`` until ``share`` of the time left before the pass deadline; ``(done, pending)``."""
        left = max(0.0, p.deadline - self.monotonic())
        done, pending = concurrent.futures.wait(futures, timeout=left * share)
        if pending:
            p.abandoned = True
        return done, pending

    def _stat(self, key: str):
        for name in artifacts.get(key).read_names():
            info = self.store.stat(name)
            if info is not None:
                return info
        return None

    def _stat_all(self, p: RefreshPass, pool) -> None:
        """Stat every artifact (in parallel, within the pass deadline) and collect the changed ones."""
        mono = self.monotonic()
        due = {}
        for key, state in self.states.items():
            if state.retry_at is not None and state.retry_at > mono:
                p.set(key, "failed", f"{state.retry_error} (next retry in {state.retry_at - mono:.0f} s)")
            else:
                due[key] = state
        futures = {pool.submit(self._stat, key): key for key in due}
        # stats are quick unless the store hangs: a hanging stat may use half of the time,
        # so that the downloads of the objects that did answer still get the other half
        done, pending = self._wait(p, futures, share=0.5)
        for future in pending:
            key = futures[future]
            self._transient(p, key, TimeoutError(
                f"stat took longer than {self.settings.model_load_timeout_seconds:g} s"), "stat failed: ")
        for future in done:
            key = futures[future]
            state = self.states[key]
            try:
                info = future.result()
            except Exception as exc:  # the store is unreachable: keep what we have, retry later
                self._transient(p, key, exc, "stat failed: ")
                continue
            if info is None:
                p.set(key, "failed", "object not found in the model store")
                if not state.loaded:
                    state.status = "missing"
                continue
            change = _Change(key, info)
            if change.signature == state.signature:
                p.set(key, "unchanged")
                state.clear_retry()
            elif change.signature == state.failed_signature:
                p.set(key, "failed", state.failed_error)
            else:
                p.changes[key] = change

    def _hold_back_groups(self, p: RefreshPass) -> None:
        """Keep a changed group out of this pass unless all its members' taar-dates agree."""
        for group, members in artifacts.GROUPS.items():
            if not any(m in p.changes for m in members):
                continue
            dates = {}
            for m in members:
                if m in p.changes:
                    dates[m] = p.changes[m].taar_date
                elif self.states[m].loaded:
                    dates[m] = self.states[m].descriptor.version
                else:
                    dates[m] = None
            missing = [m for m, d in dates.items() if d is None]
            if missing:
                problem = f"group {group} incomplete: {', '.join(missing)} not available"
            elif not _dates_agree(dates.values()):
                problem = "group {} held back: taar-dates differ ({}); waiting".format(
                    group, ", ".join(f"{m}={d}" for m, d in dates.items()))
                self.groups_waiting[group] = problem
            else:
                continue
            for m in members:
                p.changes.pop(m, None)
                if p.outcomes.get(m) != "failed":
                    p.set(m, "unchanged", problem)
            logger.warning(problem)

    def _fetch(self, p: RefreshPass, pool) -> None:
        """Download and decode changed artifacts in parallel into ``p.fetched``."""
        if not p.changes:
            return
        futures = {pool.submit(read_artifact, self.store, key): key for key in p.changes}
        done, pending = self._wait(p, futures)
        for future in done:
            key = futures[future]
            try:
                obj, descriptor = future.result()
            except Exception as exc:
                self._fail(p, key, exc)
                continue
            p.fetched[key] = (obj, descriptor, p.changes[key])
        for future in pending:
            key = futures[future]
            self._transient(p, key, TimeoutError(
                f"load took longer than {self.settings.model_load_timeout_seconds:g} s"))

    def _normalise(self, p: RefreshPass) -> None:
        """Apply the service-side normalisation (SPEC §2.8); failures leave ``p.fetched``."""
        order = sorted(p.fetched, key=lambda k: k == "addon_mapping")  # item_matrix first
        for key in order:
            obj, descriptor, change = p.fetched[key]
            try:
                item_ids = None
                if key == "addon_mapping":
                    matrix = p.fetched["item_matrix"][0] if "item_matrix" in p.fetched else \
                        self.snapshot.models.get("item_matrix")
                    item_ids = [row["id"] for row in matrix] if matrix else None
                p.fetched[key] = (artifacts.normalise(key, obj, item_ids), descriptor, change)
            except Exception as exc:
                del p.fetched[key]
                self._fail(p, key, exc)

    def _drop_broken_groups(self, p: RefreshPass) -> None:
        """A group whose member failed (or whose fetched dates disagree) does not move at all."""
        for group, members in artifacts.GROUPS.items():
            moving = [m for m in members if m in p.fetched]
            if not moving:
                continue
            failed = [m for m in members if p.outcomes.get(m) == "failed"]
            versions = [p.fetched[m][1].version if m in p.fetched else
                        (self.states[m].descriptor.version if self.states[m].loaded else None)
                        for m in members]
            if failed:
                problem = f"group {group} not swapped: {', '.join(failed)} failed"
            elif not _dates_agree(versions):
                problem = f"group {group} held back: taar-dates differ after download; waiting"
                self.groups_waiting[group] = problem
            else:
                continue
            for m in moving:
                del p.fetched[m]
                p.set(m, "failed" if failed else "unchanged", problem)

    def _units(self, keys) -> list[tuple[str, ...]]:
        """``keys`` split into what must swap together: each group's members, else one key."""
        units, seen = [], set()
        for key in sorted(keys):
            if key in seen:
                continue
            group = next((members for members in artifacts.GROUPS.values() if key in members), (key,))
            unit = tuple(m for m in group if m in keys)
            seen.update(unit)
            units.append(unit)
        return units

    def _try_build(self, p: RefreshPass, keys) -> Snapshot:
        models = dict(self.snapshot.models)
        descriptors = dict(self.snapshot.descriptors)
        for key in keys:
            models[key], descriptors[key] = p.fetched[key][0], p.fetched[key][1]
        return self._build(models, descriptors, p.now)

    def _swap(self, p: RefreshPass) -> None:
        """Build one engine from the last good models plus ``p.fetched`` and publish it.

        When the build fails, each unit (a group or a single artifact) is tried
        alone against the current models: the units that break the build are
        refused (remembered like a content failure), the others still swap.
        """
        try:
            snapshot = self._try_build(p, p.fetched)
        except Exception:
            logger.exception("engine build failed; finding the artifact(s) that cause it")
            for unit in self._units(p.fetched):
                try:
                    self._try_build(p, unit)
                except Exception as exc:
                    for key in unit:
                        self._fail(p, key, exc, prefix="engine build failed: ", content=True)
                        del p.fetched[key]
            if not p.fetched:
                return
            try:
                snapshot = self._try_build(p, p.fetched)
            except Exception as exc:  # only their combination fails: retry them later
                for key in list(p.fetched):
                    self._transient(p, key, exc, "engine build failed: ")
                p.fetched.clear()
                return
        self.snapshot = snapshot  # the single assignment requests observe
        for key, (_obj, descriptor, change) in p.fetched.items():
            state = self.states[key]
            state.status = "loaded"
            state.descriptor = descriptor
            state.signature = change.signature
            state.failed_signature = state.failed_error = None
            state.clear_retry()
            state.loaded_at = p.now
            state.source_updated_at = descriptor.updated
            p.set(key, "swapped")
        logger.info("models swapped", extra={"swapped": sorted(p.fetched), "versions": snapshot.versions})

    def _build(self, models, descriptors, now=None) -> Snapshot:
        versions = {key: d.version for key, d in descriptors.items()}
        engine = self.engine_builder(
            models, taarlite_truncate=self.settings.taarlite_truncate_effective, model_versions=versions)
        return Snapshot(engine=engine, manager=self.manager_factory(engine), models=models,
                        descriptors=descriptors, built_at=now)

    def _fail(self, p: RefreshPass, key, exc, *, prefix="", content: bool | None = None) -> None:
        """Record a failed download/decode/normalise/build of ``key``.

        A content failure (decode or validation) of this object version is
        remembered: the same version is not downloaded again. Anything else
        (I/O, timeouts, permissions, a checksum mismatch during a concurrent
        write) is transient and retried with backoff.
        """
        if content is None:
            content = is_content_failure(exc)
        if not content:
            self._transient(p, key, exc, prefix)
            return
        state = self.states[key]
        message = f"{prefix}{type(exc).__name__}: {exc}"
        p.set(key, "failed", message)
        state.failed_signature, state.failed_error = p.changes[key].signature, message
        state.clear_retry()
        if not state.loaded:
            state.status = _status_for(exc)
        logger.warning("model %s refused: %s", key, message)
        sentry.capture(exc)

    def _transient(self, p: RefreshPass, key, exc, prefix="") -> None:
        """A failure worth retrying: schedule the next attempt with capped, jittered backoff."""
        state = self.states[key]
        message = f"{prefix}{type(exc).__name__}: {exc}"
        p.set(key, "failed", message)
        state.retry_attempts += 1
        cap = min(BACKOFF_CAP_SECONDS, self.settings.model_refresh_seconds)
        delay = min(cap, BACKOFF_BASE_SECONDS * 2 ** (state.retry_attempts - 1))
        state.retry_at = self.monotonic() + delay * self.rng.uniform(0.5, 1.0)
        state.retry_error = message
        if not state.loaded:
            state.status = _status_for(exc)
        logger.warning("model %s failed (attempt %d, retrying): %s", key, state.retry_attempts, message)
        sentry.capture(exc)

    def seconds_to_next_retry(self) -> float | None:
        """Seconds until the earliest transient retry is due (None when nothing waits)."""
        pending = [s.retry_at for s in self.states.values() if s.retry_at is not None]
        if not pending:
            return None
        return max(0.0, min(pending) - self.monotonic())


def is_content_failure(exc: BaseException) -> bool:
    """True for a decode or validation error: retrying the same bytes cannot help.

    Storage errors (not found, checksum mismatch) and everything else (I/O,
    timeouts, auth) are transient.
    """
    return isinstance(exc, ValueError) and not isinstance(exc, StorageError)


def _status_for(exc: BaseException) -> str:
    """``/__models__`` status of an artifact that never loaded, from its last error."""
    if isinstance(exc, ArtifactNotFound):
        return "missing"
    if isinstance(exc, ValueError | ChecksumMismatch):  # ArtifactError, DecodeError, bad bytes
        return "invalid"
    return "error"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
