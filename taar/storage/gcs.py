"""Model store backed by Google Cloud Storage (SPEC §2.1, §2.5).

Objects live at ``gs://<bucket>/<prefix>/<name>``; metadata is GCS custom object
metadata, so a server-side copy carries it along. The google-cloud-storage client is
created on first use, never at construction, and is dropped when the store is
pickled or used from a forked child, so store objects can be shipped to Spark
executors and gunicorn workers. With ``STORAGE_EMULATOR_HOST`` set the client talks
to that emulator with anonymous credentials and the project from
``GOOGLE_CLOUD_PROJECT`` (default ``taar-local``).
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
from collections.abc import Mapping

from .base import ObjectInfo, ObjectNotFound, PreconditionFailed, check_object_name

logger = logging.getLogger(__name__)

# Guards client creation so that concurrent first uses make one client, not several.
_CLIENT_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    """A fork while another thread held the lock must not leave the child deadlocked."""
    global _CLIENT_LOCK
    _CLIENT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)

_CONTENT_TYPES = {".bz2": "application/x-bzip2", ".json": "application/json"}


def _content_type(name: str) -> str:
    for suffix, content_type in _CONTENT_TYPES.items():
        if name.endswith(suffix):
            return content_type
    return "application/octet-stream"


def make_storage_client():
    """Return a ``google.cloud.storage.Client`` for the emulator or for real GCS."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "taar-local"
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


class GCSModelStore:
    """A model store at ``gs://bucket[/prefix]``."""

    def __init__(self, bucket: str, prefix: str = ""):
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self._client = None
        self._bucket = None
        self._pid = None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}" if self.prefix else f"gs://{self.bucket_name}"

    def __repr__(self) -> str:
        return f"GCSModelStore({self.uri!r})"

    def __getstate__(self) -> dict:
        return {"bucket_name": self.bucket_name, "prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["bucket_name"], state["prefix"])

    # ------------------------------------------------------------------ plumbing

    def _get_bucket(self):
        """The bucket handle, made on first use in this process (no request is sent)."""
        if self._bucket is None or self._pid != os.getpid():
            with _CLIENT_LOCK:
                if self._bucket is None or self._pid != os.getpid():
                    client = make_storage_client()
                    self._client, self._bucket, self._pid = (
                        client,
                        client.bucket(self.bucket_name),
                        os.getpid(),
                    )
        return self._bucket

    def _full(self, name: str) -> str:
        check_object_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _relative(self, full_name: str) -> str:
        return full_name[len(self.prefix) + 1 :] if self.prefix else full_name

    def _info(self, name: str, blob) -> ObjectInfo:
        return ObjectInfo(
            name=name,
            size=int(blob.size),
            updated=blob.updated,
            generation=str(blob.generation),
            metadata=dict(blob.metadata or {}),
        )

    # ------------------------------------------------------------------ operations

    def stat(self, name: str) -> ObjectInfo | None:
        blob = self._get_bucket().get_blob(self._full(name))
        return None if blob is None else self._info(name, blob)

    def read_bytes(self, name: str) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            return self._get_bucket().blob(self._full(name)).download_as_bytes()
        except NotFound:
            raise ObjectNotFound(self.uri, name) from None

    def write_bytes(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        blob = self._get_bucket().blob(self._full(name))
        blob.metadata = {str(k): str(v) for k, v in metadata.items()} if metadata else None
        blob.upload_from_string(data, content_type=_content_type(name))
        return self._info(name, blob)

    def copy(self, src: str, dst: str, if_generation_match: str | None = None) -> ObjectInfo:
        """Server-side copy; ``if_generation_match`` becomes GCS's ``ifGenerationMatch`` precondition on
        ``dst`` (``"0"``: must not exist), checked by GCS atomically with the write."""
        from google.api_core.exceptions import NotFound
        from google.api_core.exceptions import PreconditionFailed as GCSPreconditionFailed

        bucket = self._get_bucket()
        condition = {} if if_generation_match is None else {"if_generation_match": int(if_generation_match)}
        try:
            blob = bucket.copy_blob(bucket.blob(self._full(src)), bucket, self._full(dst), **condition)
        except GCSPreconditionFailed:
            raise PreconditionFailed(self.uri, dst, if_generation_match) from None
        except NotFound:
            if bucket.get_blob(self._full(src)) is None:
                raise ObjectNotFound(self.uri, src) from None
            raise
        return self._info(dst, blob)

    def list(self, prefix: str = "") -> builtins.list[str]:
        bucket = self._get_bucket()
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        blobs = bucket.client.list_blobs(bucket, prefix=full_prefix)
        return sorted(self._relative(blob.name) for blob in blobs)

    def delete(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("refusing to delete a whole store: give a non-empty prefix")
        names = self.list(prefix)
        bucket = self._get_bucket()
        for name in names:
            bucket.blob(self._full(name)).delete()
        logger.info("deleted %d objects under %r from %s", len(names), prefix, self.uri)
        return len(names)
