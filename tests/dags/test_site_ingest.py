"""The real site_ingest DAG: it parses, and dag.test() runs it end to end on both storage backends."""

from __future__ import annotations

import http.server
import json
import os
import re
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from federation.client import Client
from federation.ingest.pipeline import read_catalog
from federation.ingest.publish import latest_version
from federation.localrun import LocalFederation
from federation.orchestration import DAGS_DIR, airflow_env, run_dag
from federation.settings import Settings, load_settings
from federation.storage import StorageConfig, open_store
from tests.ingest.helpers import sites_with_a_missing_code_map, upload


def test_dagbag_has_no_import_errors_and_the_dag_is_well_formed() -> None:
    os.environ.update(airflow_env(Path(tempfile.mkdtemp(prefix="airflow-home-"))))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    assert bag.import_errors == {}
    dag = bag.dags["site_ingest"]
    assert dag.catchup is False and "ingest" in dag.tags and dag.doc_md
    assert {t.task_id for t in dag.tasks} == {"discover", "process", "announce", "summarize"}
    process = dag.get_task("process")
    assert process.outlets == [] and process.map_index_template  # named by site and upload in the UI
    # one Asset event per run, from announce: consortium_report runs once per ingest
    assert [a.uri for a in dag.get_task("announce").outlets] == ["federation://harmonized/"]
    assert process.retries == 3 and process.retry_exponential_backoff
    assert dag.on_failure_callback  # a failed run is notified
    again = bag.dags["site_reprocess"]
    assert again.schedule is None and set(again.params) == {"site", "upload"} and again.on_failure_callback
    assert [a.uri for a in again.get_task("reprocess_upload").outlets] == ["federation://harmonized/"]
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
    log = tmp_path / "site_ingest.log"
    result = run_dag(tmp_path / "airflow", "site_ingest", {"FEDERATION_CONFIG": str(config)}, log_file=log)
    assert result["state"] == "success"  # a quarantined upload is a correct outcome, not a failure
    tasks = result["tasks"]
    assert isinstance(tasks, dict)
    assert sorted(k for k in tasks if k.startswith("process")) == ["process[0]", "process[1]", "process[2]"]
    assert set(tasks.values()) == {"success"}
    labels = result["labels"]
    assert isinstance(labels, dict)
    assert sorted(labels[f"process[{i}]"].split(" / ")[0] for i in range(3)) == ["site-a", "site-b", "site-c"]
    text = log.read_text()
    # the task logs show each step with rows and seconds; no library noise
    assert re.search(r"site-a/\S+: validated [\d,]+ rows in 5 table\(s\) of PONC-WT-01: valid, 0 error", text)
    assert re.search(r"site-b/\S+: quarantined \(invalid: [\d,]+ errors; see the report\)", text)
    assert re.search(r"site-c/\S+: published version \S+ of PONC-WT-01 \(\d", text)
    assert "ephemeral docs site" not in text
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
    assert again_tasks["announce[-1]"] == "skipped"  # nothing published: no Asset event, no report run
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
    # each study's data status, from the pipeline's upload catalog
    assert "Data status: published data of site-a, site-b, site-c, site-d, site-e, site-f." in html
    assert "Data status: no site has uploaded data for this study." in html


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver on 127.0.0.1: keeps every JSON body posted to it."""

    received: list[dict[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.integration
def test_a_run_with_an_upload_that_could_not_be_processed_fails_and_notifies(
        clean_exports: Path, broken_exports: Path, tmp_path: Path) -> None:
    """3 a.m.: the deployment lost its pseudonymisation key. The run is red (not green with failed tasks),
    the failing upload is named, and one message reaches the webhook in the settings."""
    local_settings = Settings(storage=StorageConfig(kind="local", root=tmp_path / "storage"),
                              sites_dir=clean_exports / "sites")
    upload(local_settings, "site-a", clean_exports / "site-a" / "PONC-WT-01")
    upload(local_settings, "site-b", broken_exports / "site-b" / "PONC-NB-02", study="PONC-NB-02")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    try:
        config = _settings_file(tmp_path, local_settings)
        data = yaml.safe_load(config.read_text())
        data["notify_webhook"] = f"http://127.0.0.1:{server.server_address[1]}/hooks/ingest"
        config.write_text(yaml.safe_dump(data))
        env = {"FEDERATION_CONFIG": str(config), "FEDERATION_PSEUDONYM_KEY": ""}
        result = run_dag(tmp_path / "airflow", "site_ingest", env)
        again = run_dag(tmp_path / "airflow", "site_ingest", env)  # 3:10 a.m.: the next run retries, fails again
    finally:
        server.shutdown()
    assert again["state"] == "failed"  # still red, but the upload was reported already: no second message
    assert result["state"] == "failed"
    tasks = result["tasks"]
    assert isinstance(tasks, dict)
    # site-a failed at once (no retries of an error a retry cannot fix); site-b's quarantine is not a failure
    assert sorted(tasks[k] for k in tasks if k.startswith("process")) == ["failed", "success"]
    assert tasks["summarize[-1]"] == "failed" and tasks["announce[-1]"] == "skipped"
    status = {e.site_id: (e.status, e.message) for e in read_catalog(open_store(local_settings.storage, "pipeline"),
                                                                    local_settings)}
    assert status["site-b"][0] == "quarantined" and status["site-a"][0] == "failed"
    assert len(_Receiver.received) == 1
    message = _Receiver.received[0]
    assert message["dag_id"] == "site_ingest"
    failed = message["failed_uploads"]
    assert isinstance(failed, list) and [f["site_id"] for f in failed] == ["site-a"]
    assert "no pseudonymisation key" in str(message["text"]) and "site-a/" in str(message["text"])


@pytest.mark.integration
def test_site_reprocess_dag_publishes_after_a_fix_and_announces_it(clean_exports: Path, tmp_path: Path) -> None:

    from federation.ingest.pipeline import ingest_all

    sites, fixed = sites_with_a_missing_code_map(clean_exports, tmp_path / "sites")
    settings = Settings(storage=StorageConfig(kind="local", root=tmp_path / "storage"), sites_dir=sites)
    m = upload(settings, "site-d", clean_exports / "site-d" / "PONC-WT-01")
    assert [e.status for e in ingest_all(settings, progress=lambda _m: None)] == ["quarantined"]
    (sites / "site-d.yaml").write_text(fixed)
    config = _settings_file(tmp_path, settings)
    env = {"FEDERATION_CONFIG": str(config)}
    result = run_dag(tmp_path / "airflow", "site_reprocess", env, conf={"site": "site-d", "upload": m.upload_id})
    assert result["state"] == "success" and result["tasks"] == {"reprocess_upload[-1]": "success"}
    (entry,) = read_catalog(open_store(settings.storage, "pipeline"), settings)
    assert (entry.status, entry.version_id) == ("published", "site-d/PONC-WT-01@v1")
    refused = run_dag(tmp_path / "airflow", "site_reprocess", env, conf={"site": "site-d", "upload": "u-unknown"})
    assert refused["state"] == "failed"  # not in the catalog: said in the task log, the run is red
