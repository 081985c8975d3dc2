"""The storage interface every backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

from federation.exceptions import FederationError


class StorageError(FederationError):
    """A storage operation failed for a reason retrying will not fix."""


class TransientStorageError(StorageError):
    """The storage was unreachable or overloaded; retrying later may succeed."""


class AccessDenied(StorageError):
    """The identity in use may not do this to this key."""


class PreconditionFailed(StorageError):
    """A conditional write found the key already there."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def split_key(key: str) -> tuple[str, str]:
    """`bucket/path/to/object` -> (`bucket`, `path/to/object`)."""
    bucket, _, path = key.strip("/").partition("/")
    if not bucket:
        raise StorageError(f"object key {key!r} has no bucket; keys are written <bucket>/<path>")
    return bucket, path


class ObjectStore(abc.ABC):
    """Objects addressed by `<bucket>/<path>` keys; writes of one object are atomic."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write `data`; with `if_absent`, raise PreconditionFailed when the key exists (race-safe)."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Raise KeyError when the object does not exist."""

    @abc.abstractmethod
    def download(self, key: str, path: Path) -> None: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (recursive), sorted by key."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this store points, without secrets (for logs and messages)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; nothing happens when it does not exist."""

    def copy(self, source: str, target: str) -> None:
        self.put_bytes(target, self.get_bytes(source))
