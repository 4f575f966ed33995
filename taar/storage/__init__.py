"""Model stores and profile stores (SPEC §2.1, §3.1, §3.6-3.7).

Open a store from its URI and use it through the protocols of :mod:`.base`::

    store = open_model_store("gs://bucket/prefix")        # or "./var/models"
    store.write_bytes(name, data, metadata)               # artifacts: see taar.publishing

    profiles = open_profile_store("sqlite:///./var/profiles.sqlite3")
    payload = profiles.get(hashed_client_id, timeout_s=0.15)

Backends import their Google client libraries only when first used.
"""

from __future__ import annotations

from .base import (
    ABSENT,
    ArtifactNotFound,
    ChecksumMismatch,
    Descriptor,
    ModelStore,
    ObjectInfo,
    ObjectNotFound,
    PreconditionFailed,
    ProfileStore,
    ProfileStoreError,
    ProfileTimeout,
    ProfileWriteError,
    StorageError,
    parse_model_store_uri,
    parse_profile_store_uri,
)
from .bigtable_profiles import BigtableProfileStore
from .gcs import GCSModelStore
from .local import LocalModelStore
from .sqlite_profiles import SQLiteProfileStore


def open_model_store(uri: str) -> LocalModelStore | GCSModelStore:
    """Return the model store for ``uri``: a directory path, ``file://...`` or ``gs://bucket[/prefix]``."""
    location = parse_model_store_uri(uri)
    if location.scheme == "gs":
        return GCSModelStore(location.bucket, location.prefix)
    return LocalModelStore(location.path)


def open_profile_store(uri: str) -> SQLiteProfileStore | BigtableProfileStore:
    """Return the profile store for ``uri``: ``sqlite:///path`` or ``bigtable://project/instance/table``."""
    location = parse_profile_store_uri(uri)
    if location.scheme == "bigtable":
        return BigtableProfileStore(location.project, location.instance, location.table)
    return SQLiteProfileStore(location.path)


__all__ = [
    "ABSENT",
    "ArtifactNotFound",
    "BigtableProfileStore",
    "ChecksumMismatch",
    "Descriptor",
    "GCSModelStore",
    "LocalModelStore",
    "ModelStore",
    "ObjectInfo",
    "ObjectNotFound",
    "PreconditionFailed",
    "ProfileStore",
    "ProfileStoreError",
    "ProfileTimeout",
    "ProfileWriteError",
    "SQLiteProfileStore",
    "StorageError",
    "open_model_store",
    "open_profile_store",
    "parse_model_store_uri",
    "parse_profile_store_uri",
]
