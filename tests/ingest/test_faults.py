"""Storage that goes away mid-run: the task fails clearly, nothing is published, a later run succeeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.ingest.landing import UploadRef
from federation.ingest.pipeline import pending_uploads, process_upload, read_catalog
from federation.ingest.publish import latest_version
from federation.settings import Settings
from federation.storage import ObjectStore, TransientStorageError
from tests.ingest.helpers import upload

pytestmark = pytest.mark.integration


class _DiesOnPublish(ObjectStore):
    """The pipeline's real S3 store; the SeaweedFS server is stopped just before the first harmonized write."""

    def __init__(self, inner: ObjectStore, on_publish) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.on_publish, self.fired = inner, on_publish, False

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        if key.startswith("harmonized/") and not self.fired:
            self.fired = True
            self.on_publish()
        self.inner.put_bytes(key, data, if_absent=if_absent)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def download(self, key: str, path: Path) -> None:
        self.inner.download(key, path)

    def list(self, prefix: str):  # type: ignore[no-untyped-def]
        return self.inner.list(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def describe(self) -> str:
        return self.inner.describe()


def test_storage_outage_mid_publish(fresh_seaweed, clean_exports: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(storage=fresh_seaweed.cfg, sites_dir=clean_exports / "sites")
    m = upload(settings, "site-a", clean_exports / "site-a" / "PONC-WT-01")
    ref = UploadRef("site-a", m.upload_id, True)
    flaky = _DiesOnPublish(fresh_seaweed.store("pipeline"), fresh_seaweed.server.stop)
    with pytest.raises(TransientStorageError, match="unreachable"):
        process_upload(settings, ref, store=flaky)
    # storage comes back (new ports, same data): nothing was published, the upload is still pending
    fresh_seaweed.start()
    settings = Settings(storage=fresh_seaweed.cfg, sites_dir=clean_exports / "sites")
    store = fresh_seaweed.store("pipeline")
    assert latest_version(store, settings.storage, "site-a", "PONC-WT-01") is None
    assert [r.upload_id for r in pending_uploads(settings, store)] == [m.upload_id]
    # Airflow's retry runs the task again and it completes
    entry = process_upload(settings, ref, store=store)
    assert entry.status == "published" and entry.version_id == "site-a/PONC-WT-01@v1"
    assert [e.status for e in read_catalog(store, settings)] == ["published"]
