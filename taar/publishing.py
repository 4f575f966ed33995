"""Publishing and reading artifacts in a model store (SPEC §2.2, §2.4-2.6, §2.10).

:func:`publish` and :func:`publish_group` implement the publishing protocol every job
uses: validate, encode, write the dated copy ``<name>.json.<YYYYMMDD>.bz2`` with its
metadata, read it back (checksum, decode, validate again), and only then replace the
latest object ``<name>.json.bz2`` by a copy of it. The latest object is left alone
when it already holds a newer date (a backfill), unless ``force_latest`` is set. A
group (e.g. the collaborative ``item_matrix`` + ``addon_mapping`` pair) is staged
member by member and its latest objects are replaced only once every member has
passed, in catalogue order. Nothing here catches storage errors: a failed write
fails the job.

Concurrency (SPEC §2.4): each latest object is replaced only if it is still at the
generation seen when its date was checked (``if_generation_match``: a GCS
precondition, a locked compare-and-switch in the local store). A publisher that
loses the race raises :class:`PublishConflict` naming the object, so latest never
goes back to an older date behind a newer publisher's back; a group publisher
that loses on a later member first restores the members it already replaced
(each conditional on its own write), so a group never keeps members of two dates.

:func:`read_artifact` is the reader used by the service and the admin CLI; it
verifies the recorded checksum, decodes, and returns a :class:`Descriptor`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import taar
from taar import artifacts, codecs
from taar.artifacts import Artifact
from taar.storage.base import (
    ABSENT,
    ArtifactNotFound,
    ChecksumMismatch,
    Descriptor,
    ModelStore,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
)

logger = logging.getLogger(__name__)

META_DATE = "taar-date"
META_SHA256 = "taar-sha256"
META_PRODUCER = "taar-producer"
UNKNOWN_VERSION = "unknown"

#: A read is retried this many times when the object changes under it.
READ_ATTEMPTS = 3
_READ_RETRY_DELAY_S = 0.05
_DATE_RE = re.compile(r"^\d{8}$")


class PublishConflict(StorageError):
    """Another publisher replaced a latest object between our date check and our replacement."""


@dataclass(frozen=True)
class PublishResult:
    """What one publish (or rollback) did for one artifact.

    ``previous_version`` is the ``taar-date`` the latest object held before
    (``"unknown"`` without metadata, ``None`` when there was no latest object).
    """

    key: str
    date: str
    dated_name: str
    latest_name: str
    sha256: str
    size: int
    latest_replaced: bool
    previous_version: str | None


@dataclass(frozen=True)
class _Staged:
    artifact: Artifact
    sha256: str
    size: int
    obj: object


def producer_tag(job: str) -> str:
    """The ``taar-producer`` value for ``job``: ``<job>/<package version>`` (SPEC §2.5)."""
    return f"{job}/{taar.__version__}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _date_str(date: dt.date) -> str:
    if not isinstance(date, dt.date):
        raise TypeError(f"date must be a datetime.date, got {type(date).__name__}")
    return f"{date:%Y%m%d}"


def _resolve(key: str | Artifact) -> Artifact:
    return key if isinstance(key, Artifact) else artifacts.get(key)


# --------------------------------------------------------------------------- reading


def _read_consistent(store: ModelStore, name: str) -> tuple[bytes, ObjectInfo, str] | None:
    """Read ``name`` with its info and digest, or ``None`` when it does not exist.

    The object is stat-ed before and after the read; if it changed in between (a
    concurrent publish) or its bytes do not match the recorded checksum, the read
    is retried a few times before :class:`ChecksumMismatch` is raised.
    """
    problem: Exception | None = None
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(_READ_RETRY_DELAY_S * attempt)
        before = store.stat(name)
        if before is None:
            return None
        try:
            data = store.read_bytes(name)
        except ObjectNotFound as exc:  # deleted between stat and read
            problem = exc
            continue
        if store.stat(name) != before:
            problem = StorageError(f"{name!r} in {store.uri} kept changing while being read")
            continue
        digest = _sha256(data)
        expected = before.metadata.get(META_SHA256)
        if expected is not None and expected != digest:
            problem = ChecksumMismatch(store.uri, name, expected, digest)
            continue
        return data, before, digest
    raise problem


def read_artifact(store: ModelStore, key: str | Artifact, date: dt.date | None = None):
    """Return ``(obj, Descriptor)`` for an artifact (SPEC §2.6).

    Without ``date`` the latest object is read (``<name>.json.bz2``, falling back to
    the plain ``<name>.json``); with ``date`` the dated copy of that day. Raises
    :class:`ArtifactNotFound` listing the names tried, :class:`ChecksumMismatch`
    when the bytes do not match ``taar-sha256``, and ``taar.codecs.DecodeError``
    for undecodable content. The content is not validated here: callers apply
    ``taar.artifacts.validate`` or ``normalise`` as their role requires.
    """
    artifact = _resolve(key)
    names = [artifact.dated_name(date)] if date is not None else artifact.read_names()
    for name in names:
        found = _read_consistent(store, name)
        if found is None:
            continue
        data, info, digest = found
        obj = codecs.decode(data, name)
        descriptor = Descriptor(
            key=artifact.key,
            uri=f"{store.uri}/{name}",
            name=name,
            version=info.metadata.get(META_DATE, UNKNOWN_VERSION),
            updated=info.updated,
            size=len(data),
            sha256=digest,
            generation=info.generation,
        )
        return obj, descriptor
    raise ArtifactNotFound(artifact.key, store.uri, names)


# --------------------------------------------------------------------------- publishing


def _stage(store: ModelStore, artifact: Artifact, obj, date: dt.date, producer: str) -> _Staged:
    """Steps 2-3 of SPEC §2.4: encode, write the dated copy, read it back and re-check it."""
    data = codecs.encode(obj)
    digest = _sha256(data)
    dated = artifact.dated_name(date)
    metadata = {META_DATE: _date_str(date), META_SHA256: digest, META_PRODUCER: producer}
    store.write_bytes(dated, data, metadata)

    found = _read_consistent(store, dated)
    if found is None:
        raise StorageError(f"{dated!r} is missing from {store.uri} right after it was written")
    back, info, back_digest = found
    if back_digest != digest or info.metadata.get(META_SHA256) != digest:
        raise ChecksumMismatch(store.uri, dated, digest, back_digest)
    decoded = codecs.decode(back, dated)
    artifacts.validate(artifact.key, decoded)
    logger.info("wrote %s/%s (%d bytes, sha256 %s)", store.uri, dated, len(data), digest)
    return _Staged(artifact, digest, len(data), decoded)


def _version_of(store: ModelStore, artifact: Artifact, info: ObjectInfo | None) -> str | None:
    """The ``taar-date`` of the latest object described by ``info`` (``None``: absent)."""
    if info is None:
        return None
    version = info.metadata.get(META_DATE, UNKNOWN_VERSION)
    if version != UNKNOWN_VERSION and not _DATE_RE.match(version):
        logger.warning(
            "%s/%s has a malformed %s %r; treating it as unknown",
            store.uri,
            artifact.name,
            META_DATE,
            version,
        )
        return UNKNOWN_VERSION
    return version


def _replace_latest(store, staged: list[_Staged], date: dt.date, force_latest: bool) -> list[PublishResult]:
    """Steps 4-6 of SPEC §2.4 for members that have all been staged, in catalogue order."""
    date_str = _date_str(date)
    seen = {s.artifact.key: store.stat(s.artifact.name) for s in staged}  # the generations the check is about
    previous = {s.artifact.key: _version_of(store, s.artifact, seen[s.artifact.key]) for s in staged}
    # YYYYMMDD strings compare like dates; objects without metadata are always older.
    newer = {k: v for k, v in previous.items() if v not in (None, UNKNOWN_VERSION) and v > date_str}
    replace = force_latest or not newer
    if newer and force_latest:
        logger.warning("--force-latest: replacing newer latest objects %s with %s", newer, date_str)
    elif newer:
        logger.info(
            "backfill for %s: latest objects hold newer dates %s; wrote dated copies only", date_str, newer
        )

    order = list(artifacts.CATALOGUE)
    results, replaced = [], []
    for s in sorted(
        staged, key=lambda s: order.index(s.artifact.key) if s.artifact.key in order else len(order)
    ):
        dated = s.artifact.dated_name(date)
        if replace:
            before = seen[s.artifact.key]
            try:
                written = store.copy(dated, s.artifact.name,
                                     if_generation_match=ABSENT if before is None else before.generation)
            except PreconditionFailed as exc:
                restored = _restore(store, replaced)
                raise PublishConflict(
                    f"latest object {store.uri}/{s.artifact.name} was replaced by another publisher after its "
                    f"date was checked; not publishing {date_str} over it"
                    + (f" (restored {', '.join(restored)})" if restored else "")) from exc
            replaced.append((s.artifact, before, written))
            logger.info("replaced %s/%s with %s", store.uri, s.artifact.name, dated)
        results.append(
            PublishResult(
                key=s.artifact.key,
                date=date_str,
                dated_name=dated,
                latest_name=s.artifact.name,
                sha256=s.sha256,
                size=s.size,
                latest_replaced=replace,
                previous_version=previous[s.artifact.key],
            )
        )
    return results


def _restore(store: ModelStore, replaced) -> list[str]:
    """Undo the latest replacements of a publisher that lost a race, newest first.

    Each member goes back to the dated copy of the date it held before, only if it
    still holds what this publisher wrote (else a newer publisher owns it now).
    Returns the names restored.
    """
    restored = []
    for artifact, before, written in reversed(replaced):
        version = _version_of(store, artifact, before)
        if version in (None, UNKNOWN_VERSION):
            logger.error("cannot restore %s/%s: it held no dated version before", store.uri, artifact.name)
            continue
        source = artifact.dated_name(dt.datetime.strptime(version, "%Y%m%d").date())
        try:
            store.copy(source, artifact.name, if_generation_match=written.generation)
        except PreconditionFailed:
            logger.warning("%s/%s was replaced again meanwhile: left to the newer publisher", store.uri,
                           artifact.name)
            continue
        except ObjectNotFound:
            logger.error("cannot restore %s/%s: its dated copy %s is gone", store.uri, artifact.name, source)
            continue
        restored.append(artifact.name)
        logger.warning("restored %s/%s to %s after losing a publishing race", store.uri, artifact.name, version)
    return restored


def publish(
    store: ModelStore, key: str, obj, date: dt.date, producer: str, force_latest: bool = False
) -> PublishResult:
    """Publish one artifact under logical date ``date`` (SPEC §2.4).

    Raises :class:`taar.artifacts.ArtifactError` before any write when ``obj`` breaks
    the artifact's rules, ``ValueError`` for a group member (use
    :func:`publish_group`), and lets every storage error propagate.
    """
    artifact = artifacts.get(key)
    if artifact.group is not None:
        raise ValueError(f"{key!r} belongs to group {artifact.group!r}: publish it with publish_group")
    _date_str(date)
    artifacts.validate(key, obj)
    staged = _stage(store, artifact, obj, date, producer)
    return _replace_latest(store, [staged], date, force_latest)[0]


def _group_of(keys) -> str:
    groups = {artifacts.get(k).group for k in keys}
    if len(groups) != 1 or None in groups:
        raise ValueError(f"{sorted(keys)} are not the members of one artifact group")
    group = groups.pop()
    if set(keys) != set(artifacts.GROUPS[group]):
        raise ValueError(
            f"group {group!r} needs exactly {', '.join(artifacts.GROUPS[group])}; got {sorted(keys)}"
        )
    return group


def publish_group(
    store: ModelStore, models: Mapping[str, object], date: dt.date, producer: str, force_latest: bool = False
) -> tuple[PublishResult, ...]:
    """Publish every member of one artifact group together (SPEC §2.4 step 5).

    All members are validated (alone and as a group), written and re-checked
    before any latest object is replaced; then the latest objects are replaced in
    catalogue order, all of them or none (backfill). Returns one result per member
    in catalogue order.
    """
    group = _group_of(list(models))
    _date_str(date)
    artifacts.validate_group(group, models)
    staged = [_stage(store, artifacts.get(k), models[k], date, producer) for k in artifacts.GROUPS[group]]
    artifacts.validate_group(group, {s.artifact.key: s.obj for s in staged})
    return tuple(_replace_latest(store, staged, date, force_latest))


def publish_metrics(
    store: ModelStore, job: str, prefix: str, obj, date: dt.date, producer: str, force_latest: bool = False
) -> PublishResult:
    """Publish a job's metrics sidecar ``<prefix>/<job>_metrics.json.bz2`` (SPEC §9.3)."""
    artifact = artifacts.metrics_artifact(job, prefix)
    _date_str(date)
    artifacts.validate(artifact.key, obj)
    staged = _stage(store, artifact, obj, date, producer)
    return _replace_latest(store, [staged], date, force_latest)[0]


def rollback(store: ModelStore, key_or_group: str, date: dt.date) -> tuple[PublishResult, ...]:
    """Make the dated copies of ``date`` the latest objects again (SPEC §2.10).

    A group name rolls back every member; a key that belongs to a group rolls back
    its whole group, so the pair stays consistent. Every dated copy is read
    (checksum verified) and validated before any latest object is replaced; the
    backfill date rule does not apply.
    """
    if key_or_group in artifacts.GROUPS:
        group, keys = key_or_group, artifacts.GROUPS[key_or_group]
    else:
        group = artifacts.get(key_or_group).group
        keys = artifacts.GROUPS[group] if group else (key_or_group,)
        if group:
            logger.info("%s belongs to group %s: rolling back %s", key_or_group, group, ", ".join(keys))
    date_str = _date_str(date)
    loaded = {}
    for key in keys:
        obj, descriptor = read_artifact(store, key, date)
        artifacts.validate(key, obj)
        loaded[key] = (obj, descriptor)
    if group:
        artifacts.validate_group(group, {k: obj for k, (obj, _) in loaded.items()})

    results = []
    for key in keys:
        artifact = artifacts.get(key)
        before = store.stat(artifact.name)
        previous = _version_of(store, artifact, before)
        store.copy(artifact.dated_name(date), artifact.name,
                   if_generation_match=ABSENT if before is None else before.generation)
        descriptor = loaded[key][1]
        logger.info("rolled back %s/%s to %s (was %s)", store.uri, artifact.name, date_str, previous)
        results.append(
            PublishResult(
                key,
                date_str,
                descriptor.name,
                artifact.name,
                descriptor.sha256,
                descriptor.size,
                True,
                previous,
            )
        )
    return tuple(results)
