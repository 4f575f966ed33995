"""Shared vocabulary of the storage layer: store protocols, value types, errors, URIs.

Two kinds of store exist (SPEC §2.1, §3.6):

* a **model store** holds JSON artifacts as named objects (a local directory or a
  GCS bucket/prefix) and offers six operations;
* a **profile store** maps a hashed client id to one zlib(JSON) payload (Bigtable,
  or SQLite for local runs and tests).

Both are described here as :class:`typing.Protocol` classes so that callers (the
publishing functions, the service, the ETL) depend on behaviour, not on a backend.
Backends live in one module each and create their clients on first use, so a store
object is cheap to build, never touches the network at construction and pickles.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

#: Suffix of the sidecar file holding an object's metadata in a local store.
SIDECAR_SUFFIX = ".meta.json"
#: ``if_generation_match`` value requiring that the object does not exist yet (GCS's generation 0).
ABSENT = "0"


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class ObjectInfo:
    """What a model store knows about one object (SPEC §2.1 ``stat``).

    ``updated`` is an aware UTC datetime; ``generation`` changes whenever the object
    is rewritten (GCS generation; local store: modification time, size and inode);
    ``metadata`` holds the custom object metadata (SPEC §2.5), empty when absent.
    """

    name: str
    size: int
    updated: dt.datetime
    generation: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Descriptor:
    """Where a decoded artifact came from (SPEC §2.6).

    ``version`` is the object's ``taar-date`` (YYYYMMDD) or ``"unknown"`` for objects
    published without metadata; ``sha256`` is the hex digest of the stored bytes.
    """

    key: str
    uri: str
    name: str
    version: str
    updated: dt.datetime
    size: int
    sha256: str
    generation: str


# --------------------------------------------------------------------------- errors


class StorageError(Exception):
    """Base class of the model store errors raised by :mod:`taar.storage`."""


class ObjectNotFound(StorageError):
    """A named object does not exist in the store."""

    def __init__(self, uri: str, name: str):
        super().__init__(f"object {name!r} not found in {uri}")
        self.uri = uri
        self.name = name


class PreconditionFailed(StorageError):
    """A conditional write found the object at another generation than the one it was given."""

    def __init__(self, uri: str, name: str, expected: str):
        self.uri, self.name, self.expected = uri, name, expected
        seen = "absent" if expected == ABSENT else f"at generation {expected}"
        super().__init__(f"{uri}/{name} changed since it was seen {seen}: another writer replaced it")


class ArtifactNotFound(StorageError):
    """None of the object names an artifact may be stored under exists."""

    def __init__(self, key: str, uri: str, tried: Iterable[str]):
        self.key = key
        self.uri = uri
        self.tried = tuple(tried)
        super().__init__(f"artifact {key!r} not found in {uri} (tried {', '.join(self.tried)})")


class ChecksumMismatch(StorageError):
    """The bytes read do not hash to the ``taar-sha256`` recorded for the object."""

    def __init__(self, uri: str, name: str, expected: str, actual: str):
        super().__init__(
            f"checksum mismatch for {name!r} in {uri}: metadata says {expected}, bytes hash to {actual}"
        )
        self.uri = uri
        self.name = name
        self.expected = expected
        self.actual = actual


class ProfileStoreError(Exception):
    """Base class of the profile store errors."""


class ProfileTimeout(ProfileStoreError):
    """A profile read did not complete within its deadline (SPEC §3.7)."""


class ProfileWriteError(ProfileStoreError):
    """Some rows of a batched profile write failed; the caller may retry the batch."""

    def __init__(self, failed: int, total: int, first_error: BaseException | None = None):
        detail = f": first error: {first_error}" if first_error is not None else ""
        super().__init__(f"{failed} of {total} profile row mutations failed{detail}")
        self.failed = failed
        self.total = total
        self.first_error = first_error


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class ModelStore(Protocol):
    """A flat namespace of objects addressed by ``/``-separated names (SPEC §2.1).

    Names are relative to the store root (``<prefix>/<name>`` on GCS). Every write
    replaces the object and its metadata atomically as seen by readers of the data.
    """

    @property
    def uri(self) -> str:
        """The store URI, e.g. ``gs://bucket/prefix`` or an absolute directory path."""

    def stat(self, name: str) -> ObjectInfo | None:
        """Return the object's :class:`ObjectInfo`, or ``None`` when it does not exist."""

    def read_bytes(self, name: str) -> bytes:
        """Return the object's bytes; raise :class:`ObjectNotFound` when it does not exist."""

    def write_bytes(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        """Create or replace ``name`` with ``data`` and ``metadata`` (none: metadata removed)."""

    def copy(self, src: str, dst: str, if_generation_match: str | None = None) -> ObjectInfo:
        """Replace ``dst`` by a copy of ``src``, metadata included (server-side on GCS).

        With ``if_generation_match`` (a ``generation`` from :meth:`stat`, or
        :data:`ABSENT`) the copy happens only if ``dst`` is still at that generation,
        atomically with the check; otherwise :class:`PreconditionFailed` is raised.
        """

    def list(self, prefix: str = "") -> list[str]:
        """Return the sorted names of the objects starting with ``prefix`` (no sidecars)."""

    def delete(self, prefix: str) -> int:
        """Delete every object whose name starts with ``prefix``; return how many went."""


@runtime_checkable
class ProfileStore(Protocol):
    """Per-client profile payloads keyed by hashed client id (SPEC §3.1, §3.6).

    Row keys are the 64-char hex hashed client ids (``str`` or their UTF-8 bytes);
    payloads are opaque ``bytes`` (zlib-compressed JSON, see :mod:`taar.profile`).
    """

    @property
    def uri(self) -> str:
        """The store URI (``bigtable://project/instance/table`` or ``sqlite:///path``)."""

    def get(self, row_key: str | bytes, timeout_s: float) -> bytes | None:
        """Return the newest payload for ``row_key`` or ``None`` when the row is absent.

        Raises :class:`ProfileTimeout` when the read has not completed within
        ``timeout_s`` seconds; other failures propagate.
        """

    def put_many(self, rows: Iterable[tuple[str | bytes, bytes]], ts_ms: int) -> int:
        """Write ``(row_key, payload)`` rows stamped ``ts_ms`` (ms since epoch); return the count.

        A row already holding a newer timestamp keeps its payload (Bigtable's
        newest-cell-wins read). Raises :class:`ProfileWriteError` when rows failed.
        """

    def delete_many(self, keys: Iterable[str | bytes]) -> int:
        """Delete the rows with these keys (absent keys are fine); return the count sent."""

    def ensure_table(self) -> None:
        """Create the table (and its column family / GC rule) when missing; idempotent."""

    def ping(self, timeout_s: float) -> bool:
        """Return whether the store answers a trivial read within ``timeout_s``."""


# --------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class ModelStoreLocation:
    """A parsed model store URI: ``scheme`` is ``"file"`` (``path`` set) or ``"gs"``."""

    scheme: str
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""


@dataclass(frozen=True)
class ProfileStoreLocation:
    """A parsed profile store URI: ``scheme`` is ``"sqlite"`` or ``"bigtable"``."""

    scheme: str
    path: Path | None = None
    project: str = ""
    instance: str = ""
    table: str = ""


def parse_model_store_uri(uri: str) -> ModelStoreLocation:
    """Parse a model/ETL store URI: a directory path, ``file://...`` or ``gs://bucket[/prefix]``.

    Raises ``ValueError`` naming the URI when it cannot be used.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"model store URI must be a non-empty string, got {uri!r}")
    uri = uri.strip()
    if uri.startswith("gs://"):
        bucket, _, prefix = uri[len("gs://") :].partition("/")
        if not bucket:
            raise ValueError(f"model store URI {uri!r} has no bucket name")
        return ModelStoreLocation("gs", bucket=bucket, prefix=prefix.strip("/"))
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"model store URI {uri!r}: file URIs must not name a host")
        return ModelStoreLocation("file", path=Path(unquote(parts.path)))
    if "://" in uri:
        raise ValueError(f"model store URI {uri!r}: unsupported scheme (use a path or gs://)")
    return ModelStoreLocation("file", path=Path(uri))


def parse_profile_store_uri(uri: str) -> ProfileStoreLocation:
    """Parse ``sqlite:///relative/path``, ``sqlite:////abs/path`` or ``bigtable://p/i/t``.

    Raises ``ValueError`` naming the URI when it cannot be used.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"profile store URI must be a non-empty string, got {uri!r}")
    uri = uri.strip()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not path or path.endswith("/"):
            raise ValueError(f"profile store URI {uri!r} names no database file")
        return ProfileStoreLocation("sqlite", path=Path(path))
    if uri.startswith("bigtable://"):
        parts = uri[len("bigtable://") :].split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"profile store URI {uri!r} must be bigtable://<project>/<instance>/<table>")
        project, instance, table = parts
        return ProfileStoreLocation("bigtable", project=project, instance=instance, table=table)
    raise ValueError(f"profile store URI {uri!r}: unsupported scheme (use sqlite:/// or bigtable://)")


def check_object_name(name: str) -> str:
    """Return ``name`` if it is a usable relative object name, else raise ``ValueError``."""
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"invalid object name {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"invalid object name {name!r}: empty, '.' or '..' path component")
    return name
