"""The embedded default: a folder on the local filesystem, one sub-folder per bucket."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from federation.storage.base import ObjectInfo, ObjectStore, PreconditionFailed, StorageError, split_key


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        bucket, path = split_key(key)
        full = (self.root / bucket / path).resolve()
        if self.root not in full.parents and full != self.root:
            raise StorageError(f"key {key!r} escapes the storage root")
        return full

    def _write_tmp(self, target: Path, writer: object) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            if isinstance(writer, bytes):
                fh.write(writer)
            else:
                with open(writer, "rb") as src:  # type: ignore[call-overload]
                    shutil.copyfileobj(src, fh, 1 << 20)
            fh.flush()
            os.fsync(fh.fileno())
        return Path(tmp)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        target = self._path(key)
        tmp = self._write_tmp(target, data)
        if if_absent:
            try:
                os.link(tmp, target)  # atomic and fails if the target exists
            except FileExistsError:
                raise PreconditionFailed(f"{key} already exists") from None
            finally:
                tmp.unlink()
        else:
            os.replace(tmp, target)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        os.replace(self._write_tmp(target, path), target)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(key) from None

    def download(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise KeyError(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, path = split_key(prefix)
        base = self.root / bucket
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                key = f"{bucket}/{full.relative_to(base).as_posix()}"
                if key.startswith(prefix.lstrip("/")) or not path:
                    out.append(ObjectInfo(key, full.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def describe(self) -> str:
        return f"local folder {self.root}"

    def local_path(self, key: str) -> Path:
        """The file behind a key (DuckDB and pyarrow read it directly)."""
        return self._path(key)
