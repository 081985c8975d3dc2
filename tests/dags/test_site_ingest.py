"""The real site_ingest DAG: it parses, and dag.test() runs it end to end on both storage backends."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from federation.client import Client
from federation.ingest.pipeline import read_catalog
from federation.ingest.publish import latest_version
from federation.localrun import LocalFederation
from federation.orchestration import DAGS_DIR, airflow_env, run_dag
from federation.settings import Settings, load_settings
from federation.storage import open_store
from tests.ingest.helpers import upload


def test_dagbag_has_no_import_errors_and_the_dag_is_well_formed() -> None:
    os.environ.update(airflow_env(Path(tempfile.mkdtemp(prefix="airflow-home-"))))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    dag = bag.dags["site_ingest"]
    assert dag.catchup is False and "ingest" in dag.tags and dag.doc_md
    assert {t.task_id for t in dag.tasks} == {"discover", "process", "summarize"}
    process = dag.get_task("process")
    assert [a.uri for a in process.outlets] == ["federation://harmonized/"]
    assert process.retries == 3 and process.retry_exponential_backoff
    report = bag.dags["consortium_report"]
    assert "federation://harmonized/" in repr(report.timetable.asset_condition)  # scheduled on the published data
    assert report.catchup is False and "report" in report.tags and report.doc_md


def _settings_file(tmp_path: Path, settings: Settings) -> Path:
    data = {"storage": settings.storage.model_dump(mode="json"), "sites_dir": str(settings.sites_dir)}
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.integration
def test_dag_run_publishes_and_quarantines(backend: Settings, clean_exports: Path, broken_exports: Path,
                                           tmp_path: Path) -> None:
    upload(backend, "site-a", clean_exports / "site-a" / "PONC-WT-01")
    upload(backend, "site-c", clean_exports / "site-c" / "PONC-WT-01")
    upload(backend, "site-b", broken_exports / "site-b" / "PONC-NB-02", study="PONC-NB-02")
    config = _settings_file(tmp_path, backend)
    result = run_dag(tmp_path / "airflow", "site_ingest", {"FEDERATION_CONFIG": str(config)})
    assert result["state"] == "success"
    tasks = result["tasks"]
    assert isinstance(tasks, dict)
    assert sorted(k for k in tasks if k.startswith("process")) == ["process[0]", "process[1]", "process[2]"]
    assert set(tasks.values()) == {"success"}
    settings = load_settings(config)
    store = open_store(settings.storage, "pipeline")
    status = {e.site_id: e.status for e in read_catalog(store, settings)}
    assert status == {"site-a": "published", "site-b": "quarantined", "site-c": "published"}
    for site in ("site-a", "site-c"):
        assert latest_version(store, settings.storage, site, "PONC-WT-01") is not None
    # a second run finds nothing new and changes nothing
    again = run_dag(tmp_path / "airflow", "site_ingest", {"FEDERATION_CONFIG": str(config)})
    assert again["state"] == "success"
    again_tasks = again["tasks"]
    assert isinstance(again_tasks, dict)
    assert {k: v for k, v in again_tasks.items() if k.startswith("process")} == {"process[-1]": "skipped"}
    assert [v.number for v in [latest_version(store, settings.storage, "site-a", "PONC-WT-01")] if v] == [1]


@pytest.mark.integration
def test_consortium_report_dag_builds_the_report(federated_settings_file: Path, federated_nodes: LocalFederation,
                                                 tmp_path: Path) -> None:
    # the DAG asks the query service with the report's own token; it holds no storage credential for the query
    fed = federated_nodes
    result = run_dag(tmp_path / "airflow", "consortium_report", {
        "FEDERATION_CONFIG": str(federated_settings_file), "FEDERATION_SERVER": fed.url,
        "FEDERATION_TOKEN": fed.token("consortium-report")})
    assert result["state"] == "success"
    settings = load_settings(federated_settings_file)
    index = settings.report_dir / "latest" / "index.html"
    html = index.read_text()
    assert "Enrollment by site and arm" in html and "Overall survival by risk group" in html
    assert html.count("data:image/png;base64,") >= 7
    assert len(list((settings.report_dir / "latest").glob("*.csv"))) >= 7
    entries = [e for e in Client(fed.url, fed.token("auditor")).audit() if e["analyst"] == "consortium-report"]
    assert len(entries) >= 7 and all(e["outcome"] == "released" for e in entries[:7])
    # the report keeps its per-site values: none of its queries is withheld because of another of its queries
    # (the note that says so would be the first under its table)
    assert "withheld" not in html
    # the registry's study without published data is named in the report, not left out
    assert "PONC-NB-02" in html and "No site has published data for this study yet." in html
