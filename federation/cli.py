"""The `federation` command: what site coordinators, data engineers and
analysts type. Each subcommand is a thin layer over the library."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.exceptions import FederationError

if TYPE_CHECKING:
    from federation.settings import Settings

EPILOG = """exit codes: 0 valid, 1 invalid (rules broken), 2 unusable input or usage error
(query: 0 released, 3 refused).
Docs: docs/site-coordinator.md, docs/data-dictionary-v1.md"""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; write YYYY-MM-DD") from None


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="federation",
        description="Share statistics of multicenter pediatric oncology trials without pooling patient records.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    v = sub.add_parser(
        "validate", help="check a site export against the consortium data dictionary",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description=(
            "Check a folder of CSV files (patients.csv, diagnoses.csv, outcomes.csv, and optionally\n"
            "treatments.csv, adverse_events.csv) with the same Great Expectations rules the pipeline uses.\n"
            "The files are read through your site's declared conventions (column names, codes, date format,\n"
            "delimiter, decimal mark, encoding); problems are reported with your file, line, column and value.\n"
            "Writes report.html (open it in a browser), report.json and failures.csv."),
    )
    v.add_argument("path", type=Path, help="folder holding the export's CSV files")
    v.add_argument("--site", required=True, help="your site id (reads infra/sites/SITE.yaml) or a site YAML file")
    v.add_argument("--study", required=True, help="study id from the registry, e.g. PONC-WT-01")
    v.add_argument("--sites-dir", type=Path, default=None, help="folder of site YAML files (default infra/sites)")
    v.add_argument("--report-dir", type=Path, default=None,
                   help="where to write the report (default reports/SITE_STUDY_TIMESTAMP)")
    v.add_argument("--upload-date", type=_date, default=None,
                   help="date the export is delivered, YYYY-MM-DD (default today); no date may be after it")
    v.add_argument("--max-file-mb", type=int, default=4096,
                   help="refuse a single CSV larger than this, unread (default 4096; a safety limit)")
    v.add_argument("--memory-mb", type=int, default=1024,
                   help="memory the validation may use (default 1024); a larger export is checked in parts, "
                   "split by patient, with the same findings")
    v.add_argument("--quiet", action="store_true", help="no progress output, only the summary")

    s = sub.add_parser(
        "synth", help="write realistic synthetic site exports (optionally with injected errors)",
        description=(
            "Write synthetic exports of N sites for one study: OUT/<site>/<study>/*.csv, each site in its own\n"
            "conventions (site configs in OUT/sites/), and OUT/answers.json listing every injected error with\n"
            "the file, line, column and rule where validation must report it."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--sites", type=int, default=4, help="number of sites (default 4)")
    s.add_argument("--study", default="PONC-WT-01", help="study id (default PONC-WT-01)")
    s.add_argument("--patients", type=int, default=200, help="patients of a mid-sized site (default 200)")
    s.add_argument("--ae-per-patient", type=float, default=2.0, help="mean adverse events per patient")
    s.add_argument("--as-of", type=_date, default=None, help="data cut-off date (default today)")
    s.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    s.add_argument("--inject-errors", action="append", default=[], metavar="SITE",
                   help="inject every kind of error into SITE (repeatable; 'all' for every site)")
    s.add_argument("--error-kinds", default=None, help="comma-separated subset of error kinds (see --list-errors)")
    s.add_argument("--list-errors", action="store_true", help="list the error kinds and exit")

    sc = sub.add_parser("schema", help="generate or check files derived from the dictionaries and the registry")
    sc.add_argument("action", choices=["generate", "check"],
                    help="generate: rewrite the committed suites and the dictionary pages; check: exit 1 on drift")
    sc.add_argument("--registry", type=Path, default=None,
                    help="a deployment's registry folder: its suites go to REGISTRY/expectations/ and its "
                         "dictionary pages to REGISTRY/ (default $FEDERATION_REGISTRY, else the package's "
                         "examples: expectations/ and docs/)")

    rg = sub.add_parser(
        "registry", help="create a deployment's registry folder (studies, sites, query policy, report)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "init DIR: copy the package's example registry into DIR (studies.yaml, sites/, query-policy.yaml,\n"
            "reports/consortium.yaml) and generate its suites (DIR/expectations/). Then name DIR in the\n"
            "settings (registry_dir: DIR) and edit it there: a new study or site needs no change to this\n"
            "package and no image rebuild. `federation schema check --registry DIR` says when its committed\n"
            "suites no longer match it (validation always uses the suites the registry gives)."))
    rg.add_argument("action", choices=["init"])
    rg.add_argument("folder", type=Path, help="the registry folder to create")

    u = sub.add_parser(
        "upload", help="validate an export locally, then upload it to the landing zone",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Validate the export first (same rules as the pipeline) and refuse to upload an invalid one unless\n"
            "--force. Uploads every CSV file with its sha256, then the manifest last, to\n"
            "<landing>/<site>/<upload_id>/. The upload id is derived from the content, so running the same\n"
            "command again after a network failure resumes the same upload."),
    )
    u.add_argument("path", type=Path, help="folder holding the export's CSV files")
    u.add_argument("--site", required=True, help="your site id")
    u.add_argument("--study", required=True, help="study id from the registry")
    u.add_argument("--config", type=Path, default=None, help="settings YAML (default $FEDERATION_CONFIG)")
    u.add_argument("--force", action="store_true", help="upload even if local validation fails")
    u.add_argument("--upload-id", default=None, help="explicit upload id (default: derived from the content)")

    ul = sub.add_parser(
        "uploads", help="list uploads: status, rows, version, report of each upload",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Data engineers: the whole upload catalog, read with the pipeline's storage identity (--config).\n"
            "Site coordinators: your own site's uploads through the query service (--server, your token);\n"
            "and one upload's validation report from your site's own report area, with your site's storage\n"
            "identity (--report UPLOAD_ID --site SITE --config settings.yaml): reports quote your rows, so they\n"
            "never pass through the query service."))
    ul.add_argument("--site", default=None, help="only this site (catalog mode)")
    ul.add_argument("--config", type=Path, default=None, help="settings YAML (default $FEDERATION_CONFIG)")
    ul.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ul.add_argument("--server", default=None, help="ask the query service as a site coordinator")
    ul.add_argument("--credentials", type=Path, default=None, help="token file (mode 0600)")
    ul.add_argument("--report", default=None, metavar="UPLOAD_ID",
                    help="fetch this upload's validation report with --site's own storage identity")
    ul.add_argument("--output", type=Path, default=Path("report.html"), help="where --report writes (report.html)")

    ing = sub.add_parser("ingest", help="process pending uploads now, without Airflow (what site_ingest does)")
    ing.add_argument("--config", type=Path, default=None, help="settings YAML (default $FEDERATION_CONFIG)")

    rp = sub.add_parser(
        "reprocess", help="validate and harmonize an upload again as a new version (after a configuration fix)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Process an upload once more with today's site configuration and dictionary: after fixing a site's\n"
            "code map, date format or encoding, a quarantined upload can pass, and a published one is\n"
            "re-harmonized. If it passes it is published as a NEW version (its own data folder); every\n"
            "earlier version stays readable, so results citing it stay reproducible, and the earlier report\n"
            "is kept beside the new one (earlier-N/). Refused when a later upload of the same site and study\n"
            "was published (re-process that one instead). Uses the pipeline's storage identity."))
    rp.add_argument("--site", required=True, help="the site of the upload")
    rp.add_argument("--upload", required=True, help="the upload id (federation uploads lists them)")
    rp.add_argument("--config", type=Path, default=None, help="settings YAML (default $FEDERATION_CONFIG)")

    st = sub.add_parser(
        "storage", help="storage set-up: identities for SeaweedFS, buckets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "identities: write the SeaweedFS -s3.config JSON (one identity per site, its query identity, the\n"
            "  pipeline and storage-admin), creating keys in storage.secrets_dir where missing.\n"
            "init: create the four buckets (landing, reports, harmonized, pipeline) with the storage-admin\n"
            "  identity and check that the pipeline can write, read back and delete an object in each;\n"
            "  waits for storage that is still starting (--wait). Safe to run again. Exit 0 when every\n"
            "  bucket is writable, 1 otherwise, with the reason and what to change."))
    st.add_argument("action", choices=["identities", "init"])
    st.add_argument("--config", type=Path, default=None, help="settings YAML (default $FEDERATION_CONFIG)")
    st.add_argument("--out", type=Path, default=None, help="identities: where to write the identities JSON")
    st.add_argument("--wait", type=float, default=120.0, help="init: seconds to wait for storage (default 120)")
    st.add_argument("--new-secrets", action="store_true",
                    help="rotate: create fresh random keys for every identity (default: only for identities "
                    "that have no key in storage.secrets_dir yet)")

    qp = sub.add_parser(
        "query", help="ask an aggregate question across sites (disclosure-controlled, audited)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Ask an aggregate question of every site's published data. Each site computes its summary with\n"
            "DuckDB on its own data; only summaries are combined. Small counts are suppressed (with the cells\n"
            "that would reveal them), filters that isolate a few patients are refused, and every query is\n"
            "recorded in the audit log.\n\n"
            "examples:\n"
            "  federation query --study PONC-WT-01 --by arm\n"
            "  federation query --study PONC-WT-01 --stat crosstab --by stage --by histology_risk\n"
            "  federation query --study PONC-WT-01 --stat mean --column age_at_diagnosis_years --by sex\n"
            "  federation query --study PONC-WT-01 --stat km --endpoint efs --by arm --plot efs.png\n"
            "  federation query --study PONC-WT-01 --stat cif --endpoint efs --cause RELAPSE --cause PROGRESSION "
            "--by arm\n"
            "  federation query --study PONC-WT-01 --by arm --exists 'adverse_events: grade >= 3'\n"
            "  federation query --study PONC-WT-01 --stat logistic --outcome 'efs_event == true' \\\n"
            "      --covariate age_at_diagnosis_years --covariate enrollment_year"),
    )
    qp.add_argument("--study", required=True, help="study id")
    from federation.query.model import UNIT_TABLES

    qp.add_argument("--table", default="patients", choices=list(UNIT_TABLES),
                    help="unit of analysis: patients (with diagnosis and outcome), or one row per event")
    qp.add_argument("--stat", default="count",
                    choices=["count", "crosstab", "sum", "mean", "variance", "quantiles", "proportion", "km",
                             "cif", "logistic", "cox"],
                    help="the statistic (default count); km: Kaplan-Meier with median and log-rank test; cif: "
                         "cumulative incidence of --cause with the other first events competing")
    qp.add_argument("--by", action="append", default=[], help="group by this column (repeatable)")
    qp.add_argument("--where", action="append", default=[], metavar="'COL OP VALUE'",
                    help="filter, e.g. 'sex == F', 'age_at_diagnosis_years < 5', 'arm in EE4A,DD4A' (repeatable)")
    qp.add_argument("--exists", action="append", default=[], metavar="'TABLE: COL OP VALUE'",
                    help="keep patients with at least one such event, e.g. 'adverse_events: grade >= 3'")
    qp.add_argument("--column", help="the variable of sum, mean, variance, quantiles, proportion")
    qp.add_argument("--value", help="proportion: the value whose share is computed")
    qp.add_argument("--prob", action="append", type=float, default=[], help="quantile probability (repeatable)")
    qp.add_argument("--endpoint", choices=["efs", "os", "late_effect"], default="os",
                    help="Kaplan-Meier, cumulative incidence and Cox endpoint (default os; cif needs efs or "
                         "late_effect: the first late effect, death competing; dictionary v2)")
    qp.add_argument("--grid-days", type=float, default=None,
                    help="km, cif: the grid (a policy's: 30.4375 months by default, 91.3125, 182.625, 365.25)")
    qp.add_argument("--horizon-days", type=float, default=None,
                    help="km, cif: the curve's horizon (default 3652.5, ten years); the restricted mean survival "
                         "time is given to it where the curve shows a point there")
    qp.add_argument("--cause", action="append", default=[], metavar="FIRST_EVENT",
                    help="cif: a first event of interest, e.g. RELAPSE (repeatable); the others compete")
    qp.add_argument("--outcome", help="logistic: 'COL OP VALUE' defining y = 1")
    qp.add_argument("--covariate", action="append", default=[], help="logistic or Cox covariate (repeatable)")
    qp.add_argument("--site", action="append", default=None, help="only these sites (repeatable)")
    qp.add_argument("--version", action="append", default=[], metavar="SITE=N",
                    help="pin a site's dataset version to reproduce an earlier result")
    qp.add_argument("--allow-partial", action="store_true",
                    help="release a combined result even if a site cannot be reached (the result says which)")
    qp.add_argument("--format", choices=["table", "csv", "json", "md"], default="table")
    qp.add_argument("--output", type=Path, help="write the result here instead of printing it")
    qp.add_argument("--plot", type=Path, help="also draw a PNG: Kaplan-Meier with risk table, or a bar chart")
    qp.add_argument("--server", default=None, help="the query service URL (default $FEDERATION_SERVER)")
    qp.add_argument("--credentials", type=Path, default=None,
                    help="file holding your token, mode 0600 (default $FEDERATION_TOKEN, else "
                    "~/.config/federation/token)")

    au = sub.add_parser(
        "audit", help="verify or list the query audit log",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "verify: check the audit log's hash chain, the service's signature on every entry, and the chain\n"
            "heads the site nodes recorded (an edited, deleted, truncated, reordered or re-chained log fails).\n"
            "Against a running service (--server, auditor token), or offline on a copy of the log\n"
            "(--state or --log) with the service's public key and the node logs collected from the sites."))
    au.add_argument("action", choices=["verify", "list"])
    au.add_argument("--server", default=None, help="ask the query service (auditor token)")
    au.add_argument("--credentials", type=Path, default=None, help="token file (mode 0600)")
    au.add_argument("--state", type=Path, default=None, help="offline: the service's state folder")
    au.add_argument("--log", type=Path, default=None, help="offline: a copy of the audit log (audit.jsonl)")
    au.add_argument("--service-key", type=Path, default=None,
                    help="offline: the service's public key (service.pub) as pinned when it was set up")
    au.add_argument("--node-log", action="append", type=Path, default=[], metavar="PATH",
                    help="offline: a site node's log (repeatable); its recorded chain heads must be in the log")

    sv = sub.add_parser(
        "serve", help="run the query service (HTTP API for analysts, auditors, admins and site nodes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run the query service. It keeps its signing key, users, and the audit log (the query history of\n"
            "every analyst) in --state, holds the disclosure policy, and no credential for any site's data:\n"
            "site nodes pull signed tasks from it. OpenAPI docs at /docs. Put it behind TLS in production."))
    sv.add_argument("--state", type=Path, default=None,
                    help="state folder (default $FEDERATION_STATE, else service-state)")
    sv.add_argument("--registry", type=Path, default=None,
                    help="the deployment's registry folder (default $FEDERATION_REGISTRY, else the package's "
                         "examples); its query-policy.yaml is the policy unless --policy")
    sv.add_argument("--policy", type=Path, default=None, help="query policy YAML (default infra/query-policy.yaml)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8700, help="port (default 8700)")
    sv.add_argument("--reply-timeout", type=float, default=60.0, help="seconds to wait for a node's reply")

    us = sub.add_parser("users", help="manage the query service's users and node credentials (on the service host)",
                        description="add prints the new token once; rotate replaces it; revoke stops it at once.")
    us.add_argument("action", choices=["add", "rotate", "revoke", "list"])
    us.add_argument("name", nargs="?", help="user name (lowercase), e.g. alice or node-site-a")
    us.add_argument("--role", choices=["analyst", "auditor", "admin", "site_coordinator", "node"])
    us.add_argument("--site", default=None, help="node and site_coordinator: their site id")
    us.add_argument("--state", type=Path, default=None,
                    help="state folder (default $FEDERATION_STATE, else service-state)")

    nd = sub.add_parser(
        "node", help="run a site node: answer the query service's signed tasks from this site's data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run the node of one site. It is the only holder of the site's read credential (from --config),\n"
            "connects outbound to the service only, accepts only tasks signed by the service's key\n"
            "(--service-key), fresh and not replayed, answers with per-site summaries under the site's own\n"
            "thresholds, and logs every task and audit head it saw to --log."))
    nd.add_argument("--site", required=True, help="this node's site id")
    nd.add_argument("--server", required=True, help="the query service URL")
    nd.add_argument("--service-key", type=Path, required=True, help="the service's public key (service.pub)")
    nd.add_argument("--token-file", type=Path, default=None,
                    help="the node's token, mode 0600 (default $FEDERATION_NODE_TOKEN)")
    nd.add_argument("--config", type=Path, default=None, help="settings YAML with this site's storage credentials")
    nd.add_argument("--log", type=Path, default=None, help="node log (default node-SITE.jsonl)")
    nd.add_argument("--poll-wait", type=float, default=20.0, help="long-poll seconds (default 20)")
    nd.add_argument("--allow-insecure-http", action="store_true",
                    help="accept an http:// service URL that is not on this host (only inside a private network)")

    d = sub.add_parser("demo", help="run the main job end to end on embedded local storage",
                       description="Synthesize exports for several sites, validate each, print per-site outcomes.")
    d.add_argument("--workdir", type=Path, default=Path("demo-output"), help="folder for everything the demo writes")
    d.add_argument("--sites", type=int, default=5, help="number of sites (default 5)")
    d.add_argument("--patients", type=int, default=300, help="patients of a mid-sized site (default 300)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "synth":
            return _synth(args)
        if args.command == "schema":
            return _schema(args)
        if args.command == "registry":
            return _registry(args)
        if args.command == "upload":
            return _upload(args)
        if args.command == "uploads":
            return _uploads(args)
        if args.command == "reprocess":
            return _reprocess(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "storage":
            return _storage(args)
        if args.command == "query":
            return _query(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "users":
            return _users(args)
        if args.command == "node":
            return _node(args)
        if args.command == "demo":
            from federation.demo import run_demo

            return run_demo(args.workdir, args.sites, args.patients)
    except FederationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2


def _validate(args: argparse.Namespace) -> int:
    from federation.config import load_site
    from federation.validation.reader import read_progress_printer
    from federation.validation.runner import ValidationRequest, validate_export

    site = load_site(args.site, args.sites_dir)
    request = ValidationRequest(path=args.path, site=site, study_id=args.study,
                                upload_date=args.upload_date or dt.date.today(),
                                max_file_bytes=args.max_file_mb * 2**20, memory_mb=args.memory_mb)
    progress = (lambda _m: None) if args.quiet else read_progress_printer()
    report = validate_export(request, progress=progress)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    folder = args.report_dir or Path("reports") / f"{site.site_id}_{args.study}_{stamp}"
    paths = report.write(folder)
    print(report.summary_text())
    docs = f", Great Expectations Data Docs {paths['data_docs']}" if "data_docs" in paths else ""
    print(f"report: {paths['html']}  (also {paths['json'].name}, {paths['csv'].name}{docs})")
    return report.exit_code


def _upload(args: argparse.Namespace) -> int:
    from federation.ingest.landing import upload_export
    from federation.schema import load_registry
    from federation.settings import load_settings
    from federation.storage import open_store
    from federation.validation.runner import ValidationRequest, validate_export

    settings = load_settings(args.config)
    site = settings.site(args.site)
    study = load_registry().study(args.study)
    print(f"validating {args.path} locally ...", file=sys.stderr)
    report = validate_export(ValidationRequest(path=args.path, site=site, study_id=study.study_id,
                                               upload_date=dt.date.today(),
                                               max_file_bytes=settings.max_file_mb * 2**20,
                                               memory_mb=settings.memory_mb))
    print(report.summary_text())
    if report.status != "valid" and not args.force:
        print("not uploaded: fix the problems above (run `federation validate` for the full report), "
              "or upload anyway with --force", file=sys.stderr)
        return report.exit_code
    store = open_store(settings.storage, site.site_id)
    manifest = upload_export(store, settings.storage, site.site_id, study.study_id, site.dictionary_for(study),
                             args.path, upload_id=args.upload_id,
                             progress=lambda m: print(m, file=sys.stderr))
    print(f"uploaded {len(manifest.files)} files as upload {manifest.upload_id} to {store.describe()}")
    return 0


def _uploads(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from federation.ingest.pipeline import list_uploads
    from federation.settings import load_settings
    from federation.storage import open_store

    if args.report:
        return _site_report(args)
    if args.server:
        return _site_uploads(args)
    settings = load_settings(args.config)
    entries = [e for e in list_uploads(settings, open_store(settings.storage, "pipeline"))
               if args.site in (None, e.site_id)]
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return 0
    if not entries:
        print("no uploads yet: nothing in the catalog or in landing" + (f" for {args.site}" if args.site else ""))
        return 0
    waiting = sum(e.status in ("waiting", "incomplete") for e in entries)
    print(f"{len(entries)} upload(s), newest first" + (f"; {waiting} not processed yet" if waiting else ""))
    print(f"{'site':<8} {'upload':<20} {'study':<12} {'status':<12} {'uploaded (UTC)':<17} {'processed (UTC)':<17} "
          f"{'rows':>9} {'version':<26} report / message")
    for e in entries:
        rows = sum(e.rows.values())
        print(f"{e.site_id:<8} {e.upload_id:<20} {e.study_id:<12} {e.status:<12} {_stamp(e.uploaded):<17} "
              f"{_stamp(e.updated):<17} {rows:>9,} {e.version_id:<26} {e.report or e.message}")
    return 0


def _stamp(iso: str) -> str:
    """'2026-12-05T07:31:10+00:00' -> '2026-12-05 07:31' (in UTC), '-' when absent."""
    import datetime as dt

    if not iso:
        return "-"
    t = dt.datetime.fromisoformat(iso)
    return (t.astimezone(dt.UTC) if t.tzinfo else t).strftime("%Y-%m-%d %H:%M")


def _site_uploads(args: argparse.Namespace) -> int:
    import json

    from federation.client import Client

    answer = Client(args.server, credentials=args.credentials).site_uploads()
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"uploads of {answer['site']}:")
    if not answer["uploads"]:
        print("  no uploads processed yet")
    for u in answer["uploads"]:
        print(f"  {u['upload_id']:<20} {u['status']:<12} {sum(u['rows'].values()):>9,} {u['version_id']:<26} "
              f"{u['updated'][:19]}  {u['message']}" + ("  (report: --report " + u["upload_id"] + ")"
                                                         if u["has_report"] else ""))
    return 0


def _site_report(args: argparse.Namespace) -> int:
    from federation.settings import load_settings
    from federation.storage import layout, open_store

    if not args.site:
        print("error: --report needs --site (your site id; its storage identity reads the report)", file=sys.stderr)
        return 2
    settings = load_settings(args.config)
    store = open_store(settings.storage, args.site)
    key = layout.report_prefix(settings.storage, args.site, args.report) + "report.html"
    try:
        data = store.get_bytes(key)
    except KeyError:
        print(f"error: no report for upload {args.report} of {args.site} ({key}); `federation uploads --server "
              "...` lists your uploads and which have a report", file=sys.stderr)
        return 2
    args.output.write_bytes(data)
    print(f"wrote {args.output} (open it in a browser)")
    return 0


def _reprocess(args: argparse.Namespace) -> int:
    from federation.ingest.landing import UploadRef
    from federation.ingest.pipeline import reprocess
    from federation.settings import load_settings

    settings = load_settings(args.config)
    e = reprocess(settings, UploadRef(args.site, args.upload, True))
    before = e.earlier[-1] if e.earlier else {}
    print(f"{e.site_id}/{e.upload_id}: {before.get('status', '?')} {before.get('version_id', '')} -> {e.status} "
          f"{e.version_id} ({e.message})".replace("  ", " "))
    if e.status != "published":
        print(f"report: {e.report}")
    return 0 if e.status == "published" else 1


def _ingest(args: argparse.Namespace) -> int:
    from federation.ingest.pipeline import ingest_all
    from federation.settings import load_settings

    entries = ingest_all(load_settings(args.config), progress=lambda m: print(m, file=sys.stderr))
    for e in entries:
        print(f"{e.site_id}/{e.upload_id}: {e.status} {e.version_id} {e.message}")
    return 1 if any(e.status == "failed" for e in entries) else 0


def _storage(args: argparse.Namespace) -> int:
    from federation.settings import load_settings
    from federation.storage.identities import new_secrets, render_seaweedfs

    settings = load_settings(args.config)
    if args.action == "init":
        return _storage_init(settings, args.wait)
    if args.out is None:
        print("error: storage identities needs --out FILE (where to write the SeaweedFS identities JSON)",
              file=sys.stderr)
        return 2
    cfg = settings.storage
    if cfg.secrets_dir is None:
        print("error: storage.secrets_dir is not set in the settings", file=sys.stderr)
        return 2
    sites = settings.site_ids()
    creds = new_secrets(sites, cfg, cfg.secrets_dir, only_missing=not args.new_secrets)
    args.out.write_text(render_seaweedfs(sites, cfg, creds), encoding="utf-8")
    args.out.chmod(0o600)
    print(f"wrote identities for pipeline and {len(sites)} sites to {args.out}")
    return 0


def _storage_init(settings: Settings, wait: float) -> int:
    from federation.storage.init import StorageInitError, init_storage

    print(f"initialising storage: {settings.storage.kind}"
          f" {settings.storage.endpoint or settings.storage.root}")
    try:
        states = init_storage(settings, wait_s=wait, progress=lambda m: print(f"  {m}"))
    except StorageInitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    made = [s.bucket for s in states if s.created]
    print(f"storage ready: {len(states)} buckets writable" + (f" ({', '.join(made)} created)" if made else ""))
    return 0


def _parse_value(text: str) -> object:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def parse_filter(text: str) -> dict[str, object]:
    """'COL OP VALUE' -> a Filter's fields; 'in'/'not in' take comma-separated values; 'COL is present' keeps
    the rows where COL has a value."""
    import re

    if m := re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s+is\s+present\s*", text):
        return {"column": m.group(1), "op": "present", "value": True}
    m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>|not in|in)\s*(.+?)\s*", text)
    if not m:
        raise FederationError(f"cannot read the filter {text!r}; write it like 'sex == F', 'grade >= 3' or "
                              "'risk_group is present'")
    col, op, raw = m.groups()
    value: object = [_parse_value(v) for v in raw.split(",")] if op in ("in", "not in") else _parse_value(raw)
    return {"column": col, "op": op, "value": value}


def _query(args: argparse.Namespace) -> int:
    from federation.client import Client
    from federation.query import Query
    from federation.query.render import plot, to_csv, to_json, to_markdown, to_text

    exists = []
    for e in args.exists:
        table, _, cond = e.partition(":")
        exists.append({"table": table.strip(), "where": [parse_filter(c) for c in cond.split(" and ") if c.strip()]})
    versions = {}
    for v in args.version:
        site, _, n = v.partition("=")
        if not n.isdigit():
            print(f"error: --version {v!r}: write SITE=N, e.g. site-b=2", file=sys.stderr)
            return 2
        versions[site] = int(n)
    try:
        q = Query.model_validate({
            "study_id": args.study, "table": args.table, "statistic": args.stat, "group_by": args.by,
            "filters": [parse_filter(w) for w in args.where], "exists": exists, "column": args.column,
            "value": _parse_value(args.value) if args.value is not None else None,
            "probs": args.prob or [0.5], "endpoint": args.endpoint, "cause": args.cause,
            **({"grid_days": args.grid_days} if args.grid_days is not None else {}),
            **({"horizon_days": args.horizon_days} if args.horizon_days is not None else {}),
            "outcome": parse_filter(args.outcome) if args.outcome else None, "covariates": args.covariate,
            "sites": args.site, "versions": versions or None, "allow_partial": args.allow_partial})
    except ValueError as exc:
        print(f"error: the query is not valid:\n{exc}", file=sys.stderr)
        return 2
    result = Client(args.server, credentials=args.credentials).query(q).result
    render = {"table": to_text, "csv": to_csv, "json": to_json, "md": to_markdown}[args.format]
    text = render(result)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    if args.plot and result.status == "released":
        print(f"plot: {plot(result, args.plot)}")
    return 0 if result.status == "released" else 3


def _state_dir(value: Path | None) -> Path:
    import os

    return value or Path(os.environ.get("FEDERATION_STATE", "service-state"))


def _audit(args: argparse.Namespace) -> int:
    from federation.query.central.audit import AuditLog, Witness
    from federation.signing import Verifier

    if args.server:
        from federation.client import Client

        client = Client(args.server, credentials=args.credentials)
        if args.action == "list":
            _print_audit(client.audit())
            return 0
        report = client.audit_verify()
        for site, why in report["nodes_unreachable"].items():
            print(f"  note: node {site} could not be asked ({why})")
        return _report_verify(f"audit log at {args.server}", report["entries"], report["problems"],
                              report["nodes_checked"])
    if args.state is None and args.log is None:
        print("error: give --server URL, or --state DIR / --log FILE for an offline check", file=sys.stderr)
        return 2
    log = AuditLog(args.log or args.state / "audit.jsonl")
    if args.action == "list":
        _print_audit(log.entries())
        return 0
    if args.service_key is None:
        print("error: give --service-key: the service's public key as you pinned it, not the copy next to the log "
              "(whoever can edit the log can replace that one)", file=sys.stderr)
        return 2
    key_path = args.service_key
    if not args.node_log:
        print("warning: no --node-log given: a log re-signed with a stolen key cannot be detected without the "
              "chain heads the nodes recorded", file=sys.stderr)
    from federation.node import NodeLog

    witnesses = [Witness(node=str(p), heads=NodeLog(p).heads()) for p in args.node_log]
    problems = log.verify(Verifier.from_file(key_path), witnesses)
    return _report_verify(f"audit log {log.path}", len(log.entries()), problems, [w.node for w in witnesses])


def _print_audit(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        q = e["query"]
        reason = str(e.get("reason") or "")
        print(f"#{e['id']:<5} {str(e['time'])[:19]} {e['analyst']!s:<12} {e['outcome']!s:<9} "
              f"{q['study_id']} {q['statistic']} by {','.join(q['group_by']) or '-'}"
              f"{'  ' + reason[:80] if reason else ''}")


def _report_verify(what: str, n: int, problems: list[str], nodes: list[str]) -> int:
    if problems:
        print(f"{what} has been TAMPERED WITH:")
        for p in problems:
            print(f"  {p}")
        return 1
    print(f"{what}: {n} entries, hash chain and signatures intact"
          + (f"; chain heads recorded by {len(nodes)} node(s) all present" if nodes else
             "; no node heads checked (give --node-log)"))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from federation.schema import is_package_registry, registry_dir, registry_file, use_registry
    from federation.service.app import ServiceState, create_app
    from federation.settings import check_registry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.registry:
        use_registry(args.registry.resolve())
    if not is_package_registry():
        check_registry(registry_dir(), policy_needed=args.policy is None)
    state = ServiceState(_state_dir(args.state), args.policy or registry_file("query-policy.yaml"),
                         reply_timeout=args.reply_timeout)
    print(f"query service on http://{args.host}:{args.port} (docs at /docs); state in {state.state_dir}; "
          f"policy {state.policy_path}; public key {state.state_dir / 'service.pub'}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")
    return 0


def _users(args: argparse.Namespace) -> int:
    from federation.service.users import UserStore

    users = UserStore(_state_dir(args.state) / "users.sqlite")
    if args.action == "list":
        for u in users.all():
            print(f"{u['name']!s:<24} {u['role']!s:<17} {u['site'] or '':<10} created {u['created']}"
                  + (f"  REVOKED {u['revoked']}" if u["revoked"] else ""))
        return 0
    if not args.name:
        print(f"error: users {args.action} needs a NAME", file=sys.stderr)
        return 2
    if args.action == "add":
        if not args.role:
            print("error: users add needs --role", file=sys.stderr)
            return 2
        print(users.add(args.name, args.role, args.site))
        print(f"(token of {args.name}, shown once: store it in a file with mode 0600)", file=sys.stderr)
    elif args.action == "rotate":
        print(users.rotate(args.name))
        print(f"(new token of {args.name}; the old one no longer works)", file=sys.stderr)
    else:
        users.revoke(args.name)
        print(f"revoked {args.name}")
    return 0


def _node(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from federation.node import SiteNode
    from federation.secretfile import token_from
    from federation.settings import load_settings
    from federation.signing import Verifier

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings(args.config)
    token = token_from("FEDERATION_NODE_TOKEN", args.token_file, "token file")
    node = SiteNode(settings, args.site, args.server, token, Verifier.from_file(args.service_key),
                    args.log or Path(f"node-{args.site}.jsonl"),
                    poll_wait=args.poll_wait, allow_http=args.allow_insecure_http)
    stop = threading.Event()

    def interrupt(*_: object) -> None:
        stop.set()
        raise KeyboardInterrupt  # ends a waiting long poll at once; run() stops cleanly

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, interrupt)
    return node.run(stop)


def _synth(args: argparse.Namespace) -> int:
    from federation.synth import ERROR_KINDS, synthesize

    if args.list_errors:
        print("\n".join(ERROR_KINDS))
        return 0
    kinds = args.error_kinds.split(",") if args.error_kinds else None
    unknown = [k for k in kinds or [] if k not in ERROR_KINDS]
    if unknown:
        print(f"error: unknown error kinds {unknown}; see --list-errors", file=sys.stderr)
        return 2
    written = synthesize(args.out, args.sites, args.study, args.patients, args.as_of or dt.date.today(),
                         seed=args.seed, error_sites=args.inject_errors, error_kinds=kinds,
                         ae_per_patient=args.ae_per_patient)
    for w in written:
        rows = ", ".join(f"{t} {n:,}" for t, n in w.rows.items())
        inj = f", {len(w.expected)} injected findings" if w.expected else ""
        print(f"{w.site.site_id:<8} {w.folder}  ({rows}{inj})")
    print(f"site configs: {args.out / 'sites'}; answer file: {args.out / 'answers.json'}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from federation.generate import derived_dirs, drift, write_derived
    from federation.schema import use_registry

    if args.registry:
        use_registry(args.registry.resolve())
    dirs = derived_dirs()
    if args.action == "generate":
        for path in write_derived(*dirs):
            print(f"wrote {path}")
        return 0
    stale = drift(*dirs)
    again = " --registry " + str(args.registry) if args.registry else ""
    for path in stale:
        print(f"out of date: {path} (the registry or dictionary changed; run `federation schema generate{again}`)")
    problems = registry_problems()
    for problem in problems:
        print(f"registry: {problem}")
    return 1 if stale or problems else 0


def registry_problems() -> list[str]:
    """Sites of the registry in use that name a study it does not have."""
    from federation.config import load_site
    from federation.schema import load_registry, registry_file

    known = {s.study_id for s in load_registry().studies}
    sites_dir = registry_file("sites")
    out = []
    for path in sorted(sites_dir.glob("*.yaml")):
        unknown = [s for s in load_site(path.stem, sites_dir).studies if s not in known]
        if unknown:
            out.append(f"site {path.stem} takes part in {', '.join(unknown)}, which the registry does not have")
    return out


def _registry(args: argparse.Namespace) -> int:
    import shutil

    from federation.generate import derived_dirs, write_derived
    from federation.paths import INFRA_DIR, SCHEMAS_DIR
    from federation.schema import use_registry

    folder: Path = args.folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        print(f"error: {folder} is not empty; a registry is created in a new or empty folder (an existing one "
              "is edited in place)", file=sys.stderr)
        return 2
    (folder / "sites").mkdir(parents=True, exist_ok=True)
    (folder / "reports").mkdir(exist_ok=True)
    shutil.copyfile(SCHEMAS_DIR / "studies.yaml", folder / "studies.yaml")
    for site in sorted((INFRA_DIR / "sites").glob("*.yaml")):
        shutil.copyfile(site, folder / "sites" / site.name)
    shutil.copyfile(INFRA_DIR / "query-policy.yaml", folder / "query-policy.yaml")
    shutil.copyfile(INFRA_DIR / "reports" / "consortium.yaml", folder / "reports" / "consortium.yaml")
    use_registry(folder)
    written = write_derived(*derived_dirs())
    print(f"registry in {folder}: studies.yaml, {len(list((folder / 'sites').glob('*.yaml')))} sites, "
          f"query-policy.yaml, reports/consortium.yaml, {len(written)} generated files; name it in the settings "
          f"as registry_dir: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
