"""Query execution: partial results and pinned versions (the command line: tests/service)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

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


def test_parameters_outside_what_sites_compute_are_refused_not_crashed(federated: Settings, tmp_path: Path) -> None:
    from federation.query import Filter, run_local

    settings = federated.model_copy(update={"audit_log": tmp_path / "audit.jsonl"})
    r = run_local(Query(study_id=STUDY, statistic="km", grid_days=0.5), settings, "t")  # finer than a day
    assert r.status == "refused" and "not one the policy declares" in r.reason and r.audit_id is not None
    with pytest.raises(ValueError, match="at most 20"):  # and the query model itself bounds what it carries
        Query(study_id=STUDY, filters=[Filter(column="sex", op="!=", value=f"x{i}") for i in range(25)])


def test_a_query_that_fails_is_audited_as_failed_and_releases_nothing(federated: Settings, tmp_path: Path) -> None:
    from federation.query import run_local
    from federation.query.central.audit import AuditLog

    settings = federated.model_copy(update={"audit_log": tmp_path / "audit.jsonl"})
    # the same covariate twice: a singular information matrix
    r = run_local(Query(study_id=STUDY, statistic="cox", covariates=["os_days", "os_days"]), settings, "t")
    assert r.status == "failed" and r.payload == {} and "nothing was released" in r.reason
    assert AuditLog(settings.audit_log).entries()[-1]["outcome"] == "failed"


def test_results_with_too_many_groups_are_refused_before_suppression(federated: Settings, tmp_path: Path) -> None:
    from federation.query import run_local

    settings = federated.model_copy(update={"audit_log": tmp_path / "audit.jsonl"})
    r = run_local(Query(study_id=STUDY, group_by=["race", "enrollment_year", "sex"]), settings,
                  "t")
    assert r.status == "refused" and "more than 120 groups" in r.reason
