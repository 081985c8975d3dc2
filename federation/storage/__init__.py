"""Object storage behind one interface, so every stage runs the same on the
embedded local filesystem (demo, a laptop) and on S3-compatible storage
(SeaweedFS, MinIO, AWS S3). Keys are written `<bucket>/<path>`."""

from __future__ import annotations

from federation.storage.base import (
    AccessDenied,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StorageError,
    TransientStorageError,
)
from federation.storage.config import Credentials, StorageConfig, open_store

__all__ = ["AccessDenied", "Credentials", "ObjectInfo", "ObjectStore", "PreconditionFailed", "StorageConfig",
           "StorageError", "TransientStorageError", "open_store"]
