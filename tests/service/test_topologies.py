"""Both deployment topologies at once, with real processes on 127.0.0.1: the query service, three site
nodes and an analyst client. site-a and site-b are consortium-hosted (one SeaweedFS at the centre, each
node holding only its own site's query credential); site-c is site-hosted (its own SeaweedFS, its own
ingestion, its own node: its rows never leave it). The service holds no data credential at all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from federation.client import Client
from federation.ingest.pipeline import ingest_all
from federation.ingest.publish import latest_version, read_table
from federation.localrun import LocalFederation
from federation.settings import Settings
from tests.conftest import Seaweed
from tests.ingest.helpers import upload

pytestmark = pytest.mark.integration
STUDY = "PONC-WT-01"


def _node_settings(sw: Seaweed, site: str, sites_dir: Path, folder: Path) -> Path:
    """A node's settings: its storage endpoint and a secrets folder holding only its site's query key."""
    secrets = folder / f"{site}-secrets"
    secrets.mkdir(parents=True)
    shutil.copy(sw.workdir / "secrets" / f"query-{site}.json", secrets / f"query-{site}.json")
    path = folder / f"{site}.yaml"
    cfg = sw.cfg.model_copy(update={"secrets_dir": secrets})
    path.write_text(yaml.safe_dump({"storage": cfg.model_dump(mode="json"), "sites_dir": str(sites_dir)}))
    return path


def _patients(sw: Seaweed, site: str) -> pd.DataFrame:
    store = sw.store("pipeline")
    version = latest_version(store, sw.cfg, site, STUDY)
    assert version is not None
    return read_table(store, version, "patients").to_pandas()


def test_consortium_hosted_and_site_hosted_sites_answer_together(clean_exports: Path, tmp_path: Path) -> None:
    centre = Seaweed(tmp_path / "centre").start()
    hospital_c = Seaweed(tmp_path / "hospital-c").start()
    try:
        sites_dir = clean_exports / "sites"
        central = Settings(storage=centre.cfg, sites_dir=sites_dir)
        for site in ("site-a", "site-b"):
            upload(central, site, clean_exports / site / STUDY)
        assert {e.status for e in ingest_all(central, progress=lambda _m: None)} == {"published"}
        own = Settings(storage=hospital_c.cfg, sites_dir=sites_dir)  # the hospital's own site_ingest
        upload(own, "site-c", clean_exports / "site-c" / STUDY)
        assert [e.status for e in ingest_all(own, progress=lambda _m: None)] == ["published"]

        nodes = {"site-a": _node_settings(centre, "site-a", sites_dir, tmp_path / "nodes"),
                 "site-b": _node_settings(centre, "site-b", sites_dir, tmp_path / "nodes"),
                 "site-c": _node_settings(hospital_c, "site-c", sites_dir, tmp_path / "nodes")}
        with LocalFederation(tmp_path / "run", nodes) as fed:
            assert fed.service is not None
            environ = Path(f"/proc/{fed.service.pid}/environ").read_bytes().decode(errors="replace")
            assert "FEDERATION_S3_" not in environ and "FEDERATION_CONFIG" not in environ
            assert not [p for p in fed.state.rglob("*") if p.name.startswith("query-") or "secret" in p.name]

            analyst = Client(fed.url, fed.token("analyst"))
            pooled = pd.concat([_patients(centre, "site-a"), _patients(centre, "site-b"),
                                _patients(hospital_c, "site-c")])
            r = analyst.query(STUDY, group_by=["sex"]).result
            assert r.status == "released", r.reason
            assert set(r.versions) == {"site-a", "site-b", "site-c"}
            assert r.payload["total"]["combined"] == len(pooled)
            truth = pooled.groupby("sex").size().to_dict()
            for row in r.payload["rows"]:
                if not isinstance(row["combined"], dict):
                    assert row["combined"] == truth[row["group"][0]]
            mean = analyst.query(STUDY, statistic="mean", column="age_at_diagnosis_years").result
            assert mean.payload["rows"][0]["combined"]["mean"] == pytest.approx(
                pooled["age_at_diagnosis_years"].mean(), rel=1e-12)
            km = analyst.query(STUDY, statistic="km", endpoint="efs").result
            assert km.payload["curves"][0]["combined"]["points"][0]["at_risk"] == len(pooled)
            # every node answered, and logged what it answered; the audit log checks against their heads
            for site in nodes:
                log = (fed.workdir / "node-logs" / f"{site}.jsonl").read_text()
                assert '"event": "answered"' in log
            # the site-hosted hospital's coordinator sees its uploads through its own node's credential
            fed.add_user("coord-c", "site_coordinator", "site-c")
            coordinator = Client(fed.url, fed.token("coord-c"))
            (status,) = coordinator.site_uploads()["uploads"]
            assert status["status"] == "published" and status["has_report"]
            check = Client(fed.url, fed.token("auditor")).audit_verify()
            assert check["problems"] == [] and check["nodes_checked"] == ["site-a", "site-b", "site-c"]
    finally:
        centre.server.stop()
        hospital_c.server.stop()
