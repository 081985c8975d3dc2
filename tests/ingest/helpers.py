from __future__ import annotations

import datetime as dt
from pathlib import Path

from federation.ingest.landing import Manifest, upload_export
from federation.settings import Settings
from federation.storage import open_store

UPLOADED = dt.datetime(2025, 6, 30, 12, tzinfo=dt.UTC)


def upload(settings: Settings, site: str, folder: Path, study: str = "PONC-WT-01", **kw: object) -> Manifest:
    identity = site if settings.storage.kind == "s3" else "pipeline"
    store = open_store(settings.storage, identity)
    return upload_export(store, settings.storage, site, study, "1", folder, **{"now": UPLOADED, **kw})  # type: ignore[arg-type]
