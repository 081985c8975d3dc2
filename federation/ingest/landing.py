"""The landing-zone protocol.

A site uploads `<landing>/<site>/<upload_id>/<table>.csv`, then
`manifest.json` last (files, sizes, sha256, study, schema version). An upload
is complete when its manifest exists and every file matches it. The upload id
is derived from the content, so retrying after a network failure resumes the
same upload instead of starting a new one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from federation.exceptions import FederationError
from federation.storage import ObjectStore, PreconditionFailed, StorageConfig, layout
from federation.storage.layout import MANIFEST, upload_prefix


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    size: int
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    site_id: str
    study_id: str
    upload_id: str
    schema_version: str
    created: dt.datetime
    files: list[ManifestFile]

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")


class UploadError(FederationError):
    """An upload cannot be made as asked."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_upload_id(files: list[ManifestFile], study_id: str) -> str:
    h = hashlib.sha256(study_id.encode())
    for f in sorted(files, key=lambda f: f.name):
        h.update(f"{f.name}\0{f.size}\0{f.sha256}\n".encode())
    return f"u-{h.hexdigest()[:16]}"


def upload_export(store: ObjectStore, cfg: StorageConfig, site_id: str, study_id: str, schema_version: str,
                  folder: Path, *, upload_id: str | None = None, now: dt.datetime | None = None,
                  progress: Callable[[str], None] = lambda _m: None) -> Manifest:
    """Upload the CSV files of `folder`, then the manifest last. Safe to call again after a failure."""
    links = sorted(p.name for p in folder.iterdir() if p.is_symlink())
    if links:
        raise UploadError(f"{folder} holds symbolic links ({', '.join(links)}); they are never followed: "
                          "copy the files themselves into the export folder")
    csvs = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not csvs:
        raise UploadError(f"{folder} holds no .csv files")
    files = [ManifestFile(name=p.name, size=p.stat().st_size, sha256=sha256_file(p)) for p in csvs]
    uid = upload_id or content_upload_id(files, study_id)
    prefix = upload_prefix(cfg, site_id, uid)
    manifest = Manifest(site_id=site_id, study_id=study_id, upload_id=uid, schema_version=schema_version,
                        created=now or dt.datetime.now(dt.UTC), files=files)
    existing = _existing_manifest(store, prefix)
    if existing is not None:
        if [f.model_dump() for f in existing.files] == [f.model_dump() for f in files]:
            progress(f"upload {uid} is already complete")
            return existing
        raise UploadError(f"upload id {uid} was already used for other content; choose another --upload-id")
    present = {o.key: o.size for o in store.list(prefix)}
    for path, f in zip(csvs, files, strict=True):
        key = prefix + f.name
        if present.get(key) == f.size:
            progress(f"  {f.name} already uploaded")  # size matches; the pipeline checks the sha256
            continue
        progress(f"  uploading {f.name} ({f.size / 2**20:,.1f} MiB)")
        store.put_file(key, path)
    try:
        store.put_bytes(prefix + MANIFEST, manifest.to_bytes(), if_absent=True)
    except PreconditionFailed:
        other = _existing_manifest(store, prefix)
        if other is None or [f.model_dump() for f in other.files] != [f.model_dump() for f in files]:
            raise UploadError(f"upload id {uid} was completed concurrently with other content") from None
        return other
    return manifest


def _existing_manifest(store: ObjectStore, prefix: str) -> Manifest | None:
    try:
        return Manifest.model_validate_json(store.get_bytes(prefix + MANIFEST))
    except KeyError:
        return None


@dataclass(frozen=True)
class UploadRef:
    site_id: str
    upload_id: str
    complete: bool
    problem: str = ""

    @property
    def key(self) -> str:
        return f"{self.site_id}/{self.upload_id}"


def discover_uploads(store: ObjectStore, cfg: StorageConfig) -> list[UploadRef]:
    """Every upload in the landing zone, complete or not (a size check; sha256 is checked on processing)."""
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for obj in store.list(layout.landing_root(cfg)):
        parsed = layout.parse_landing_key(cfg, obj.key)
        if parsed is None:
            continue
        site, upload, name = parsed
        groups.setdefault((site, upload), {})[name] = obj.size
    out = []
    for (site, upload), files in sorted(groups.items()):
        if MANIFEST not in files:
            out.append(UploadRef(site, upload, False, "no manifest yet: the upload is still running or was cut off"))
            continue
        try:
            manifest = Manifest.model_validate_json(store.get_bytes(upload_prefix(cfg, site, upload) + MANIFEST))
        except (ValueError, KeyError) as exc:
            out.append(UploadRef(site, upload, True, f"manifest.json is not valid: {str(exc)[:200]}"))
            continue
        missing = [f.name for f in manifest.files if files.get(f.name) != f.size]
        if missing:
            out.append(UploadRef(site, upload, False, f"files missing or of the wrong size: {', '.join(missing)}"))
            continue
        out.append(UploadRef(site, upload, True))
    return out


def load_manifest(store: ObjectStore, cfg: StorageConfig, ref: UploadRef) -> Manifest:
    return Manifest.model_validate_json(store.get_bytes(upload_prefix(cfg, ref.site_id, ref.upload_id) + MANIFEST))


def manifest_payload(manifest: Manifest) -> dict[str, object]:
    return json.loads(manifest.model_dump_json())  # type: ignore[no-any-return]
