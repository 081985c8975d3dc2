"""One upload, from the landing zone to a published version or to quarantine.

`process_upload` is what the Airflow task calls and what `federation ingest`
calls without Airflow. Every outcome, good or bad, is written to the upload
catalog (`<pipeline>/catalog/<site>/uploads/<upload_id>.json`); bad input never
raises. Only storage outages raise (TransientStorageError), so Airflow
retries them; nothing is published before the final commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from federation.exceptions import ConfigurationError
from federation.ingest.harmonize import harmonize_parts
from federation.ingest.landing import Manifest, UploadRef, discover_uploads, load_manifest, sha256_file
from federation.ingest.publish import publish
from federation.schema import load_dictionary, load_registry
from federation.settings import Settings
from federation.storage import ObjectStore, TransientStorageError, layout, open_store
from federation.storage.layout import MANIFEST, upload_prefix
from federation.validation.runner import ValidationRequest, validate_export

log = logging.getLogger(__name__)

FINAL = {"published", "quarantined", "rejected", "superseded"}
RECORDED = "recorded in the upload catalog as failed"  # the note on an exception whose failure is saved


@dataclass
class CatalogEntry:
    site_id: str
    upload_id: str
    status: str  # published | quarantined | rejected | superseded | incomplete | failed
    message: str = ""
    study_id: str = ""
    manifest_sha256: str = ""
    rows: dict[str, int] = field(default_factory=dict)
    version_id: str = ""
    report: str = ""
    quarantine: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    updated: str = ""  # when this entry was written (UTC, ISO 8601)
    uploaded: str = ""  # when the site made the upload (its manifest's `created`)
    # how many times it was re-processed (`reprocess`), and what each earlier processing ended as
    reprocessed: int = 0
    earlier: list[dict[str, str]] = field(default_factory=list)
    # failed attempts in a row (each run retries a failed upload); notifications go out for the first
    failures: int = 0

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()


def read_catalog(store: ObjectStore, settings: Settings, site_id: str | None = None) -> list[CatalogEntry]:
    """The upload catalog, of every site or of `site_id` only (what that site's node may read)."""
    out = []
    prefix = layout.catalog_site(settings.storage, site_id) if site_id else layout.catalog_root(settings.storage)
    for obj in store.list(prefix):
        out.append(CatalogEntry(**json.loads(store.get_bytes(obj.key))))
    return sorted(out, key=lambda e: (e.updated, e.site_id, e.upload_id))


def list_uploads(settings: Settings, store: ObjectStore | None = None) -> list[CatalogEntry]:
    """Every upload, newest first: the catalog's entries and the uploads in landing that no run has
    processed yet (status `waiting`, or `incomplete` while files are missing), which are not saved."""
    store = store or open_store(settings.storage, "pipeline")
    entries = {(e.site_id, e.upload_id): e for e in read_catalog(store, settings)}
    for ref in discover_uploads(store, settings.storage):
        entry = entries.get((ref.site_id, ref.upload_id))
        if entry is not None and entry.status != "incomplete":
            continue
        waiting = CatalogEntry(ref.site_id, ref.upload_id, "waiting" if ref.complete and not ref.problem
                               else "incomplete", ref.problem or "complete; the next site_ingest run processes it")
        try:
            manifest = load_manifest(store, settings.storage, ref)
            waiting.study_id, waiting.uploaded = manifest.study_id, manifest.created.isoformat(timespec="seconds")
        except (KeyError, ValueError):
            pass
        waiting.updated = entry.updated if entry is not None else ""
        entries[(ref.site_id, ref.upload_id)] = waiting
    return sorted(entries.values(), key=lambda e: (max(_utc(e.updated), _utc(e.uploaded)), e.site_id, e.upload_id),
                  reverse=True)


def _utc(stamp: str) -> dt.datetime:
    """An ISO time from the catalog or a manifest, comparable (naive ones are UTC); the epoch if absent."""
    if not stamp:
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    t = dt.datetime.fromisoformat(stamp)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def catalog_entry(settings: Settings, ref: UploadRef, store: ObjectStore | None = None) -> CatalogEntry | None:
    """The catalog's entry for one upload, None if it has none yet."""
    return _get_entry(store or open_store(settings.storage, "pipeline"), settings, ref)


def _get_entry(store: ObjectStore, settings: Settings, ref: UploadRef) -> CatalogEntry | None:
    try:
        key = layout.catalog_key(settings.storage, ref.site_id, ref.upload_id)
        return CatalogEntry(**json.loads(store.get_bytes(key)))
    except KeyError:
        return None


def _save(store: ObjectStore, settings: Settings, entry: CatalogEntry) -> CatalogEntry:
    entry.updated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    store.put_bytes(layout.catalog_key(settings.storage, entry.site_id, entry.upload_id), entry.to_json())
    return entry


def pending_uploads(settings: Settings, store: ObjectStore | None = None) -> list[UploadRef]:
    """Complete uploads not processed yet; incomplete ones are recorded in the catalog and skipped."""
    store = store or open_store(settings.storage, "pipeline")
    out = []
    for ref in discover_uploads(store, settings.storage):
        entry = _get_entry(store, settings, ref)
        if not ref.complete:
            if entry is None or entry.status != "incomplete" or entry.message != ref.problem:
                _save(store, settings, CatalogEntry(ref.site_id, ref.upload_id, "incomplete", ref.problem))
            continue
        if entry is not None and entry.status in FINAL:
            digest = _manifest_digest(store, settings, ref)
            if entry.manifest_sha256 and digest != entry.manifest_sha256 and "reused" not in entry.message:
                entry.message += (" | the upload id was reused with different content after processing; "
                                  "that content was NOT processed; upload it under a new id")
                _save(store, settings, entry)
            continue
        out.append(ref)
    return out


def _manifest_digest(store: ObjectStore, settings: Settings, ref: UploadRef) -> str:
    data = store.get_bytes(upload_prefix(settings.storage, ref.site_id, ref.upload_id) + MANIFEST)
    return hashlib.sha256(data).hexdigest()


def process_upload(settings: Settings, ref: UploadRef, store: ObjectStore | None = None,
                   workdir: Path | None = None) -> CatalogEntry:
    """Validate one upload, then publish it or quarantine it. Idempotent.

    Storage outages raise TransientStorageError (the caller retries). Any other unexpected error is
    recorded in the catalog as `failed`, with its message, before it is raised.
    """
    store = store or open_store(settings.storage, "pipeline")
    try:
        return _process(settings, ref, store, workdir)
    except TransientStorageError:
        raise
    except Exception as exc:
        if RECORDED not in getattr(exc, "__notes__", []):
            before = _get_entry(store, settings, ref)
            _save(store, settings, CatalogEntry(ref.site_id, ref.upload_id, "failed", _unexpected(exc),
                                                failures=_failures(before) + 1))
        raise


def _unexpected(exc: BaseException) -> str:
    return f"unexpected error: {type(exc).__name__}: {exc}"[:500]


def _failures(entry: CatalogEntry | None) -> int:
    return entry.failures if entry is not None and entry.status == "failed" else 0


def _history(entry: CatalogEntry) -> dict[str, str]:
    return {"status": entry.status, "version_id": entry.version_id, "message": entry.message,
            "updated": entry.updated}


def _process(settings: Settings, ref: UploadRef, store: ObjectStore, workdir: Path | None,
             again: CatalogEntry | None = None) -> CatalogEntry:
    """`again`: the catalog entry of an upload processed before, to process once more (`reprocess`). An
    unexpected error is saved as `failed` with everything known so far (study, times, lineage), then raised."""
    existing = _get_entry(store, settings, ref)
    if again is None and existing is not None and existing.status in FINAL:
        return existing
    # the processing this one continues: the one asked to re-process, or a failed retry of a re-processing
    lineage = again if again is not None else (
        existing if existing is not None and existing.status == "failed" and (existing.reprocessed or
                                                                               existing.earlier) else None)
    entry = CatalogEntry(ref.site_id, ref.upload_id, "failed")
    if lineage is not None:
        entry.reprocessed, entry.earlier = lineage.reprocessed, [*lineage.earlier, _history(lineage)]
    try:
        return _run(settings, ref, store, workdir, entry, lineage)
    except TransientStorageError:
        raise
    except Exception as exc:
        entry.status, entry.message = "failed", _unexpected(exc)
        entry.failures = _failures(existing) + 1
        _save(store, settings, entry)
        exc.add_note(RECORDED)
        raise


def _next_processing(settings: Settings, store: ObjectStore, ref: UploadRef, study_id: str, counted: int) -> int:
    """The number of a re-processing: past every number storage already holds for the upload (its data
    folders `<upload>.r<N>`, its kept reports `earlier-<N>`) and the catalog's count, so nothing is reused."""
    from federation.ingest.publish import list_versions

    used = [counted]
    for v in list_versions(store, settings.storage, ref.site_id, study_id):
        tail = v.processing.removeprefix(f"{ref.upload_id}.r")
        if v.upload_id == ref.upload_id and tail.isdigit():
            used.append(int(tail))
    report_prefix = layout.report_prefix(settings.storage, ref.site_id, ref.upload_id)
    for obj in store.list(report_prefix):
        first = obj.key[len(report_prefix):].split("/", 1)[0]
        if first.startswith("earlier-") and first[8:].isdigit():
            used.append(int(first[8:]) + 1)
    return max(used) + 1


def _run(settings: Settings, ref: UploadRef, store: ObjectStore, workdir: Path | None, entry: CatalogEntry,
         lineage: CatalogEntry | None) -> CatalogEntry:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    prefix = upload_prefix(settings.storage, ref.site_id, ref.upload_id)
    try:
        raw_manifest = store.get_bytes(prefix + MANIFEST)
        entry.manifest_sha256 = hashlib.sha256(raw_manifest).hexdigest()
        manifest = Manifest.model_validate_json(raw_manifest)
    except (KeyError, ValueError) as exc:
        entry.status, entry.message = "rejected", f"manifest.json is missing or not valid: {str(exc)[:300]}"
        return _save(store, settings, entry)
    entry.study_id = manifest.study_id
    entry.uploaded = manifest.created.isoformat(timespec="seconds")
    if lineage is not None:
        entry.reprocessed = _next_processing(settings, store, ref, manifest.study_id, lineage.reprocessed)
    problem = _check_manifest(settings, ref, manifest)
    if problem:
        entry.status, entry.message = "rejected", problem
        return _save(store, settings, entry)

    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"ingest-{ref.site_id}-") as tmp:
        folder = Path(tmp)
        for f in manifest.files:
            store.download(prefix + f.name, folder / f.name)
            if sha256_file(folder / f.name) != f.sha256:
                entry.status = "rejected"
                entry.message = (f"{f.name} does not match the sha256 in its manifest: the file changed or was "
                                 "cut off after the manifest was written; upload again")
                return _save(store, settings, entry)
        timings["download_s"] = round(time.perf_counter() - t0, 3)
        size = sum((folder / f.name).stat().st_size for f in manifest.files) / 2**20
        log.info("%s: downloaded %d file(s), %.1f MiB, sha256 checked (%.1f s)", ref.key, len(manifest.files), size,
                 timings["download_s"])

        site = settings.site(ref.site_id)
        t1 = time.perf_counter()
        (folder / "_parts").mkdir()
        report = validate_export(ValidationRequest(
            path=folder, site=site, study_id=manifest.study_id, upload_date=manifest.created.date(),
            max_file_bytes=settings.max_file_mb * 2**20, memory_mb=settings.memory_mb, workdir=folder / "_parts"),
            keep_sources=True)
        timings["validate_s"] = round(time.perf_counter() - t1, 3)
        entry.rows = {t.table: t.rows for t in report.tables}
        log.info("%s: validated %s rows in %d table(s) of %s: %s, %d error(s) (%.1f s)", ref.key,
                 f"{sum(entry.rows.values()):,}", len(entry.rows), manifest.study_id, report.status,
                 len(report.errors) + len(report.unusable), timings["validate_s"])
        report_prefix = layout.report_prefix(settings.storage, ref.site_id, ref.upload_id)
        if lineage is not None:  # the earlier processing's report stays readable beside the new one
            for obj in store.list(report_prefix):
                rel = obj.key[len(report_prefix):]
                if not rel.startswith("earlier-"):
                    store.copy(obj.key, f"{report_prefix}earlier-{entry.reprocessed - 1}/{rel}")
                    store.delete(obj.key)  # nothing of the old report is left beside the new one
        rep_dir = folder / "_report"
        written = report.write(rep_dir)
        for path in sorted(f for f in rep_dir.rglob("*") if f.is_file()):  # the report and its Data Docs
            store.put_file(report_prefix + path.relative_to(rep_dir).as_posix(), path)
        entry.report = report_prefix + written["html"].name

        if report.status != "valid":
            if report.parts is not None:
                report.parts.close()
            qprefix = layout.quarantine_prefix(settings.storage, ref.site_id, ref.upload_id)
            for f in manifest.files:
                store.put_file(qprefix + f.name, folder / f.name)
            store.put_bytes(qprefix + MANIFEST, raw_manifest)
            entry.status, entry.quarantine = "quarantined", qprefix
            n = len(report.errors) + len(report.unusable)
            entry.message = f"{report.status}: {n:,} errors; see the report"
            entry.seconds = {**timings, "total_s": round(time.perf_counter() - t0, 3)}
            log.info("%s: quarantined (%s); report at %s", ref.key, entry.message, entry.report)
            return _save(store, settings, entry)

        later = _published_later(settings, store, ref, entry)
        if later:
            if report.parts is not None:
                report.parts.close()
            entry.status = "superseded"
            entry.message = (f"valid, but not published: {later} was uploaded after it and is already published, "
                             "so publishing this older export would make older data the latest; upload it "
                             "again if it should be the latest")
            entry.seconds = {**timings, "total_s": round(time.perf_counter() - t0, 3)}
            log.info("%s: superseded (%s)", ref.key, later)
            return _save(store, settings, entry)
        t2 = time.perf_counter()
        dictionary = load_dictionary(manifest.schema_version)
        out = folder / "_harmonized"
        out.mkdir()
        with report.parts:
            tables = harmonize_parts(dictionary, report.parts, study_id=manifest.study_id, site_id=ref.site_id,
                                     upload_id=ref.upload_id, key=settings.pseudonym_key(), folder=out)
        timings["harmonize_s"] = round(time.perf_counter() - t2, 3)
        log.info("%s: harmonized %d table(s) (%.1f s)", ref.key, len(tables), timings["harmonize_s"])
        t3 = time.perf_counter()
        data_id = f"{ref.upload_id}.r{entry.reprocessed}" if entry.reprocessed else ref.upload_id
        version, created = publish(store, settings.storage, site_id=ref.site_id, study_id=manifest.study_id,
                                   upload_id=ref.upload_id, schema_version=manifest.schema_version, tables=tables,
                                   data_id=data_id, uploaded=entry.uploaded)
        timings["publish_s"] = round(time.perf_counter() - t3, 3)
        log.info("%s: %s version %s of %s (%.1f s)", ref.key, "published" if created else "already published as",
                 version.version_id, manifest.study_id, timings["publish_s"])
    entry.status, entry.version_id = "published", version.version_id
    entry.message = "published" if created else "already published earlier (idempotent re-run)"
    entry.seconds = {**timings, "total_s": round(time.perf_counter() - t0, 3)}
    return _save(store, settings, entry)


class ReprocessRefused(ConfigurationError):
    """The upload cannot be re-processed as asked (unknown, not processed yet, or superseded)."""


def reprocess(settings: Settings, ref: UploadRef, store: ObjectStore | None = None,
              workdir: Path | None = None) -> CatalogEntry:
    """Validate and harmonize an upload processed before once more, with today's site configuration and
    dictionary, and publish it as a new version if it passes (quarantine it if not). Earlier versions and
    their files stay as they were: the new one has its own data folder (`<upload_id>.r<N>`), so results
    that cite an earlier version still read exactly what they read. Refused for an upload that a later
    upload of the same site and study superseded (its data would become the latest again)."""
    store = store or open_store(settings.storage, "pipeline")
    before = _get_entry(store, settings, ref)
    if before is None:
        raise ReprocessRefused(f"{ref.key} is not in the catalog: no run has processed it yet (it is processed "
                               "by the next site_ingest run, or `federation ingest`)")
    if before.status not in FINAL and before.status != "failed":
        raise ReprocessRefused(f"{ref.key} is {before.status}: {before.message}")
    later = _later_upload(settings, store, before)
    if later:
        raise ReprocessRefused(f"{ref.key} was superseded by {later}: re-processing it would make its older data "
                               f"the latest of {before.study_id}; re-process {later.split(' ')[0]} instead")
    return _process(settings, ref, store, workdir, again=before)  # a failure is recorded with its lineage


def _published_later(settings: Settings, store: ObjectStore, ref: UploadRef, entry: CatalogEntry) -> str:
    """The upload of the latest published version of the study when the site made it after this one
    ('site/upload (version)'), else ''. Versions published before upload times were recorded are not compared."""
    from federation.ingest.publish import latest_version

    latest = latest_version(store, settings.storage, ref.site_id, entry.study_id)
    if latest is None or latest.upload_id == ref.upload_id or not latest.uploaded or not entry.uploaded:
        return ""
    if _utc(latest.uploaded) > _utc(entry.uploaded):
        return f"{ref.site_id}/{latest.upload_id} ({latest.version_id})"
    return ""


def _later_upload(settings: Settings, store: ObjectStore, entry: CatalogEntry) -> str:
    """An upload of the same site and study published after `entry`'s data was (or, if it never was,
    uploaded after it), as 'site/upload (version)'; '' when none."""
    from federation.ingest.publish import list_versions

    if not entry.study_id:
        return ""
    versions = list_versions(store, settings.storage, entry.site_id, entry.study_id)
    mine = [v.number for v in versions if v.upload_id == entry.upload_id]
    others = [v for v in versions if v.upload_id != entry.upload_id]
    if mine:
        newer = [v for v in others if v.number > max(mine)]
    else:
        newer = [v for v in others if _utc(v.created) > _utc(entry.uploaded)] if entry.uploaded else others
    return f"{entry.site_id}/{newer[-1].upload_id} ({newer[-1].version_id})" if newer else ""


def _check_manifest(settings: Settings, ref: UploadRef, manifest: Manifest) -> str:
    if manifest.site_id != ref.site_id:
        return (f"the manifest says site {manifest.site_id!r} but it was uploaded under {ref.site_id!r}: "
                "a site can only upload for itself")
    if manifest.upload_id != ref.upload_id:
        return f"the manifest's upload_id {manifest.upload_id!r} differs from its folder {ref.upload_id!r}"
    try:
        settings.site(ref.site_id)
    except ConfigurationError:
        return f"site {ref.site_id!r} is not onboarded (no site configuration); see docs/operations.md"
    try:
        study = load_registry().study(manifest.study_id)
    except ConfigurationError as exc:
        return str(exc)
    if manifest.schema_version not in study.versions():
        return (f"the manifest declares dictionary v{manifest.schema_version} but study {study.study_id} "
                f"uses v{study.schema_version}" + (f" (and takes {', '.join('v' + v for v in study.also_accepts)})"
                                                   if study.also_accepts else ""))
    declared = settings.site(ref.site_id).dictionaries.get(study.study_id, study.schema_version)
    if manifest.schema_version != declared:
        return (f"the manifest declares dictionary v{manifest.schema_version} but {ref.site_id}'s configuration "
                f"says its {study.study_id} exports follow v{declared}")
    return ""


def ingest_all(settings: Settings, progress: Any = print) -> list[CatalogEntry]:
    """Discover and process every pending upload (what the DAG does, without Airflow). An upload that fails
    unexpectedly is recorded as `failed` and the others are still processed; storage outages raise."""
    store = open_store(settings.storage, "pipeline")
    out = []
    for ref in pending_uploads(settings, store):
        progress(f"processing {ref.key} ...")
        try:
            out.append(process_upload(settings, ref, store))
        except TransientStorageError:
            raise
        except Exception as exc:  # recorded in the catalog by process_upload
            progress(f"{ref.key} could not be processed: {type(exc).__name__}: {exc}")
            out.append(_get_entry(store, settings, ref) or CatalogEntry(ref.site_id, ref.upload_id, "failed",
                                                                       str(exc)[:500]))
    return out
