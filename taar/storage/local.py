"""Model store backed by a local directory (SPEC §2.1, §2.5).

Layout of an object ``dir/leaf``: ``dir/leaf`` is a relative symbolic link to
``.leaf.v/<generation>/data``; the version directory ``dir/.leaf.v/<generation>/``
holds the bytes (``data``) and the metadata (``meta.json``), both written and
synced before the link exists. A write makes a new version directory and then
replaces the link with one ``os.replace``: object and metadata become visible
together, and a reader that resolved the link reads one version's bytes and
metadata, never new bytes with old metadata. ``cat dir/leaf`` still shows the
bytes. Older versions are removed after the switch (a reader caught in between
gets :class:`ObjectNotFound` and retries, as for a concurrent delete).

Every replacement of ``dir/leaf`` holds an exclusive ``flock`` on ``dir/.leaf.lock``,
so :meth:`LocalModelStore.copy` with ``if_generation_match`` checks the current
generation and switches the link atomically with respect to other writers of
this store on this host. Objects written by older versions of this module (a
plain file with an optional ``<leaf>.meta.json`` sidecar) are still read; the
next write converts them. A copy made by following links (``shutil.copytree``
without ``symlinks=True``) holds plain files; their metadata is found in the
copied version whose data has the same size and modification time.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from .base import ABSENT, SIDECAR_SUFFIX, ObjectInfo, ObjectNotFound, PreconditionFailed, check_object_name

logger = logging.getLogger(__name__)

_TMP_SUFFIX = ".tmp"
_LOCK_SUFFIX = ".lock"
_VERSIONS_SUFFIX = ".v"
_DATA, _META = "data", "meta.json"
#: Attempts of a read racing a writer that removes the version it resolved.
_READ_ATTEMPTS = 20


class LocalModelStore:
    """A model store rooted at a directory (created on first write).

    The ``generation`` of an object is the name of its version directory
    (``<time_ns>-<random>``, unique per write). Objects in the older plain-file
    layout report ``"<mtime_ns>-<size>-<inode>"``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    @property
    def uri(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"LocalModelStore({self.uri!r})"

    # ------------------------------------------------------------------ paths

    def _path(self, name: str) -> Path:
        check_object_name(name)
        return self.root.joinpath(*name.split("/"))

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + SIDECAR_SUFFIX)

    @staticmethod
    def _versions(path: Path) -> Path:
        return path.with_name(f".{path.name}{_VERSIONS_SUFFIX}")

    @staticmethod
    def _lock_path(path: Path) -> Path:
        return path.with_name(f".{path.name}{_LOCK_SUFFIX}")

    @staticmethod
    def _is_internal(filename: str) -> bool:
        """Sidecars, locks and in-flight temporary files are not objects."""
        return filename.endswith(SIDECAR_SUFFIX) or (
            filename.startswith(".") and filename.endswith((_TMP_SUFFIX, _LOCK_SUFFIX))
        )

    @staticmethod
    def _is_versions_dir(dirname: str) -> bool:
        return dirname.startswith(".") and dirname.endswith(_VERSIONS_SUFFIX)

    # ------------------------------------------------------------------ one consistent version

    def _snapshot(self, name: str, with_data: bool) -> tuple[ObjectInfo, bytes | None] | None:
        """``(info, data)`` of one version of ``name`` (``data`` only when asked), or ``None``."""
        path = self._path(name)
        for _ in range(_READ_ATTEMPTS):
            try:
                if path.is_symlink():
                    target = path.parent / os.readlink(path)
                    version = target.parent
                    st = target.stat()
                    metadata = _load_metadata(version / _META)
                    data = target.read_bytes() if with_data else None
                    generation = version.name
                else:
                    st = path.stat()
                    if not path.is_file():
                        return None
                    metadata = self._read_sidecar(path) or self._copied_version_metadata(path, st)
                    data = path.read_bytes() if with_data else None
                    generation = f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"
            except FileNotFoundError:
                if not path.is_symlink() and not path.exists():
                    return None
                time.sleep(0.001)  # the version we resolved was just replaced and removed: look again
                continue
            except (IsADirectoryError, NotADirectoryError):
                return None
            info = ObjectInfo(
                name=name,
                size=st.st_size,
                updated=dt.datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=dt.UTC),
                generation=generation,
                metadata=metadata,
            )
            return info, data
        raise ObjectNotFound(self.uri, name)

    # ------------------------------------------------------------------ operations

    def stat(self, name: str) -> ObjectInfo | None:
        found = self._snapshot(name, with_data=False)
        return None if found is None else found[0]

    def read_bytes(self, name: str) -> bytes:
        found = self._snapshot(name, with_data=True)
        if found is None:
            raise ObjectNotFound(self.uri, name)
        return found[1]

    def write_bytes(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        if name.endswith(SIDECAR_SUFFIX):
            raise ValueError(f"object names ending in {SIDECAR_SUFFIX!r} are reserved for metadata: {name!r}")
        return self._replace(name, lambda f: f.write(data), metadata, None)

    def copy(self, src: str, dst: str, if_generation_match: str | None = None) -> ObjectInfo:
        found = self._snapshot(src, with_data=True)
        if found is None:
            raise ObjectNotFound(self.uri, src)
        info, data = found
        return self._replace(dst, lambda f: f.write(data), info.metadata, if_generation_match)

    def list(self, prefix: str = "") -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not self._is_versions_dir(d))
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                if self._is_internal(filename):
                    continue
                name = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                if name.startswith(prefix):
                    names.append(name)
        return sorted(names)

    def delete(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("refusing to delete a whole store: give a non-empty prefix")
        names = self.list(prefix)
        for name in names:
            path = self._path(name)
            with self._locked(path):
                path.unlink(missing_ok=True)
                self._sidecar(path).unlink(missing_ok=True)
                shutil.rmtree(self._versions(path), ignore_errors=True)
            self._lock_path(path).unlink(missing_ok=True)
        logger.info("deleted %d objects under %r from %s", len(names), prefix, self.uri)
        return len(names)

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path(path), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _replace(self, name: str, fill, metadata: Mapping[str, str] | None, if_generation_match: str | None):
        path = self._path(name)
        versions = self._versions(path)
        versions.mkdir(parents=True, exist_ok=True)
        generation = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        # Written under a temporary name, renamed under the lock right before the switch, so another
        # writer's clean-up never removes a version that is finished but not linked yet.
        pending, version = versions / f"{generation}{_TMP_SUFFIX}", versions / generation
        pending.mkdir()
        try:
            _write_synced(pending / _DATA, fill)
            text = json.dumps({str(k): str(v) for k, v in (metadata or {}).items()}, sort_keys=True)
            _write_synced(pending / _META, lambda f: f.write(text.encode("utf-8")))
            with self._locked(path):
                if if_generation_match is not None:
                    current = self.stat(name)
                    seen = ABSENT if current is None else current.generation
                    if seen != if_generation_match:
                        raise PreconditionFailed(self.uri, name, if_generation_match)
                os.rename(pending, version)
                _fsync_dir(versions)
                tmp_link = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
                os.symlink(f"{versions.name}/{generation}/{_DATA}", tmp_link)
                try:
                    os.replace(tmp_link, path)  # the switch: bytes and metadata of one version together
                except BaseException:
                    tmp_link.unlink(missing_ok=True)
                    raise
                _fsync_dir(path.parent)
                self._sidecar(path).unlink(missing_ok=True)  # an older layout's metadata
                self._remove_old_versions(versions, keep=generation)
        except BaseException:
            shutil.rmtree(pending, ignore_errors=True)
            raise
        return self.stat(name)

    @staticmethod
    def _remove_old_versions(versions: Path, keep: str) -> None:
        """Versions other than ``keep``; pending ones only when abandoned (older than an hour)."""
        abandoned = time.time_ns() - 3600 * 10**9
        for old in versions.iterdir():
            if old.name == keep:
                continue
            if old.name.endswith(_TMP_SUFFIX):
                born = old.name.split("-", 1)[0]
                if not (born.isdigit() and int(born) < abandoned):
                    continue
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ older layout

    def _copied_version_metadata(self, path: Path, st: os.stat_result) -> dict[str, str]:
        """Metadata for a plain file that is a link-following copy of this layout (``shutil.copytree``
        dereferences links but keeps size and modification time): the version whose data matches both."""
        versions = self._versions(path)
        if not versions.is_dir():
            return {}
        for version in sorted(versions.iterdir(), reverse=True):
            try:
                data = (version / _DATA).stat()
                if (data.st_size, data.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
                    return _load_metadata(version / _META)
            except (FileNotFoundError, NotADirectoryError):
                continue
        return {}

    def _read_sidecar(self, path: Path) -> dict[str, str]:
        try:
            return _load_metadata(self._sidecar(path))
        except FileNotFoundError:
            return {}


def _load_metadata(path: Path) -> dict[str, str]:
    metadata = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata {path} is not a JSON object")
    return {str(k): str(v) for k, v in metadata.items()}


def _write_synced(path: Path, fill) -> None:
    """Create ``path`` (world-readable: objects are meant to be shared) and sync it."""
    with open(path, "xb") as f:
        os.fchmod(f.fileno(), 0o644)
        fill(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

