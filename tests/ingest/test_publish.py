"""Publishing is atomic and versioned: a writer killed mid-publish leaves readers on the previous version."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from federation.ingest.publish import latest_version, list_versions, publish, read_table
from federation.settings import Settings
from federation.storage import StorageConfig, open_store

KILLER = r"""
import json, os, signal, sys
import pyarrow as pa
from federation.storage import StorageConfig, open_store
from federation.ingest.publish import publish
cfg = StorageConfig.model_validate_json(sys.argv[1])
store = open_store(cfg, "pipeline")
original = type(store).put_bytes
written = []
def put_bytes(self, key, data, *, if_absent=False):
    original(self, key, data, if_absent=if_absent)
    if "/data/" in key:
        written.append(key)
        if len(written) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)   # the writer dies between two files
type(store).put_bytes = put_bytes
tables = {n: pa.table({"upload_id": ["u2"] * (i + 3), "x": list(range(i + 3))}) for i, n in enumerate(
    ["adverse_events", "diagnoses", "outcomes", "patients", "treatments"])}
publish(store, cfg, site_id="site-a", study_id="S", upload_id="u2", schema_version="1", tables=tables)
print("survived")
"""


def _tables(upload_id: str, n: int) -> dict[str, pa.Table]:
    names = ["adverse_events", "diagnoses", "outcomes", "patients", "treatments"]
    return {name: pa.table({"upload_id": [upload_id] * n, "x": list(range(n))}) for name in names}


def _consistent(store, cfg: StorageConfig) -> tuple[int, set[str]]:  # type: ignore[no-untyped-def]
    """What a reader sees: the latest version's number, and the upload ids of every row of every table."""
    v = latest_version(store, cfg, "site-a", "S")
    assert v is not None
    seen = set()
    for name in v.tables:
        seen |= set(read_table(store, v, name).column("upload_id").to_pylist())
    return v.number, seen


@pytest.mark.parametrize("after_files", [1, 3])
def test_kill_mid_publish_leaves_the_previous_version(backend: Settings, after_files: int) -> None:
    cfg = backend.storage
    store = open_store(cfg, "pipeline")
    publish(store, cfg, site_id="site-a", study_id="S", upload_id="u1", schema_version="1", tables=_tables("u1", 7))
    proc = subprocess.run([sys.executable, "-c", KILLER, cfg.model_dump_json(), str(after_files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed, not finished
    assert "survived" not in proc.stdout
    # the writer got as far as writing some of u2's files ...
    orphans = [o.key for o in store.list("harmonized/site-a/S/data/u2/")]
    assert len(orphans) == after_files
    # ... but readers still see exactly version 1, every row of it, and nothing of u2
    assert _consistent(store, cfg) == (1, {"u1"})
    # the pipeline retries: the same upload is committed as version 2, complete
    version, created = publish(store, cfg, site_id="site-a", study_id="S", upload_id="u2", schema_version="1",
                               tables=_tables("u2", 4))
    assert created and version.number == 2
    assert _consistent(store, cfg) == (2, {"u2"})
    assert [v.upload_id for v in list_versions(store, cfg, "site-a", "S")] == ["u1", "u2"]


def test_publish_is_idempotent_and_versions_stay_readable(backend: Settings) -> None:
    cfg = backend.storage
    store = open_store(cfg, "pipeline")
    v1, c1 = publish(store, cfg, site_id="site-a", study_id="S", upload_id="u1", schema_version="1",
                     tables=_tables("u1", 5))
    v1b, c1b = publish(store, cfg, site_id="site-a", study_id="S", upload_id="u1", schema_version="1",
                       tables=_tables("u1", 5))
    assert (c1, c1b) == (True, False) and v1 == v1b
    v2, _ = publish(store, cfg, site_id="site-a", study_id="S", upload_id="u2", schema_version="1",
                    tables=_tables("u2", 9))
    assert v2.version_id == "site-a/S@v2"
    assert read_table(store, v1, "patients").num_rows == 5
    assert read_table(store, v2, "patients").num_rows == 9
    # a late re-run of the older upload does not supersede the newer one
    again, created = publish(store, cfg, site_id="site-a", study_id="S", upload_id="u1", schema_version="1",
                             tables=_tables("u1", 5))
    assert not created and again.number == 1
    assert latest_version(store, cfg, "site-a", "S") == v2


def test_a_tampered_file_is_detected_by_readers(backend: Settings) -> None:
    from federation.ingest.publish import PublishError

    cfg = backend.storage
    store = open_store(cfg, "pipeline")
    v, _ = publish(store, cfg, site_id="site-a", study_id="S", upload_id="u1", schema_version="1",
                   tables=_tables("u1", 5))
    key = v.tables["patients"]["key"]
    store.put_bytes(key, store.get_bytes(v.tables["diagnoses"]["key"])[:-1] + b"\0")
    with pytest.raises(PublishError, match="checksum"):
        read_table(store, v, "patients")
    assert json.loads(v.to_json())["version_id"] == "site-a/S@v1"
