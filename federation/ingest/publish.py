"""Atomic, versioned publishing of a site's harmonized tables.

Layout, per site and study, in the site's own location:

    <harmonized>/<site>/<study>/data/<upload_id>/<table>.parquet
    <harmonized>/<site>/<study>/_versions/<NNNNNN>.json   <- the commit

The data files are written first; the version is committed by one
conditional write (put-if-absent) of the next `_versions/` object, which
lists every table file with its row count and sha256. Readers take the
highest committed version and read exactly the files it lists, so they see
the previous version or the new one, never a mix: a writer that dies before
the commit leaves only unreferenced files. Re-publishing an upload that is
already committed returns its version. Earlier versions stay readable. See
docs/decisions/0005-publishing.md for why this and not a table format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from federation.exceptions import FederationError
from federation.ingest.landing import sha256_file
from federation.storage import ObjectStore, PreconditionFailed, StorageConfig, layout


class PublishError(FederationError):
    """A version could not be committed."""


@dataclass(frozen=True)
class Version:
    site_id: str
    study_id: str
    number: int
    upload_id: str
    schema_version: str
    created: str
    tables: dict[str, dict[str, Any]]  # table -> {key, rows, sha256}
    # the data folder: the upload id, or `<upload_id>.r<N>` for its N-th re-processing (`pipeline.reprocess`)
    data_id: str = ""
    uploaded: str = ""  # when the site made the upload (its manifest's `created`); "" in older versions

    @property
    def processing(self) -> str:
        return self.data_id or self.upload_id

    @property
    def version_id(self) -> str:
        """What results cite: `<site>/<study>@v<number>`."""
        return f"{self.site_id}/{self.study_id}@v{self.number}"

    def to_json(self) -> bytes:
        return (json.dumps({"site_id": self.site_id, "study_id": self.study_id, "number": self.number,
                            "version_id": self.version_id, "upload_id": self.upload_id,
                            "schema_version": self.schema_version, "created": self.created,
                            **({"data_id": self.data_id} if self.data_id else {}),
                            **({"uploaded": self.uploaded} if self.uploaded else {}), "tables": self.tables},
                           indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Version:
        d = json.loads(data)
        return cls(site_id=d["site_id"], study_id=d["study_id"], number=d["number"], upload_id=d["upload_id"],
                   schema_version=d["schema_version"], created=d["created"], tables=d["tables"],
                   data_id=d.get("data_id", ""), uploaded=d.get("uploaded", ""))


def list_versions(store: ObjectStore, cfg: StorageConfig, site_id: str, study_id: str) -> list[Version]:
    prefix = layout.versions_prefix(cfg, site_id, study_id)
    return [Version.from_json(store.get_bytes(o.key)) for o in store.list(prefix) if o.key.endswith(".json")]


def latest_version(store: ObjectStore, cfg: StorageConfig, site_id: str, study_id: str) -> Version | None:
    prefix = layout.versions_prefix(cfg, site_id, study_id)
    commits = [o.key for o in store.list(prefix) if o.key.endswith(".json")]
    if not commits:
        return None
    return Version.from_json(store.get_bytes(max(commits)))


def get_version(store: ObjectStore, cfg: StorageConfig, site_id: str, study_id: str, number: int) -> Version:
    key = layout.version_key(cfg, site_id, study_id, number)
    try:
        return Version.from_json(store.get_bytes(key))
    except KeyError:
        raise PublishError(f"{site_id}/{study_id} has no version {number}") from None


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def publish(store: ObjectStore, cfg: StorageConfig, *, site_id: str, study_id: str, upload_id: str,
            schema_version: str, tables: dict[str, pa.Table | Path], data_id: str = "", uploaded: str = "",
            max_attempts: int = 5) -> tuple[Version, bool]:
    """Publish `tables` (in memory, or Parquet files already written) as the next version; returns (version,
    created). Idempotent per data folder: `data_id`, by default the upload id (a re-processing has its own,
    so its files never replace those an earlier version lists)."""
    data_id = data_id or upload_id
    for existing in list_versions(store, cfg, site_id, study_id):
        if existing.processing == data_id:
            return existing, False
    listed: dict[str, dict[str, Any]] = {}
    for name, table in sorted(tables.items()):
        key = layout.data_key(cfg, site_id, study_id, data_id, name)
        if isinstance(table, Path):
            store.put_file(key, table)
            rows, digest = pq.ParquetFile(table).metadata.num_rows, sha256_file(table)
        else:
            data = _parquet_bytes(table)
            store.put_bytes(key, data)
            rows, digest = table.num_rows, hashlib.sha256(data).hexdigest()
        listed[name] = {"key": key, "rows": rows, "sha256": digest}
    for _attempt in range(max_attempts):
        current = latest_version(store, cfg, site_id, study_id)
        if current is not None and current.processing == data_id:
            return current, False
        number = (current.number if current else 0) + 1
        version = Version(site_id=site_id, study_id=study_id, number=number, upload_id=upload_id,
                          schema_version=schema_version,
                          created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), tables=listed,
                          data_id="" if data_id == upload_id else data_id, uploaded=uploaded)
        try:
            store.put_bytes(layout.version_key(cfg, site_id, study_id, number), version.to_json(), if_absent=True)
        except PreconditionFailed:
            continue  # another writer committed this number first; look again
        return version, True
    raise PublishError(f"could not commit a version of {site_id}/{study_id} after {max_attempts} attempts")


def read_table(store: ObjectStore, version: Version, table: str) -> pa.Table:
    """One table of a committed version, checked against the sha256 the commit recorded."""
    entry = version.tables.get(table)
    if entry is None:
        raise PublishError(f"{version.version_id} has no table {table!r}")
    data = store.get_bytes(entry["key"])
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise PublishError(f"{entry['key']} does not match the checksum in {version.version_id}")
    return pq.read_table(io.BytesIO(data))
