"""Query execution: partial results, pinned versions, the command line."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from federation.cli import main
from federation.query import Query, run_local
from federation.settings import Settings
from tests.federated import STUDY


@pytest.fixture()
def copy(federated: Settings, tmp_path: Path) -> Settings:
    """A copy of the federated storage this test may break."""
    shutil.copytree(federated.storage.root, tmp_path / "storage")
    return federated.model_copy(update={"storage": federated.storage.model_copy(update={"root": tmp_path / "storage"}),
                                        "audit_log": tmp_path / "audit.jsonl"})


def test_a_failing_site_blocks_release_unless_partial_is_asked(copy: Settings) -> None:
    for f in (copy.storage.root / "harmonized" / "site-d" / STUDY / "data").rglob("patients.parquet"):
        f.write_bytes(b"not parquet")
    refused = run_local(Query(study_id=STUDY, group_by=["sex"]), copy, "t")
    assert refused.status == "refused" and "site-d" in refused.reason and "--allow-partial" in refused.suggestion
    partial = run_local(Query(study_id=STUDY, group_by=["sex"], allow_partial=True), copy, "t")
    assert partial.status == "released" and "site-d" not in partial.versions
    assert "site-d" in partial.excluded and any("PARTIAL RESULT" in n for n in partial.notes)


def test_pinned_versions_reproduce_a_result_after_a_new_upload(copy: Settings) -> None:
    from federation.ingest.landing import upload_export
    from federation.ingest.pipeline import ingest_all
    from federation.storage import open_store

    q = Query(study_id=STUDY, statistic="crosstab", group_by=["arm", "sex"])
    before = run_local(q, copy, "t")
    exports = copy.sites_dir.parent / "site-b" / STUDY
    smaller = copy.storage.root.parent / "smaller"
    shutil.copytree(exports, smaller)
    lines = (smaller / "patients.csv").read_bytes().splitlines(keepends=True)
    (smaller / "patients.csv").write_bytes(b"".join(lines))  # same content: same upload id, idempotent
    upload_export(open_store(copy.storage), copy.storage, "site-b", STUDY, "1", smaller,
                  now=dt.datetime(2025, 7, 1, tzinfo=dt.UTC), upload_id="u-second")
    ingest_all(copy, progress=lambda _m: None)
    assert run_local(q, copy, "t").versions["site-b"] == f"site-b/{STUDY}@v2"
    pinned = run_local(q.model_copy(update={"versions": {"site-b": 1}}), copy, "t")
    assert pinned.versions == before.versions and pinned.payload == before.payload


def test_cli_query_formats_plot_and_refusal(copy: Settings, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(f"storage: {{kind: local, root: {copy.storage.root}}}\nsites_dir: {copy.sites_dir}\n"
                      f"audit_log: {copy.audit_log}\n")
    base = ["query", "--config", str(config), "--study", STUDY, "--analyst", "cli"]
    assert main([*base, "--by", "arm", "--exists", "adverse_events: grade >= 3"]) == 0
    out = capsys.readouterr().out
    assert "combined" in out and "audit entry #1" in out
    assert main([*base, "--stat", "km", "--endpoint", "efs", "--by", "histology_risk", "--format", "json",
                 "--plot", str(tmp_path / "km.png")]) == 0
    data = json.loads(capsys.readouterr().out.split("\nplot:")[0])
    assert data["status"] == "released" and data["audit_id"] == 2 and len(data["versions"]) == 6
    assert (tmp_path / "km.png").stat().st_size > 10_000
    # (another analyst: the first query would make this one a differencing attack on site-a's NR patient)
    assert main([*base[:-1], "cli2", "--stat", "crosstab", "--by", "stage", "--by", "arm", "--format", "csv",
                 "--plot", str(tmp_path / "bars.png")]) == 0
    assert capsys.readouterr().out.startswith("stage \\ arm,")
    assert main([*base, "--by", "pid"]) == 3
    assert "REFUSED" in capsys.readouterr().out
    assert main([*base, "--where", "sex ~ F"]) == 2
