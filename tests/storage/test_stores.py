"""Both storage backends keep the same contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.storage import ObjectStore, PreconditionFailed, StorageConfig, open_store


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(StorageConfig(kind="local", root=tmp_path / "store"))
    seaweed = request.getfixturevalue("seaweed")
    s: ObjectStore = seaweed.store("pipeline")
    # a fresh prefix per test on the shared server
    return _Prefixed(s, f"t{abs(hash(tmp_path)) % 10**8}")


class _Prefixed(ObjectStore):
    """Puts each test's keys under its own folder of every bucket."""

    def __init__(self, inner: ObjectStore, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def _k(self, key: str) -> str:
        bucket, _, rest = key.partition("/")
        return f"{bucket}/{self.prefix}/{rest}"

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self.inner.put_bytes(self._k(key), data, if_absent=if_absent)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(self._k(key), path)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(self._k(key))

    def download(self, key: str, path: Path) -> None:
        self.inner.download(self._k(key), path)

    def list(self, prefix: str):  # type: ignore[no-untyped-def]
        from federation.storage import ObjectInfo

        cut = len(self.prefix) + 1
        return [ObjectInfo(o.key.split("/", 1)[0] + "/" + o.key.split("/", 1)[1][cut:], o.size)
                for o in self.inner.list(self._k(prefix))]

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._k(key))

    def delete(self, key: str) -> None:
        self.inner.delete(self._k(key))

    def describe(self) -> str:
        return self.inner.describe()


def test_put_get_list_exists(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("pipeline/a/1.txt", b"one")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 3000)
    store.put_file("pipeline/a/b/2.bin", src)
    assert store.get_bytes("pipeline/a/1.txt") == b"one"
    assert [(o.key, o.size) for o in store.list("pipeline/a/")] == [("pipeline/a/1.txt", 3),
                                                                   ("pipeline/a/b/2.bin", 3000)]
    assert store.exists("pipeline/a/1.txt") and not store.exists("pipeline/a/none")
    store.download("pipeline/a/b/2.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"x" * 3000
    with pytest.raises(KeyError):
        store.get_bytes("pipeline/a/none")
    store.put_bytes("pipeline/a/1.txt", b"uno")
    assert store.get_bytes("pipeline/a/1.txt") == b"uno"
    store.delete("pipeline/a/1.txt")
    store.delete("pipeline/a/1.txt")  # deleting what is gone is not an error
    assert not store.exists("pipeline/a/1.txt") and store.exists("pipeline/a/b/2.bin")


def test_put_if_absent_refuses_the_second_writer(store: ObjectStore) -> None:
    store.put_bytes("pipeline/c/commit", b"first", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("pipeline/c/commit", b"second", if_absent=True)
    assert store.get_bytes("pipeline/c/commit") == b"first"


def test_local_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    from federation.storage import StorageError

    local = open_store(StorageConfig(kind="local", root=tmp_path / "store"))
    with pytest.raises(StorageError):
        local.put_bytes("pipeline/../../evil", b"x")
