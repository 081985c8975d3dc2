"""The consortium report: standard queries from infra/reports/consortium.yaml, asked of the query service
for every study in the registry (with the report's own service token, so the same disclosure control and
audit apply as to any analyst), rendered as one HTML page with plots plus a CSV per table."""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path
from typing import Any

import yaml

from federation.client import Client
from federation.ingest.pipeline import CatalogEntry
from federation.paths import INFRA_DIR
from federation.query.central.runner import Result
from federation.query.model import Query
from federation.query.render import plot, rows_of, survival_summary, to_csv
from federation.schema import load_registry

DEFAULT_SPEC = INFRA_DIR / "reports" / "consortium.yaml"


NO_DATA = "no site can take part in this query"


def build_report(client: Client, out: Path, spec_path: Path = DEFAULT_SPEC, progress: Any = lambda _m: None,
                 uploads: list[CatalogEntry] | None = None) -> Path:
    """The report in `out` (index.html and a CSV per table). `uploads` (the upload catalog, newest first, as
    `pipeline.list_uploads` gives it) adds each study's data status: which sites' latest upload was not
    published (quarantined, rejected, failed) or waits."""
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    results: list[Result] = []
    for entry in load_registry().studies:
        study = entry.study_id
        sections.append(f"<h2>{html.escape(study)}: {html.escape(entry.title)}</h2>")
        if uploads is not None:
            sections.append(data_status(study, uploads))
        for item in spec["queries"]:
            if "dictionaries" in item and entry.schema_version not in [str(v) for v in item["dictionaries"]]:
                continue  # a section of the new science, for studies whose dictionary collects it
            q = Query.model_validate({**item["query"], "study_id": study})
            progress(f"  {study}: {item['title']}")
            r = client.query(q).result
            if r.status == "refused" and r.reason.startswith(NO_DATA) and not r.excluded:
                sections.append("<p>No site has published data for this study yet.</p>")
                break
            results.append(r)
            sections.append(_section(item, r, out, study))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = sorted({v for r in results for v in r.versions.values()})
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>"
            f"{html.escape(spec['title'])}</title><style>body{{font-family:system-ui,sans-serif;max-width:1000px;"
            "margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;"
            "padding:3px 8px;text-align:right}th{background:#f4f4f4}.refused{color:#b42318}small{color:#555}"
            "</style></head><body>"
            f"<h1>{html.escape(spec['title'])}</h1><p>Built {stamp}. Every number passed disclosure control "
            "(counts under the threshold and the cells that would reveal them are shown as <b>suppr.</b>); "
            f"every query is in the audit log. Data versions: {html.escape(', '.join(versions))}.</p>"
            + "".join(sections) + "</body></html>\n")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def data_status(study: str, uploads: list[CatalogEntry]) -> str:
    """One paragraph: the sites whose data this study's tables use, and each site whose latest upload of it
    is not in them (with its status and date), so a reader knows whose data is missing and why."""
    latest: dict[str, CatalogEntry] = {}
    published: set[str] = set()
    for e in uploads:  # newest first
        if e.study_id != study:
            continue
        latest.setdefault(e.site_id, e)
        if e.status == "published":
            published.add(e.site_id)
    if not latest:
        return "<p class='status'>Data status: no site has uploaded data for this study.</p>"
    notes = []
    for site, e in sorted(latest.items()):
        if e.status == "published":
            continue
        when = (e.uploaded or e.updated)[:10]
        what = {"quarantined": "was quarantined (it broke validation rules; the site has the report)",
                "rejected": "was rejected", "failed": "could not be processed (the data engineers are told)",
                "superseded": "was not published (a later upload of the site was published first)",
                "waiting": "waits to be processed", "incomplete": "is incomplete"}.get(e.status, e.status)
        older = " Its earlier published data is used." if site in published else " No data of this site is used."
        notes.append(f"<li>{html.escape(site)}: the upload of {html.escape(when)} {what}.{older}</li>")
    used = ", ".join(sorted(published)) or "none"
    return (f"<p class='status'>Data status: published data of {html.escape(used)}.</p>"
            + (f"<ul class='status'>{''.join(notes)}</ul>" if notes else ""))


def _section(item: dict[str, Any], r: Result, out: Path, study: str) -> str:
    title = html.escape(item["title"])
    if r.status == "refused":
        return (f"<h3>{title}</h3><p class='refused'>Not released: {html.escape(r.reason)}</p>"
                f"<p><small>audit entry #{r.audit_id}</small></p>")
    stem = f"{study}_{item['id']}"
    (out / f"{stem}.csv").write_text(to_csv(r), encoding="utf-8")
    parts = [f"<h3>{title}</h3>"]
    stat = r.payload.get("statistic")
    if stat in ("km", "cif", "count", "crosstab"):
        png = plot(r, out / f"{stem}.png")
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<img alt='{title}' src='data:image/png;base64,{data}' style='max-width:100%'>")
    summary = survival_summary(r.payload)
    if summary:
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary) + "</ul>")
    if stat not in ("km", "cif"):
        header, rows = rows_of(r)
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append(f"<p><small><a href='{stem}.csv'>CSV</a> &middot; audit entry #{r.audit_id}"
                 + "".join(f" &middot; {html.escape(n)}" for n in r.notes[:1]) + "</small></p>")
    return "".join(parts)
