"""Published multi-site data for the query tests, and pooled reference computations."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import duckdb
import pytest

from federation.ingest.landing import upload_export
from federation.ingest.pipeline import ingest_all
from federation.schema import load_registry
from federation.settings import Settings
from federation.storage import StorageConfig, open_store
from federation.synth import WrittenExport, synthesize

STUDY = "PONC-WT-01"
NB03 = "PONC-NB-03"  # a study on dictionary v2
V2_TABLES = ("patients", "diagnoses", "outcomes", "treatments", "biomarkers", "late_effects", "quality_of_life")


@pytest.fixture(scope="session")
def federated(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Six sites of very different sizes, published on local storage; site-a has exactly one NR patient."""
    os.environ.setdefault("FEDERATION_PSEUDONYM_KEY", "test-consortium-key-0123456789")
    root = tmp_path_factory.mktemp("federated")
    written = synthesize(root / "exports", 6, STUDY, 150, dt.date(2025, 6, 30), seed=21)
    patients = root / "exports" / "site-a" / STUDY / "patients.csv"
    lines = patients.read_text().splitlines()
    header = lines[0].split(",")
    arm = header.index("arm")
    rows = [line.split(",") for line in lines[1:]]
    for i, r in enumerate(rows):
        r[arm] = "NR" if i == 0 else ("EE4A" if r[arm] == "NR" else r[arm])
    # exactly two infants (under 1 year at diagnosis) at site-a: a tiny subset to try to isolate
    diagnosis = {r.split(",")[0]: r.split(",")[1] for r in
                 (root / "exports" / "site-a" / STUDY / "diagnoses.csv").read_text().splitlines()[1:]}
    birth, pid = header.index("birth_date"), header.index("patient_id")
    for i, r in enumerate(rows):
        diag = dt.date.fromisoformat(diagnosis[r[pid]])
        age_days = 100 if i in (1, 2) else max((diag - dt.date.fromisoformat(r[birth])).days, 400)
        r[birth] = (diag - dt.timedelta(days=age_days)).isoformat()
    patients.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    return publish(root, written)


@pytest.fixture(scope="session")
def nb03(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Three sites of the v2 neuroblastoma study, published on local storage."""
    os.environ.setdefault("FEDERATION_PSEUDONYM_KEY", "test-consortium-key-0123456789")
    root = tmp_path_factory.mktemp("nb03")
    return publish(root, synthesize(root / "exports", 3, NB03, 150, dt.date(2025, 6, 30), seed=3))


def publish(root: Path, written: list[WrittenExport]) -> Settings:
    """Upload synthetic exports (written under `root`/exports) and publish them on local storage under `root`."""
    settings = Settings(storage=StorageConfig(kind="local", root=root / "storage"),
                        sites_dir=root / "exports" / "sites", audit_log=root / "audit.jsonl")
    store = open_store(settings.storage)
    for w in written:
        version = w.site.dictionary_for(load_registry().study(w.study_id))
        upload_export(store, settings.storage, w.site.site_id, w.study_id, version, w.folder,
                      now=dt.datetime(2025, 6, 30, 12, tzinfo=dt.UTC))
    entries = ingest_all(settings, progress=lambda _m: None)
    assert {e.status for e in entries} == {"published"}, [e.message for e in entries]
    return settings


@pytest.fixture()
def fresh_audit(federated: Settings, tmp_path: Path) -> Settings:
    """The federated data with an empty audit log of this test's own."""
    return federated.model_copy(update={"audit_log": tmp_path / "audit.jsonl"})


def fresh(settings: Settings, folder: Path) -> Settings:
    """The same data behind a service with an empty history of its own, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(update={"audit_log": folder / "audit.jsonl"})


def elsewhere(settings: Settings, name: str) -> Settings:
    """The same data behind another service (its own audit log and differencing history)."""
    return settings.model_copy(update={"audit_log": settings.audit_log.with_name(f"{name}.jsonl")})


def pooled(settings: Settings, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    """The same question asked of all sites' Parquet pooled in one DuckDB (what federation must equal)."""
    root = settings.storage.root / settings.storage.harmonized_bucket
    con = duckdb.connect()
    for table in ("patients", "diagnoses", "outcomes", "adverse_events", "treatments"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{root}/*/{STUDY}/data/*/{table}.parquet')")
    con.execute("""CREATE VIEW unit_patients AS SELECT p.*, d.stage, d.histology_risk, d.risk_group,
                   o.vital_status, o.first_event FROM patients p JOIN diagnoses d USING (pid)
                   JOIN outcomes o USING (pid)""")
    return con.execute(sql).fetchall()


def pooled_v2(settings: Settings, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    """`sql` over the v2 study's tables of all sites pooled in one DuckDB."""
    root = settings.storage.root / settings.storage.harmonized_bucket
    con = duckdb.connect()
    for table in V2_TABLES:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{root}/*/{NB03}/data/*/{table}.parquet')")
    return con.execute(sql).fetchall()


@pytest.fixture()
def federated_settings_file(federated: Settings, tmp_path: Path) -> Path:
    """A settings YAML pointing at the federated data, with this test's own audit log and report folder."""
    import yaml

    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"storage": federated.storage.model_dump(mode="json"),
                                    "sites_dir": str(federated.sites_dir), "audit_log": str(tmp_path / "audit.jsonl"),
                                    "report_dir": str(tmp_path / "report")}))
    return path


@pytest.fixture(scope="session")
def federated_nodes(federated: Settings, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The query service and one node per federated site, as separate processes on 127.0.0.1."""
    import yaml

    from federation.localrun import LocalFederation

    root = tmp_path_factory.mktemp("nodes")
    node_settings = {}
    for site in ("site-a", "site-b", "site-c", "site-d", "site-e", "site-f"):
        path = root / f"{site}.yaml"
        path.write_text(yaml.safe_dump({"storage": federated.storage.model_dump(mode="json"),
                                        "sites_dir": str(federated.sites_dir)}))
        node_settings[site] = path
    fed = LocalFederation(root / "run", node_settings, analysts=("analyst", "mallory", "eve", "consortium-report"),
                          reply_timeout=20.0, poll_wait=5.0)
    fed.start()
    yield fed
    fed.stop()


def close_cut_points(settings: Settings, k: int = 5, nth: int = 0, site: str | None = None) -> tuple[float, float]:
    """Two neighbouring declared cut points of age, a and b, such that `age < a` and `age < b` are answered
    by the same sites (each keeps and leaves out at least k patients there) and differ, in those sites
    together, by 1..k-1 patients: both are released alone, and subtracting them isolates those few. With
    `site`, at that site only (ask with `sites=[site]`)."""
    rows = pooled(settings, "SELECT site_id, age_at_diagnosis_years FROM patients")
    rows = [r for r in rows if site is None or r[0] == site]
    size = {s: sum(1 for t, _ in rows if t == s) for s, _ in rows}

    def taking_part(c: float) -> set[str]:
        return {s for s in size if k <= sum(1 for t, v in rows if t == s and v < c) <= size[s] - k}

    for i in range(1, 44):
        a, b = i / 2, (i + 1) / 2
        sites = taking_part(a)
        between = sum(1 for s, v in rows if s in sites and a <= v < b)
        if sites and sites == taking_part(b) and 0 < between < k:
            if nth == 0:
                return a, b
            nth -= 1
    raise AssertionError("the test data has no two neighbouring cut points a few patients apart")
