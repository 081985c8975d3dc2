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


def sites_with_a_missing_code_map(clean_exports: Path, folder: Path) -> tuple[Path, str]:
    """A copy of the synthetic site configurations in `folder` where site-d's code map lacks 'w' (weiblich):
    its exports are quarantined until the configuration is fixed. Returns (sites folder, the fixed site-d.yaml
    text to write back)."""
    import shutil

    import yaml

    shutil.copytree(clean_exports / "sites", folder)
    fixed = (folder / "site-d.yaml").read_text()
    broken = yaml.safe_load(fixed)
    del broken["conventions"]["code_maps"]["patients"]["sex"]["w"]
    (folder / "site-d.yaml").write_text(yaml.safe_dump(broken))
    return folder, fixed
