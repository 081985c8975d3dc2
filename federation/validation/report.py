"""The validation report, in the three forms people and machines read:
an HTML page a site coordinator can act on, a JSON document, and a CSV of
every failing cell (capped, with an "and N more" line)."""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from federation.csvsafe import SafeWriter
from federation.validation.findings import Finding

log = logging.getLogger(__name__)
Status = Literal["valid", "invalid", "unusable"]
EXIT_CODES: dict[str, int] = {"valid": 0, "invalid": 1, "unusable": 2}
CSV_CAP = 10_000
HTML_EXAMPLES_PER_RULE = 5
DATA_DOCS = "data-docs"  # the Great Expectations Data Docs of the run, beside report.html
SUMMARY_RULES_PER_FILE = 5  # kinds of problem the terminal summary shows per file


@dataclass
class TableSummary:
    table: str
    file: str
    rows: int
    errors: int = 0
    warnings: int = 0
    readable: bool = True  # False: the file itself could not be read (see the report's unusable findings)
    checked: bool = True  # False: the rules did not run (another file could not be read), so no verdict

    @property
    def status(self) -> str:
        if not self.readable:
            return "unreadable"
        if not self.checked:
            return "not checked"
        return "fail" if self.errors else "pass"


@dataclass
class Report:
    site_id: str
    study_id: str
    schema_version: str
    path: str
    upload_date: str
    findings: list[Finding] = field(default_factory=list)
    unusable: list[Finding] = field(default_factory=list)
    tables: list[TableSummary] = field(default_factory=list)
    seconds: float = 0.0
    created: str = ""
    # Seconds spent in each step (read, conventions, joins, gx, findings), for logs and benchmarks.
    steps: dict[str, float] = field(default_factory=dict)
    # The tables as read (dictionary terms, a parts.PartStore), kept only when the caller goes on to harmonize
    # them; the caller closes it.
    parts: Any = field(default=None, repr=False)
    # Great Expectations' results of each table (and part), for the Data Docs written beside the report
    gx_results: list[Any] = field(default_factory=list, repr=False)
    data_docs: str = ""  # the Data Docs' index, relative to the report, once written

    def finish(self, seconds: float) -> None:
        self.seconds = seconds
        self.created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.findings.sort(key=lambda f: (f.file, f.line or 0, f.column or "", f.rule))
        by_file = {t.file: t for t in self.tables}
        for f in self.findings:
            t = by_file.get(f.file)
            if t is not None:
                if f.severity == "error":
                    t.errors += 1
                else:
                    t.warnings += 1

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def status(self) -> Status:
        if self.unusable:
            return "unusable"
        return "invalid" if self.errors else "valid"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def rule_counts(self) -> list[tuple[str, str, str, int]]:
        """(file, rule, message, count) of every broken rule, most frequent first."""
        counts: Counter[tuple[str, str, str]] = Counter()
        for f in self.unusable + self.findings:
            counts[(f.file, f.rule, f.message)] += 1
        return [(file, rule, msg, n) for (file, rule, msg), n in counts.most_common()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "site_id": self.site_id,
            "study_id": self.study_id,
            "schema_version": self.schema_version,
            "path": self.path,
            "upload_date": self.upload_date,
            "created": self.created,
            "seconds": round(self.seconds, 3),
            "steps": {k: round(v, 3) for k, v in self.steps.items()},
            "counts": {"errors": len(self.errors) + len(self.unusable), "warnings": len(self.warnings)},
            "tables": [{**t.__dict__, "status": t.status} for t in self.tables],
            "rules": [{"file": f, "rule": r, "message": m, "count": n} for f, r, m, n in self.rule_counts()],
            "unusable": [f.to_dict() for f in self.unusable],
            "findings": [f.to_dict() for f in self.findings],
        }

    # ---- rendering -------------------------------------------------------------------------
    def summary_text(self) -> str:
        lines = [f"{self.site_id} / {self.study_id} (dictionary v{self.schema_version}): {self.status.upper()}"]
        for t in self.tables:
            counts = (f"{t.errors:,} errors, {t.warnings:,} warnings" if t.readable and t.checked else
                      "rules not run: another file could not be read" if t.readable else "could not be read")
            lines.append(f"  {t.file:<22} {t.rows:>9,} rows  {t.status.upper():<11}  {counts}")
        for f in self.unusable:
            lines.append(f"  UNUSABLE {f.file}: {f.message}")
            if f.hint:
                lines.append(f"    -> {f.hint}")
        # every file's most frequent problems, so that a small file's few are not hidden by a big file's many
        by_file: dict[str, list[tuple[str, str, int]]] = {}
        for file, rule, msg, n in self.rule_counts():
            if not any(u.rule == rule and u.file == file for u in self.unusable):
                by_file.setdefault(file, []).append((rule, msg, n))
        for file in sorted(by_file):
            rules = by_file[file]
            lines.append(f"  {file or 'the export folder'}:")
            for rule, msg, n in rules[:SUMMARY_RULES_PER_FILE]:
                example = next((f for f in self.findings if f.file == file and f.rule == rule and f.message == msg
                                and f.line), None)
                where = (f" (e.g. line {example.line}, {example.column} = {example.value!r})"
                         if example is not None and example.value is not None else "")
                lines.append(f"    {n:>7,} x {msg}{where} [{rule}]")
            if len(rules) > SUMMARY_RULES_PER_FILE:
                lines.append(f"    ... and {len(rules) - SUMMARY_RULES_PER_FILE} more kinds of problem in {file}: "
                             "see the report")
        return "\n".join(lines)

    def write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"html": folder / "report.html", "json": folder / "report.json", "csv": folder / "failures.csv"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        self._write_csv(paths["csv"])
        if self.gx_results:
            from federation.validation.datadocs import build

            run = f"{self.site_id}-{self.study_id}-{self.upload_date}"
            try:
                paths["data_docs"] = build(self.gx_results, folder / DATA_DOCS, run)
                self.data_docs = f"{DATA_DOCS}/index.html"
            except Exception as exc:  # the report stands without GX's pages; say why in one line
                log.warning("Great Expectations Data Docs were not written: %s", str(exc).splitlines()[0][:200])
        paths["html"].write_text(self.render_html(), encoding="utf-8")
        return paths

    def _write_csv(self, path: Path) -> None:
        rows = self.unusable + self.findings
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = SafeWriter(fh)
            w.writerow(["severity", "file", "line", "column", "value", "rule", "message", "detail", "hint"])
            for f in rows[:CSV_CAP]:
                w.writerow([f.severity, f.file, f.line or "", f.column or "", f.value or "", f.rule, f.message,
                            f.detail, f.hint])
            if len(rows) > CSV_CAP:
                w.writerow(["", "", "", "", "", "", f"and {len(rows) - CSV_CAP:,} more (not listed)", "", ""])

    def render_html(self) -> str:
        e = html.escape
        colour = {"valid": "#1a7f37", "invalid": "#b42318", "unusable": "#9a6700"}[self.status]
        verdict = {
            "valid": "Your export passed every rule. You can upload it.",
            "invalid": "Your export breaks some rules. Fix the problems below in your system and export again.",
            "unusable": "Your export could not be read at all. Fix the file problems below first.",
        }[self.status]
        parts = [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>Validation {e(self.site_id)} {e(self.study_id)}: {self.status}</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}"
            "th{background:#f4f4f4}.pass{color:#1a7f37}.fail{color:#b42318}code{background:#f4f4f4}</style>",
            "</head><body>",
            f"<h1 style='color:{colour}'>{e(self.status.upper())}: {e(self.site_id)} / {e(self.study_id)}</h1>",
            f"<p><b>{e(verdict)}</b></p>",
            f"<p>Folder <code>{e(self.path)}</code>, data dictionary v{e(self.schema_version)}, "
            f"upload date {e(self.upload_date)}, checked {e(self.created)} in {self.seconds:.1f} s. "
            f"{len(self.errors) + len(self.unusable):,} errors, {len(self.warnings):,} warnings.</p>",
            "<h2>Tables</h2><table><tr><th>file</th><th>rows</th><th>result</th><th>errors</th><th>warnings</th></tr>",
        ]
        for t in self.tables:
            counted = t.readable and t.checked  # no counts where the rules did not run
            parts.append(f"<tr><td>{e(t.file)}</td><td>{t.rows:,}</td><td class='{t.status.replace(' ', '-')}'>"
                         f"{t.status.upper()}</td><td>{f'{t.errors:,}' if counted else '-'}</td>"
                         f"<td>{f'{t.warnings:,}' if counted else '-'}</td></tr>")
        parts.append("</table>")
        if self.unusable:
            parts.append("<h2>Files that could not be read</h2><ul>")
            for f in self.unusable:
                parts.append(f"<li><b>{e(f.file)}</b>: {e(f.message)}<br>What to do: {e(f.hint)}</li>")
            parts.append("</ul>")
        if self.findings:
            parts.append("<h2>Problems, by rule</h2><table><tr><th>file</th><th>problem</th><th>rows</th>"
                         "<th>examples (line, column = value)</th><th>what to do</th></tr>")
            examples: dict[tuple[str, str, str], list[Finding]] = {}
            for f in self.findings:
                examples.setdefault((f.file, f.rule, f.message), []).append(f)
            for file, rule, msg, n in self.rule_counts():
                ex = examples.get((file, rule, msg))
                if not ex:
                    continue
                shown = "<br>".join(
                    e(f"line {f.line}, {f.column} = {f.value!r}" + (f" ({f.detail})" if f.detail else ""))
                    if f.line else e(f.column or "") for f in ex[:HTML_EXAMPLES_PER_RULE])
                if len(ex) > HTML_EXAMPLES_PER_RULE:
                    shown += f"<br>and {len(ex) - HTML_EXAMPLES_PER_RULE:,} more"
                sev = "fail" if ex[0].severity == "error" else ""
                parts.append(f"<tr><td>{e(file)}</td><td class='{sev}'>{e(msg)}<br><small>{e(rule)}</small></td>"
                             f"<td>{n:,}</td><td>{shown}</td><td>{e(ex[0].hint)}</td></tr>")
            parts.append("</table><p>Every failing cell is listed in <a href='failures.csv'>failures.csv</a>; "
                         "machines can read <a href='report.json'>report.json</a>.</p>")
        if self.data_docs:
            parts.append(f"<p>Great Expectations' own view of this run, every expectation of every table with its "
                         f"result: <a href='{html.escape(self.data_docs)}'>Data Docs</a>.</p>")
        parts.append("</body></html>\n")
        return "".join(parts)
