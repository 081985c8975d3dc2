"""Queries against a real SeaweedFS: DuckDB reads each site's Parquet over httpfs with that site's query key."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.ingest.pipeline import ingest_all
from federation.query import Query, run_local
from federation.query.site.data import open_site
from federation.settings import Settings
from federation.storage import AccessDenied
from tests.ingest.helpers import upload

pytestmark = pytest.mark.integration


def test_federated_count_over_s3(fresh_seaweed, clean_exports: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(storage=fresh_seaweed.cfg, sites_dir=clean_exports / "sites",
                        audit_log=tmp_path / "audit.jsonl")
    for site in ("site-a", "site-c", "site-e"):
        upload(settings, site, clean_exports / site / "PONC-WT-01")
    entries = {e.site_id: e for e in ingest_all(settings, progress=lambda _m: None)}
    r = run_local(Query(study_id="PONC-WT-01", sites=["site-a", "site-c", "site-e"], group_by=["sex"]),
                  settings, "t")
    assert r.status == "released", r.reason
    assert r.payload["total"]["combined"] == sum(e.rows["patients"] for e in entries.values())
    assert r.payload["total"]["per_site"] == {s: e.rows["patients"] for s, e in entries.items()}
    # the DuckDB secret of a site is scoped to that site: site-a's connection cannot read site-c's files
    data = open_site(settings.storage, "site-a", "PONC-WT-01")
    try:
        assert data.sql("SELECT count(*) FROM patients")[0][0] == entries["site-a"].rows["patients"]
    finally:
        data.close()
    site_c_commit = "harmonized/site-c/PONC-WT-01/_versions/000001.json"
    assert fresh_seaweed.store("query-site-c").exists(site_c_commit)
    with pytest.raises(AccessDenied):
        fresh_seaweed.store("query-site-a").get_bytes(site_c_commit)
