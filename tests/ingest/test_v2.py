"""A dictionary v2 study (PONC-NB-03) is validated, harmonized and published beside v1 studies: its new
tables (biomarkers, late effects, quality of life) harmonized from their declaration, the agent's class
derived from the code list."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import pytest

from federation.ingest.landing import upload_export
from federation.ingest.pipeline import ingest_all
from federation.ingest.publish import latest_version, read_table
from federation.schema import load_dictionary
from federation.settings import Settings
from federation.storage import StorageConfig, open_store
from federation.synth import synthesize
from tests.ingest.helpers import UPLOADED, upload

STUDY = "PONC-NB-03"


@pytest.fixture(scope="module")
def v2_exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v2")
    synthesize(out, 2, STUDY, 80, dt.date(2025, 6, 30), seed=4)
    return out


def test_a_v2_export_publishes_its_new_tables_beside_a_v1_study(v2_exports: Path, clean_exports: Path,
                                                              tmp_path: Path) -> None:
    settings = Settings(storage=StorageConfig(kind="local", root=tmp_path / "storage"),
                        sites_dir=v2_exports / "sites")
    store = open_store(settings.storage)
    upload_export(store, settings.storage, "site-a", STUDY, "2", v2_exports / "site-a" / STUDY, now=UPLOADED)
    upload(settings, "site-a", clean_exports / "site-a" / "PONC-WT-01")  # a v1 study of the same site
    entries = ingest_all(settings, progress=lambda _m: None)
    assert sorted((e.study_id, e.status) for e in entries) == [("PONC-NB-03", "published"),
                                                               ("PONC-WT-01", "published")]
    version = latest_version(store, settings.storage, "site-a", STUDY)
    assert version is not None
    assert {"biomarkers", "late_effects", "quality_of_life"} <= set(version.tables)
    dictionary = load_dictionary("2")
    source = v2_exports / "site-a" / STUDY
    for table in ("biomarkers", "late_effects", "quality_of_life"):
        harmonized = read_table(store, version, table)
        with (source / f"{table}.csv").open(newline="") as fh:
            assert harmonized.num_rows == sum(1 for _ in csv.DictReader(fh)) > 0
        names = harmonized.schema.names
        assert "patient_id" not in names and not [n for n in names if n.endswith("_date")]
        assert harmonized.column("schema_version").to_pylist()[0] == "2"
    markers = read_table(store, version, "biomarkers").to_pylist()
    assert {(r["gene"], r["alteration"]) for r in markers} <= set(
        next(r for r in dictionary.rules if r.id == "gene_alteration_allowed").pairs)
    assert all(isinstance(r["sample_day"], int) and r["sample_day"] <= 0 for r in markers)  # at diagnosis
    treatments = read_table(store, version, "treatments").to_pylist()
    classes = {r["agent"]: r["agent_class"] for r in treatments}
    assert classes["dinutuximab"] == "IMMUNOTHERAPY" and classes["hsct"] == "HSCT" and classes["cisplatin"] == (
        "CHEMOTHERAPY")
    late = read_table(store, version, "late_effects").to_pylist()
    assert all((r["ototoxicity_grade"] is not None) == (r["category"] == "HEARING") for r in late)
    v1 = latest_version(store, settings.storage, "site-a", "PONC-WT-01")
    assert v1 is not None and "biomarkers" not in v1.tables
    assert "agent_class" not in read_table(store, v1, "treatments").schema.names  # v1 keeps v1's layer


def test_a_v2_export_declared_as_v1_is_rejected_with_the_reason(v2_exports: Path, tmp_path: Path) -> None:
    settings = Settings(storage=StorageConfig(kind="local", root=tmp_path / "storage"),
                        sites_dir=v2_exports / "sites")
    upload(settings, "site-b", v2_exports / "site-b" / STUDY, study=STUDY)
    (entry,) = ingest_all(settings, progress=lambda _m: None)
    assert entry.status == "rejected" and "configuration says its PONC-NB-03 exports follow v2" in entry.message
