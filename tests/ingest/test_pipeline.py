"""Uploads go from the landing zone to a published version or to quarantine, and bad input loses nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from federation.ingest.landing import UploadRef, discover_uploads
from federation.ingest.pipeline import ingest_all, pending_uploads, process_upload, read_catalog
from federation.ingest.publish import latest_version, list_versions, read_table
from federation.settings import Settings
from federation.storage import open_store
from tests.ingest.helpers import sites_with_a_missing_code_map, upload

STUDY = "PONC-WT-01"


def _by_site(settings: Settings) -> dict[str, list]:  # type: ignore[type-arg]
    out: dict[str, list] = {}  # type: ignore[type-arg]
    for e in read_catalog(open_store(settings.storage, "pipeline"), settings):
        out.setdefault(e.site_id, []).append(e)
    return out


def test_valid_upload_is_published_and_invalid_one_quarantined(backend: Settings, clean_exports: Path,
                                                                broken_exports: Path) -> None:
    upload(backend, "site-a", clean_exports / "site-a" / STUDY)
    upload(backend, "site-b", broken_exports / "site-b" / "PONC-NB-02", study="PONC-NB-02")
    entries = {e.site_id: e for e in ingest_all(backend, progress=lambda _m: None)}
    store = open_store(backend.storage, "pipeline")

    a = entries["site-a"]
    assert a.status == "published" and a.version_id == "site-a/PONC-WT-01@v1"
    version = latest_version(store, backend.storage, "site-a", STUDY)
    assert version is not None and version.upload_id == a.upload_id
    patients = read_table(store, version, "patients")
    assert patients.num_rows == a.rows["patients"]
    assert set(version.tables) == {"patients", "diagnoses", "treatments", "adverse_events", "outcomes"}

    b = entries["site-b"]
    assert b.status == "quarantined" and "errors" in b.message
    report = json.loads(store.get_bytes(b.report.replace("report.html", "report.json")))
    assert report["status"] == "invalid" and report["counts"]["errors"] > 0
    # nothing lost: the upload is still in the landing zone and copied to quarantine, nothing published
    landing = [o.key for o in store.list(f"landing/site-b/{b.upload_id}/")]
    quarantined = [o.key for o in store.list(b.quarantine)]
    assert len(landing) == len(quarantined) == 6
    assert latest_version(store, backend.storage, "site-b", "PONC-NB-02") is None
    # processed uploads are not picked up again
    assert pending_uploads(backend) == []


def test_rerun_is_idempotent(backend: Settings, clean_exports: Path) -> None:
    upload(backend, "site-c", clean_exports / "site-c" / STUDY)
    first = ingest_all(backend, progress=lambda _m: None)[0]
    store = open_store(backend.storage, "pipeline")
    ref = UploadRef("site-c", first.upload_id, True)
    # the catalog short-circuits; and even without it, publishing again gives the same version
    again = process_upload(backend, ref)
    store.put_bytes(f"pipeline/catalog/site-c/uploads/{first.upload_id}.json", b'{"site_id": "site-c", "upload_id": "'
                    + first.upload_id.encode() + b'", "status": "failed"}')
    forced = process_upload(backend, ref)
    assert first.version_id == again.version_id == forced.version_id == "site-c/PONC-WT-01@v1"
    assert forced.message.startswith("already published")
    versions = list_versions(store, backend.storage, "site-c", STUDY)
    assert len(versions) == 1
    rows = read_table(store, versions[0], "adverse_events").num_rows
    assert rows == first.rows["adverse_events"]  # no duplicated rows


def test_new_upload_supersedes_and_old_version_stays_readable(backend: Settings, clean_exports: Path,
                                                              tmp_path: Path) -> None:
    upload(backend, "site-a", clean_exports / "site-a" / STUDY)
    ingest_all(backend, progress=lambda _m: None)
    second = tmp_path / "second"
    shutil.copytree(clean_exports / "site-a" / STUDY, second)
    lines = (second / "adverse_events.csv").read_text().splitlines()
    (second / "adverse_events.csv").write_text("\n".join(lines[:-5]) + "\n")
    upload(backend, "site-a", second)
    ingest_all(backend, progress=lambda _m: None)
    store = open_store(backend.storage, "pipeline")
    v1, v2 = list_versions(store, backend.storage, "site-a", STUDY)
    assert (v1.number, v2.number) == (1, 2)
    assert latest_version(store, backend.storage, "site-a", STUDY) == v2
    assert read_table(store, v1, "adverse_events").num_rows == read_table(store, v2, "adverse_events").num_rows + 5


def test_rejections_are_recorded_and_nothing_is_published(backend: Settings, clean_exports: Path,
                                                          tmp_path: Path) -> None:
    store = open_store(backend.storage, "pipeline")
    # 1. checksum mismatch: a file changed after its manifest was written (same size)
    m = upload(backend, "site-a", clean_exports / "site-a" / STUDY)
    key = f"landing/site-a/{m.upload_id}/outcomes.csv"
    data = bytearray(store.get_bytes(key))
    data[-3] = ord("9") if data[-3] != ord("9") else ord("8")
    store.put_bytes(key, bytes(data))
    # 2. unknown study in the manifest
    store.put_bytes("landing/site-c/u-unknown-study/patients.csv", b"x")
    store.put_bytes("landing/site-c/u-unknown-study/manifest.json", json.dumps({
        "site_id": "site-c", "study_id": "PONC-XX-99", "upload_id": "u-unknown-study", "schema_version": "1",
        "created": "2025-06-30T12:00:00Z", "files": [{"name": "patients.csv", "size": 1, "sha256": "0" * 64}],
    }).encode())
    # 3. a manifest claiming to be another site
    store.put_bytes("landing/site-d/u-as-other/patients.csv", b"x")
    store.put_bytes("landing/site-d/u-as-other/manifest.json", json.dumps({
        "site_id": "site-e", "study_id": STUDY, "upload_id": "u-as-other", "schema_version": "1",
        "created": "2025-06-30T12:00:00Z", "files": [{"name": "patients.csv", "size": 1, "sha256": "0" * 64}],
    }).encode())
    # 4. an incomplete upload (no manifest yet)
    store.put_bytes("landing/site-e/u-partial/patients.csv", b"x")
    # 5. an upload of a site that was never onboarded
    store.put_bytes("landing/site-zz/u-1/patients.csv", b"x")
    store.put_bytes("landing/site-zz/u-1/manifest.json", json.dumps({
        "site_id": "site-zz", "study_id": STUDY, "upload_id": "u-1", "schema_version": "1",
        "created": "2025-06-30T12:00:00Z", "files": [{"name": "patients.csv", "size": 1, "sha256": "0" * 64}],
    }).encode())

    ingest_all(backend, progress=lambda _m: None)
    cat = {e.site_id: e for e in read_catalog(store, backend)}
    assert cat["site-a"].status == "rejected" and "sha256" in cat["site-a"].message
    assert cat["site-c"].status == "rejected" and "PONC-XX-99" in cat["site-c"].message
    assert cat["site-d"].status == "rejected" and "can only upload for itself" in cat["site-d"].message
    assert cat["site-e"].status == "incomplete" and "no manifest" in cat["site-e"].message
    assert cat["site-zz"].status == "rejected" and "not onboarded" in cat["site-zz"].message
    assert store.list("harmonized/") == []
    # every byte that was uploaded is still there
    assert len(store.list("landing/")) == 6 + 2 + 2 + 1 + 2


def test_upload_retry_resumes_and_reused_id_is_refused(backend: Settings, clean_exports: Path,
                                                       tmp_path: Path) -> None:
    from federation.ingest.landing import UploadError

    folder = clean_exports / "site-d" / STUDY
    store = open_store(backend.storage, "pipeline")
    first = upload(backend, "site-d", folder)
    # simulate a cut-off upload: drop the manifest and one file, then retry
    prefix = f"landing/site-d/{first.upload_id}/"
    if backend.storage.kind == "local":
        from federation.storage.local import LocalStore

        assert isinstance(store, LocalStore)
        store.local_path(prefix + "manifest.json").unlink()
        store.local_path(prefix + "treatments.csv").unlink()
        assert not discover_uploads(store, backend.storage)[0].complete
    again = upload(backend, "site-d", folder)
    assert again.upload_id == first.upload_id
    assert discover_uploads(store, backend.storage)[0].complete
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / "patients.csv").write_text((other / "patients.csv").read_text() + "\n")
    with pytest.raises(UploadError, match="already used for other content"):
        upload(backend, "site-d", other, upload_id=first.upload_id)


def test_an_unexpected_error_is_recorded_as_failed(backend: Settings, clean_exports: Path,
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from federation.ingest import pipeline

    m = upload(backend, "site-a", clean_exports / "site-a" / STUDY)

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("harmonizer bug")

    original = pipeline.harmonize_parts
    monkeypatch.setattr(pipeline, "harmonize_parts", broken)
    with pytest.raises(RuntimeError):
        process_upload(backend, UploadRef("site-a", m.upload_id, True))
    store = open_store(backend.storage, "pipeline")
    (entry,) = read_catalog(store, backend)
    assert entry.status == "failed" and "harmonizer bug" in entry.message
    assert store.list("harmonized/") == []
    monkeypatch.setattr(pipeline, "harmonize_parts", original)
    assert [r.upload_id for r in pending_uploads(backend)] == [m.upload_id]  # picked up again next run
    assert process_upload(backend, UploadRef("site-a", m.upload_id, True)).status == "published"
    # without Airflow, one failing upload does not stop the others
    again = tmp_path / "again"
    shutil.copytree(clean_exports / "site-a" / STUDY, again)
    (again / "adverse_events.csv").write_text(
        "\n".join((again / "adverse_events.csv").read_text().splitlines()[:-1]) + "\n")
    upload(backend, "site-a", again)
    upload(backend, "site-c", clean_exports / "site-c" / STUDY)
    monkeypatch.setattr(pipeline, "harmonize_parts", lambda *a, **k: (broken() if k["site_id"] == "site-a"
                                                                      else original(*a, **k)))
    outcome = {e.site_id: e.status for e in ingest_all(backend, progress=lambda _m: None)}
    assert outcome == {"site-a": "failed", "site-c": "published"}


def test_upload_id_reused_after_processing_is_flagged_not_processed(backend: Settings, clean_exports: Path) -> None:
    m = upload(backend, "site-e", clean_exports / "site-e" / STUDY)
    (first,) = ingest_all(backend, progress=lambda _m: None)
    store = open_store(backend.storage, "pipeline")
    # the same upload id is written again with other content (a buggy or hostile client)
    key = f"landing/site-e/{m.upload_id}/manifest.json"
    manifest = json.loads(store.get_bytes(key))
    manifest["files"][0]["sha256"] = "f" * 64
    store.put_bytes(key, json.dumps(manifest).encode())
    assert pending_uploads(backend) == []
    (entry,) = read_catalog(store, backend)
    assert entry.status == "published" and entry.version_id == first.version_id
    assert "reused with different content" in entry.message
    assert len(list_versions(store, backend.storage, "site-e", STUDY)) == 1


def test_uploads_lists_waiting_uploads_with_times_newest_first(backend: Settings, clean_exports: Path,
                                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    """A data engineer's `federation uploads` shows what sits in landing unprocessed, not "no uploads yet"."""
    import datetime as dt

    import yaml

    from federation.cli import main

    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"storage": backend.storage.model_dump(mode="json"),
                                      "sites_dir": str(backend.sites_dir)}))
    upload(backend, "site-a", clean_exports / "site-a" / "PONC-WT-01", now=dt.datetime(2025, 6, 1, 9, tzinfo=dt.UTC))
    upload(backend, "site-c", clean_exports / "site-c" / "PONC-WT-01", now=dt.datetime(2025, 6, 2, 9, tzinfo=dt.UTC))
    assert main(["uploads", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 upload(s), newest first; 2 not processed yet"
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[3], r[4], r[6]) for r in rows] == [("site-c", "waiting", "2025-06-02", "-"),
                                                      ("site-a", "waiting", "2025-06-01", "-")]
    (ref,) = [r for r in pending_uploads(backend) if r.site_id == "site-a"]
    process_upload(backend, ref)
    assert main(["uploads", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 upload(s), newest first; 1 not processed yet"
    first, second = (line.split() for line in lines[2:])
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert first[:7] == ["site-a", ref.upload_id, "PONC-WT-01", "published", "2025-06-01", "09:00", today]
    assert second[:4] == ["site-c", second[1], "PONC-WT-01", "waiting"]


def test_reprocess_after_a_site_configuration_fix_publishes_a_new_version_and_keeps_the_old(
        backend: Settings, clean_exports: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from federation.cli import main
    from federation.ingest.pipeline import ReprocessRefused, reprocess

    sites, fixed = sites_with_a_missing_code_map(clean_exports, tmp_path / "sites")
    settings = backend.model_copy(update={"sites_dir": sites})
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"storage": settings.storage.model_dump(mode="json"), "sites_dir": str(sites)}))
    first = upload(settings, "site-d", clean_exports / "site-d" / STUDY)
    (entry,) = ingest_all(settings, progress=lambda _m: None)
    assert entry.status == "quarantined"
    store = open_store(settings.storage, "pipeline")
    report_prefix = f"reports/site-d/{first.upload_id}/"
    assert store.exists(report_prefix + "failures.csv")

    (sites / "site-d.yaml").write_text(fixed)  # the data engineer fixes the code map, then re-processes
    assert main(["reprocess", "--site", "site-d", "--upload", first.upload_id, "--config", str(config)]) == 0
    assert f"site-d/{first.upload_id}: quarantined -> published site-d/{STUDY}@v1" in capsys.readouterr().out
    (v1,) = list_versions(store, settings.storage, "site-d", STUDY)
    assert v1.data_id == f"{first.upload_id}.r1"  # a data folder of its own
    # the quarantined run's report is kept beside the new one; nothing of it is left at the top
    assert len(store.get_bytes(f"{report_prefix}earlier-0/failures.csv").splitlines()) > 1
    assert len(store.get_bytes(report_prefix + "failures.csv").splitlines()) == 1  # the new one: a header only
    assert store.exists(report_prefix + "report.html")

    again = reprocess(settings, UploadRef("site-d", first.upload_id, True))  # a published one, once more
    assert (again.status, again.version_id, again.reprocessed) == ("published", f"site-d/{STUDY}@v2", 2)
    assert [e["status"] for e in again.earlier] == ["quarantined", "published"]
    v1_again, v2 = list_versions(store, settings.storage, "site-d", STUDY)
    assert v1_again == v1 and v2.data_id == f"{first.upload_id}.r2"
    assert not set(t["key"] for t in v1.tables.values()) & set(t["key"] for t in v2.tables.values())
    for table in v1.tables:  # v1 reads exactly what it read (its checksums), and the same rows as v2
        assert read_table(store, v1, table).num_rows == read_table(store, v2, table).num_rows

    second = tmp_path / "second"
    shutil.copytree(clean_exports / "site-d" / STUDY, second)
    (second / "adverse_events.csv").write_text(
        "\n".join((second / "adverse_events.csv").read_text(encoding="utf-8").splitlines()[:-3]) + "\n",
        encoding="utf-8")
    upload(settings, "site-d", second)
    (newer,) = ingest_all(settings, progress=lambda _m: None)
    assert newer.version_id == f"site-d/{STUDY}@v3"
    with pytest.raises(ReprocessRefused, match="superseded by site-d/.*@v3.*re-process .* instead"):
        reprocess(settings, UploadRef("site-d", first.upload_id, True))
    with pytest.raises(ReprocessRefused, match="not in the catalog"):
        reprocess(settings, UploadRef("site-d", "u-never-uploaded", True))


def test_a_failed_reprocessing_and_its_automatic_retry_keep_the_lineage_and_every_earlier_report(
        backend: Settings, clean_exports: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: a re-processing that failed, then the next run's retry, started counting again and
    overwrote the original (invalid) report with a valid one, and left the catalog citing an old version."""

    from federation.ingest.pipeline import reprocess

    sites, fixed = sites_with_a_missing_code_map(clean_exports, tmp_path / "sites")
    settings = backend.model_copy(update={"sites_dir": sites})
    first = upload(settings, "site-d", clean_exports / "site-d" / STUDY)
    ref = UploadRef("site-d", first.upload_id, True)
    store = open_store(settings.storage, "pipeline")
    prefix = f"reports/site-d/{first.upload_id}/"
    assert ingest_all(settings, progress=lambda _m: None)[0].status == "quarantined"
    original = store.get_bytes(prefix + "report.json")
    (sites / "site-d.yaml").write_text(fixed)
    assert reprocess(settings, ref).version_id == f"site-d/{STUDY}@v1"
    assert reprocess(settings, ref).version_id == f"site-d/{STUDY}@v2"
    monkeypatch.setenv("FEDERATION_PSEUDONYM_KEY", "")  # the third re-processing fails
    with pytest.raises(Exception, match="pseudonymisation key"):
        reprocess(settings, ref)
    (failed,) = [e for e in read_catalog(store, settings) if e.upload_id == first.upload_id]
    assert (failed.status, failed.study_id, failed.reprocessed) == ("failed", STUDY, 3)
    assert [e["status"] for e in failed.earlier] == ["quarantined", "published", "published"]
    monkeypatch.setenv("FEDERATION_PSEUDONYM_KEY", "test-consortium-key-0123456789")
    (retried,) = ingest_all(settings, progress=lambda _m: None)  # the next run retries the failed upload
    assert (retried.status, retried.version_id, retried.reprocessed) == ("published", f"site-d/{STUDY}@v3", 4)
    assert [e["status"] for e in retried.earlier] == ["quarantined", "published", "published", "failed"]
    assert store.get_bytes(prefix + "earlier-0/report.json") == original  # the original invalid report, intact
    data_ids = [v.data_id for v in list_versions(store, settings.storage, "site-d", STUDY)]
    assert data_ids == [f"{first.upload_id}.r{n}" for n in (1, 2, 4)]  # no folder reused


def test_an_older_upload_is_not_published_over_a_newer_one(backend: Settings, clean_exports: Path,
                                                           tmp_path: Path) -> None:
    import datetime as dt

    older = upload(backend, "site-a", clean_exports / "site-a" / STUDY, now=dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
    newer_folder = tmp_path / "newer"
    shutil.copytree(clean_exports / "site-a" / STUDY, newer_folder)
    lines = (newer_folder / "adverse_events.csv").read_text().splitlines()
    (newer_folder / "adverse_events.csv").write_text("\n".join(lines[:-2]) + "\n")
    newer = upload(backend, "site-a", newer_folder, now=dt.datetime(2025, 6, 2, tzinfo=dt.UTC))
    assert process_upload(backend, UploadRef("site-a", newer.upload_id, True)).status == "published"
    late = process_upload(backend, UploadRef("site-a", older.upload_id, True))  # e.g. processed in parallel
    assert late.status == "superseded" and f"site-a/{newer.upload_id}" in late.message
    store = open_store(backend.storage, "pipeline")
    (only,) = list_versions(store, backend.storage, "site-a", STUDY)
    assert only.upload_id == newer.upload_id
