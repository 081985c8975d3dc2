"""The demo: the main job end to end on embedded local storage (a folder).

Synthesize exports for several sites (one with injected errors), check each
locally as a site coordinator would, upload them to the landing zone, run the
real `site_ingest` Airflow DAG (dag.test(), SQLite), and show the upload
catalog: published versions, and the quarantined upload with its report.
Then start the query service and one node per site as local processes on
127.0.0.1, run the `consortium_report` DAG through the service with its own
token, ask a few questions as an analyst with a token, verify the audit log
against the heads the nodes recorded, and stop them.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import time
from pathlib import Path

import yaml

from federation.client import Client
from federation.config import SiteConfig
from federation.ingest.landing import upload_export
from federation.ingest.pipeline import read_catalog
from federation.localrun import LocalFederation
from federation.orchestration import run_dag
from federation.query import Filter, Query
from federation.query.render import to_text
from federation.settings import load_settings
from federation.storage import open_store
from federation.synth import synthesize
from federation.validation.runner import ValidationRequest, validate_export

DEMO_STUDY = "PONC-WT-01"
V2_STUDY = "PONC-NB-03"
AS_OF = dt.date(2025, 6, 30)


def run_demo(workdir: Path, n_sites: int = 5, patients: int = 300) -> int:
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir = workdir.resolve()
    exports = workdir / "exports"
    print(f"[1/5] synthesizing exports of {n_sites} sites for {DEMO_STUDY} into {exports} "
          "(site-b gets injected errors)")
    written = synthesize(exports, n_sites, DEMO_STUDY, patients, AS_OF, seed=42, error_sites=["site-b"])
    print(f"  and site-a's export of {V2_STUDY}, a study on data dictionary v2 (molecular markers, agent classes, "
          "late effects, quality of life)")
    v2 = synthesize(workdir / "exports-v2", 1, V2_STUDY, 2 * patients, AS_OF, seed=43)[0]

    print("[2/5] each site checks its export locally with the consortium rules (Great Expectations)")
    for w in written:
        site = SiteConfig.from_yaml(exports / "sites" / f"{w.site.site_id}.yaml")
        report = validate_export(ValidationRequest(path=w.folder, site=site, study_id=DEMO_STUDY,
                                                   upload_date=AS_OF))
        paths = report.write(workdir / "local-reports" / site.site_id)
        print(f"  {site.site_id:<7} {report.status.upper():<8} {len(report.errors):>3} errors  {paths['html']}")

    settings_file = workdir / "settings.yaml"
    (workdir / "secrets").mkdir()
    (workdir / "secrets" / "pseudonym.key").write_text(secrets.token_hex(32))
    settings_file.write_text(yaml.safe_dump({
        "storage": {"kind": "local", "root": "storage"}, "sites_dir": "exports/sites",
        "pseudonym_key_file": "secrets/pseudonym.key"}))
    settings = load_settings(settings_file)
    store = open_store(settings.storage)
    print(f"[3/5] every site uploads (site-b with --force, to show quarantine) to {store.describe()}")
    for w in written:
        m = upload_export(store, settings.storage, w.site.site_id, DEMO_STUDY, "1", w.folder,
                          now=dt.datetime.combine(AS_OF, dt.time(12), tzinfo=dt.UTC))
        print(f"  {w.site.site_id:<7} upload {m.upload_id}: {len(m.files)} files + manifest")
    m = upload_export(store, settings.storage, v2.site.site_id, V2_STUDY, "2", v2.folder,
                      now=dt.datetime.combine(AS_OF, dt.time(12), tzinfo=dt.UTC))
    print(f"  {v2.site.site_id:<7} upload {m.upload_id}: {len(m.files)} files + manifest ({V2_STUDY}, dictionary v2)")

    print("[4/5] running the Airflow DAG site_ingest (dag.test(), SQLite metadata DB) ...")
    result = run_dag(workdir / "airflow", "site_ingest", {"FEDERATION_CONFIG": str(settings_file)})
    tasks: dict[str, str] = result["tasks"]  # type: ignore[assignment]
    print(f"  DAG run {result['state']}; tasks: " + ", ".join(f"{k} {v}" for k, v in tasks.items()))
    print()
    print(f"{'site':<8} {'status':<12} {'rows':>8}  version / report")
    for e in sorted(read_catalog(store, settings), key=lambda e: (e.study_id != DEMO_STUDY, e.site_id)):
        rows = sum(e.rows.values())
        where = e.version_id if e.status == "published" else ""
        print(f"{e.site_id:<8} {e.status:<12} {rows:>8,}  {where}" + (f" ({e.study_id})" if e.study_id != DEMO_STUDY
                                                                     else ""))
        if e.status != "published":
            print(f"{'':<8} {e.message}")
            print(f"{'':<8} report: {settings.storage.root / e.report}")
            print(f"{'':<8} quarantined files: {settings.storage.root / e.quarantine}")
    print()
    print(f"harmonized Parquet: {settings.storage.root / settings.storage.harmonized_bucket}; "
          f"upload catalog: `federation uploads --config {settings_file}`")

    print()
    published = sorted({e.site_id for e in read_catalog(store, settings) if e.status == "published"})
    print(f"[5/5] starting the query service and one node per site ({', '.join(published)}) on 127.0.0.1 ...")
    with LocalFederation(workdir / "federation", {site: settings_file for site in published},
                         analysts=("demo-analyst", "consortium-report")) as fed:
        print(f"  service {fed.url} (API docs {fed.url}/docs); state {fed.state}; logs {fed.logs}")
        print("  running the Airflow DAG consortium_report through the service (its own token) ...")
        report_run = run_dag(workdir / "airflow", "consortium_report", {
            "FEDERATION_CONFIG": str(settings_file), "FEDERATION_SERVER": fed.url,
            "FEDERATION_TOKEN": fed.token("consortium-report")})
        print(f"  DAG run {report_run['state']}; report: {settings.report_dir / 'latest' / 'index.html'}")
        print()
        print(f"a few aggregates, as an analyst asks them (federation query --server {fed.url} ...):")
        analyst = Client(fed.url, fed.token("demo-analyst"))
        for q in (Query(study_id=DEMO_STUDY, statistic="crosstab", group_by=["stage", "histology_risk"]),
                  Query(study_id=DEMO_STUDY, statistic="mean", column="age_at_diagnosis_years", group_by=["arm"]),
                  Query(study_id=DEMO_STUDY, statistic="logistic",
                        outcome=Filter(column="efs_event", op="==", value=True),
                        covariates=["age_at_diagnosis_years", "enrollment_year"]),
                  Query(study_id=DEMO_STUDY, group_by=["arm"],
                        filters=[Filter(column="age_group", op="!=", value="<1")])):
            print()
            text = to_text(analyst.query(q).result).splitlines()
            if q.statistic == "mean":  # combined rows only, to keep the demo short
                text = [line for line in text if "site-" not in line or line.startswith("versions")]
            print("\n".join(text))
        print()
        print(f"{V2_STUDY} (dictionary v2, site-a beside the v1 sites): event-free survival by MYCN status, and "
              "the cumulative incidence of relapse or progression with the other first events (death, second "
              "cancers) competing:")
        km = analyst.query(Query(study_id=V2_STUDY, statistic="km", endpoint="efs", group_by=["mycn_status"]))
        print("\n".join(line for line in to_text(km.result).splitlines()
                        if line.startswith(("median", "log-rank", "REFUSED"))))
        if km.status == "released":
            km.plot(workdir / "efs-by-mycn.png")
        cif = analyst.query(Query(study_id=V2_STUDY, statistic="cif", endpoint="efs", cause=["RELAPSE", "PROGRESSION"],
                                  horizon_days=1826.25))
        print("\n".join(line for line in to_text(cif.result, max_rows=10).splitlines()
                        if not line.lstrip().startswith(("site-", "note:", "versions:"))))
        if cif.status == "released":
            print(f"plots: {cif.plot(workdir / 'cif-relapse.png')}, {workdir / 'efs-by-mycn.png'}")
        check = Client(fed.url, fed.token("auditor")).audit_verify()
        print()
        print(f"audit log: {check['entries']} signed entries; checked against the chain heads recorded by "
              f"{len(check['nodes_checked'])} nodes: {'intact' if not check['problems'] else check['problems']}")
        node_logs = fed.workdir / "node-logs"
        print(f"(offline: federation audit verify --state {fed.state} --service-key {fed.state}/service.pub "
              f"--node-log {node_logs}/<site>.jsonl ...)")
    print("service and nodes stopped")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0 if result["state"] == report_run["state"] == "success" and not check["problems"] else 1
