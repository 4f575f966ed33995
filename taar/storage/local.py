"""Model store backed by a local directory (SPEC §2.1, §2.5).

Objects are plain files under the root directory; an object's metadata lives in a
sidecar ``<object>.meta.json`` next to it (hidden from :meth:`LocalModelStore.list`).
Every write goes to a temporary file in the destination directory which is then
``os.replace``-d over the object, so a reader sees either the old or the new bytes,
never a mix. The sidecar is replaced the same way, right after the data; a reader
racing a writer may pair new bytes with old metadata for an instant, which the
checksum check in :mod:`taar.publishing` detects and retries.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .base import SIDECAR_SUFFIX, ObjectInfo, ObjectNotFound, check_object_name

logger = logging.getLogger(__name__)

_TMP_SUFFIX = ".tmp"


class LocalModelStore:
    """A model store rooted at a directory (created on first write).

    The ``generation`` of an object is ``"<mtime_ns>-<size>-<inode>"``: every write
    creates a new file, so the inode changes even when two writes of the same size
    fall within one tick of the file system clock.
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
    def _is_internal(filename: str) -> bool:
        """Sidecars and in-flight temporary files are not objects."""
        return filename.endswith(SIDECAR_SUFFIX) or (
            filename.startswith(".") and filename.endswith(_TMP_SUFFIX)
        )

    # ------------------------------------------------------------------ operations

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        return ObjectInfo(
            name=name,
            size=st.st_size,
            updated=dt.datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=dt.UTC),
            generation=f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}",
            metadata=self._read_metadata(path),
        )

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(self.uri, name) from None

    def write_bytes(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        if name.endswith(SIDECAR_SUFFIX):
            raise ValueError(f"object names ending in {SIDECAR_SUFFIX!r} are reserved for metadata: {name!r}")
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda f: f.write(data))
        self._write_metadata(path, metadata)
        return self.stat(name)

    def copy(self, src: str, dst: str) -> ObjectInfo:
        src_path, dst_path = self._path(src), self._path(dst)
        if not src_path.is_file():
            raise ObjectNotFound(self.uri, src)
        metadata = self._read_metadata(src_path)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        with open(src_path, "rb") as source:
            _atomic_write(dst_path, lambda f: shutil.copyfileobj(source, f))
        self._write_metadata(dst_path, metadata)
        return self.stat(dst)

    def list(self, prefix: str = "") -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
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
            path.unlink(missing_ok=True)
            self._sidecar(path).unlink(missing_ok=True)
        logger.info("deleted %d objects under %r from %s", len(names), prefix, self.uri)
        return len(names)

    # ------------------------------------------------------------------ metadata

    def _read_metadata(self, path: Path) -> dict[str, str]:
        try:
            raw = self._sidecar(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        metadata = json.loads(raw)
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata sidecar of {path} is not a JSON object")
        return {str(k): str(v) for k, v in metadata.items()}

    def _write_metadata(self, path: Path, metadata: Mapping[str, str] | None) -> None:
        sidecar = self._sidecar(path)
        if not metadata:
            sidecar.unlink(missing_ok=True)
            return
        text = json.dumps({str(k): str(v) for k, v in metadata.items()}, sort_keys=True)
        _atomic_write(sidecar, lambda f: f.write(text.encode("utf-8")))


def _atomic_write(path: Path, fill) -> None:
    """Write ``path`` through a temporary file in the same directory and ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; objects are meant to be shared
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
