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
``model_refresh`` and reported to Sentry.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from taar import artifacts
from taar.publishing import UNKNOWN_VERSION, read_artifact
from taar.storage import ArtifactNotFound, ChecksumMismatch

from . import sentry

logger = logging.getLogger(__name__)

EXTENSION = "taar_models"


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
    failed_signature: tuple | None = None  # a copy that failed: not downloaded again
    failed_error: str | None = None
    loaded_at: dt.datetime | None = None
    last_refresh: dict | None = None
    descriptor: object = None
    source_updated_at: dt.datetime | None = None

    @property
    def loaded(self) -> bool:
        return self.descriptor is not None


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
    """

    def __init__(self, settings, store, *, clock, metrics, engine_builder: Callable, manager_factory: Callable):
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
        self.groups_waiting: set[str] = set()
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
        return not self.required_loaded or bool(self.groups_waiting)

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
            return self._check()

    def _check(self) -> dict[str, str]:
        now = self.clock()
        outcomes: dict[str, str] = {}
        errors: dict[str, str] = {}
        changes: dict[str, _Change] = {}
        for key, state in self.states.items():
            try:
                info = self._stat(key)
            except Exception as exc:  # the store is unreachable: keep what we have
                outcomes[key], errors[key] = "failed", f"stat failed: {exc}"
                continue
            if info is None:
                outcomes[key], errors[key] = "failed", "object not found in the model store"
                if not state.loaded:
                    state.status = "missing"
                continue
            change = _Change(key, info)
            if change.signature == state.signature:
                outcomes[key] = "unchanged"
            elif change.signature == state.failed_signature:
                outcomes[key], errors[key] = "failed", state.failed_error
            else:
                changes[key] = change

        self._hold_back_groups(changes, outcomes, errors)
        fetched = self._fetch(changes, outcomes, errors)
        self._normalise(fetched, outcomes, errors)
        self._drop_broken_groups(fetched, outcomes, errors)
        if fetched:
            self._swap(fetched, now, outcomes, errors)

        for key, outcome in outcomes.items():
            state = self.states[key]
            state.last_refresh = {"at": _iso(now), "outcome": outcome, "error": errors.get(key)}
            if outcome == "failed":
                self.metrics.incr("model_refresh", tags=[f"model:{key}", "outcome:failed"])
            elif outcome == "swapped":
                self.metrics.incr("model_refresh", tags=[f"model:{key}", "outcome:swapped"])
            age = self.age_hours(state, now)
            if age is not None:
                self.metrics.gauge("model_age_seconds", age * 3600.0, tags=[f"model:{key}"])
        return outcomes

    def _stat(self, key: str):
        for name in artifacts.get(key).read_names():
            info = self.store.stat(name)
            if info is not None:
                return info
        return None

    def _hold_back_groups(self, changes, outcomes, errors) -> None:
        """Keep a changed group out of this pass unless all its members' taar-dates agree."""
        self.groups_waiting = set()
        for group, members in artifacts.GROUPS.items():
            if not any(m in changes for m in members):
                continue
            dates = {}
            for m in members:
                if m in changes:
                    dates[m] = changes[m].taar_date
                elif self.states[m].loaded:
                    dates[m] = self.states[m].descriptor.version
                else:
                    dates[m] = None
            missing = [m for m, d in dates.items() if d is None]
            if missing:
                problem = f"group {group} incomplete: {', '.join(missing)} not available"
            elif not _dates_agree(dates.values()):
                problem = "group {} taar-dates differ ({}); waiting".format(
                    group, ", ".join(f"{m}={d}" for m, d in dates.items()))
                self.groups_waiting.add(group)
            else:
                continue
            for m in members:
                changes.pop(m, None)
                if outcomes.get(m) != "failed":
                    outcomes[m] = "unchanged"
                    errors[m] = problem
            logger.warning(problem)

    def _fetch(self, changes, outcomes, errors) -> dict[str, tuple]:
        """Download and decode changed artifacts in parallel: ``{key: (obj, descriptor, change)}``."""
        if not changes:
            return {}
        fetched = {}
        timeout = self.settings.model_load_timeout_seconds
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(changes)), thread_name_prefix="taar-load")
        pending = ()
        try:
            futures = {pool.submit(read_artifact, self.store, key): key for key in changes}
            done, pending = concurrent.futures.wait(futures, timeout=timeout)
            for future in done:
                key = futures[future]
                try:
                    obj, descriptor = future.result()
                except Exception as exc:
                    self._fail(key, changes[key], exc, outcomes, errors)
                    continue
                fetched[key] = (obj, descriptor, changes[key])
            for future in pending:
                key = futures[future]
                self._fail(key, changes[key], TimeoutError(f"load took longer than {timeout:g} s"),
                           outcomes, errors, remember=False)
        finally:
            # Join the loader threads unless one hangs: gunicorn forks right after the
            # initial load and a fork should not copy threads in flight.
            pool.shutdown(wait=not pending, cancel_futures=True)
        return fetched

    def _normalise(self, fetched, outcomes, errors) -> None:
        """Apply the service-side normalisation (SPEC §2.8); failures leave ``fetched``."""
        order = sorted(fetched, key=lambda k: k == "addon_mapping")  # item_matrix first
        for key in order:
            obj, descriptor, change = fetched[key]
            try:
                item_ids = None
                if key == "addon_mapping":
                    matrix = fetched["item_matrix"][0] if "item_matrix" in fetched else \
                        self.snapshot.models.get("item_matrix")
                    item_ids = [row["id"] for row in matrix] if matrix else None
                fetched[key] = (artifacts.normalise(key, obj, item_ids), descriptor, change)
            except Exception as exc:
                del fetched[key]
                self._fail(key, change, exc, outcomes, errors)

    def _drop_broken_groups(self, fetched, outcomes, errors) -> None:
        """A group whose member failed (or whose fetched dates disagree) does not move at all."""
        for group, members in artifacts.GROUPS.items():
            moving = [m for m in members if m in fetched]
            if not moving:
                continue
            failed = [m for m in members if outcomes.get(m) == "failed"]
            versions = [fetched[m][1].version if m in fetched else
                        (self.states[m].descriptor.version if self.states[m].loaded else None)
                        for m in members]
            if failed:
                problem = f"group {group} not swapped: {', '.join(failed)} failed"
            elif not _dates_agree(versions):
                problem = f"group {group} not swapped: taar-dates differ after download"
                self.groups_waiting.add(group)
            else:
                continue
            for m in moving:
                del fetched[m]
                outcomes[m], errors[m] = ("failed", problem) if failed else ("unchanged", problem)

    def _swap(self, fetched, now, outcomes, errors) -> None:
        models = dict(self.snapshot.models)
        descriptors = dict(self.snapshot.descriptors)
        for key, (obj, descriptor, _change) in fetched.items():
            models[key] = obj
            descriptors[key] = descriptor
        try:
            snapshot = self._build(models, descriptors, now)
        except Exception as exc:
            logger.exception("engine build failed; keeping the previous models")
            for key, (_obj, _descriptor, change) in fetched.items():
                self._fail(key, change, exc, outcomes, errors, prefix="engine build failed: ")
            return
        self.snapshot = snapshot  # the single assignment requests observe
        for key, (_obj, descriptor, change) in fetched.items():
            state = self.states[key]
            state.status = "loaded"
            state.descriptor = descriptor
            state.signature = change.signature
            state.failed_signature = state.failed_error = None
            state.loaded_at = now
            state.source_updated_at = descriptor.updated
            outcomes[key] = "swapped"
            errors.pop(key, None)
        logger.info("models swapped", extra={"swapped": sorted(fetched), "versions": snapshot.versions})

    def _build(self, models, descriptors, now=None) -> Snapshot:
        versions = {key: d.version for key, d in descriptors.items()}
        engine = self.engine_builder(
            models, taarlite_truncate=self.settings.taarlite_truncate_effective, model_versions=versions)
        return Snapshot(engine=engine, manager=self.manager_factory(engine), models=models,
                        descriptors=descriptors, built_at=now)

    def _fail(self, key, change, exc, outcomes, errors, *, remember=True, prefix="") -> None:
        state = self.states[key]
        message = f"{prefix}{type(exc).__name__}: {exc}"
        outcomes[key], errors[key] = "failed", message
        if remember:
            state.failed_signature, state.failed_error = change.signature, message
        if not state.loaded:
            state.status = _status_for(exc)
        logger.warning("model %s refused: %s", key, message)
        sentry.capture(exc)


def _status_for(exc: BaseException) -> str:
    """``/__models__`` status of an artifact that never loaded, from its last error."""
    if isinstance(exc, ArtifactNotFound):
        return "missing"
    if isinstance(exc, ValueError | ChecksumMismatch):  # ArtifactError, DecodeError, bad bytes
        return "invalid"
    return "error"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
