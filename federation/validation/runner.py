"""Validate one site export: read it through the site's conventions, run the
generated Great Expectations suites on each table's batch, and turn the GX
results back into findings in the site's own terms.

This is the one entry point both the site coordinator's local
`federation validate` and the pipeline's validate task call, so the two can
never disagree.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from federation.config import SiteConfig
from federation.exceptions import UnusableInputError
from federation.schema import Dictionary, Study, load_dictionary, load_registry
from federation.validation.explain import Context, explain
from federation.validation.findings import Finding
from federation.validation.reader import (
    DEFAULT_MAX_FILE_BYTES,
    INVALID_SUFFIX,
    LINE,
    ProgressFn,
    SourceTable,
    _no_progress,
    day_to_iso,
    read_table,
)
from federation.validation.report import Report, TableSummary
from federation.validation.suites import AGE_COLUMN, join_needs, joined_name, load_suite, tables_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationRequest:
    path: Path
    site: SiteConfig
    study_id: str
    upload_date: dt.date
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


def _quiet_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.ERROR)


def validate_export(request: ValidationRequest, progress: ProgressFn = _no_progress, *,
                    keep_sources: bool = False) -> Report:
    """Validate the export in `request.path` (a folder of `<table>.csv`)."""
    started = time.perf_counter()
    registry = load_registry()
    study = registry.study(request.study_id)
    dictionary = load_dictionary(study.schema_version)
    report = Report(site_id=request.site.site_id, study_id=study.study_id,
                    schema_version=dictionary.schema_version, path=str(request.path),
                    upload_date=request.upload_date.isoformat())
    if study.study_id not in request.site.studies:  # the same check for validate, upload and the pipeline
        enrolled = ", ".join(request.site.studies) or "none"
        report.unusable.append(Finding(
            severity="error", rule="study_enrolment", table="", file=str(request.path),
            message=f"{request.site.site_id} is not enrolled in study {study.study_id} (its site configuration "
                    f"lists: {enrolled}); nothing was checked",
            hint=f"check the study id; if {request.site.site_id} has joined {study.study_id}, ask the data team to "
                 "add it to the site configuration's studies",
        ))
        report.finish(time.perf_counter() - started)
        return report
    if not request.path.is_dir():
        report.unusable.append(Finding(
            severity="error", rule="export_folder", table="", file=str(request.path),
            message=f"{request.path} is not a folder of CSV files",
            hint="pass the folder that holds patients.csv, diagnoses.csv, outcomes.csv, ...",
        ))
        report.finish(time.perf_counter() - started)
        return report

    wanted = tables_of(dictionary, study)
    entries = sorted(request.path.iterdir())
    for link in (p for p in entries if p.is_symlink()):  # never follow a link out of the export folder
        report.unusable.append(Finding(
            severity="error", rule="symbolic_link", table="", file=link.name,
            message=f"{link.name} is a symbolic link; it was not read",
            hint="copy the file itself into the export folder instead of linking to it",
        ))
    files = {p.name.lower(): p for p in entries if p.is_file() and not p.is_symlink()}
    sources: dict[str, SourceTable] = {}
    for name, path in sorted(files.items()):
        stem = name[:-4] if name.endswith(".csv") else None
        if stem not in wanted and not name.startswith(".") and name != "manifest.json":
            report.findings.append(Finding(
                severity="warning", rule="unknown_file", table="", file=path.name,
                message=f"{path.name} is not a table of study {study.study_id}; it was ignored",
                hint=f"expected files: {', '.join(t + '.csv' for t in wanted)}",
            ))
    for table in wanted:
        t = dictionary.table(table)
        found = files.get(f"{table}.csv")
        if found is None:
            if t.required:
                report.findings.append(Finding(
                    severity="error", rule="required_file", table=table, file=f"{table}.csv",
                    message=f"required file {table}.csv is missing",
                    hint=f"add {table}.csv (file names are <table>.csv)",
                ))
            sources[table] = _empty_source(dictionary, table)
            continue
        progress(f"reading {found.name}")
        try:
            src = read_table(found, t, study, request.site.conventions,
                             max_bytes=request.max_file_bytes, progress=progress)
        except UnusableInputError as exc:
            report.unusable.append(Finding(severity="error", rule="unusable_file", table=table,
                                           file=exc.file or found.name, message=str(exc), hint=exc.hint))
            report.tables.append(TableSummary(table=table, file=found.name, rows=0, readable=False, checked=False))
            continue
        sources[table] = src
        report.findings.extend(src.findings)

    if not report.unusable:
        _run_suites(dictionary, study, request, sources, report, progress)
    for table, src in sources.items():
        if src.present:  # no verdict on a file whose rules did not run because another could not be read
            report.tables.append(TableSummary(table=table, file=src.file, rows=src.rows, checked=not report.unusable))
    report.tables.sort(key=lambda t: wanted.index(t.table) if t.table in wanted else len(wanted))
    if keep_sources:
        report.sources = {t: s for t, s in sources.items() if s.present}
    report.finish(time.perf_counter() - started)
    return report


def _empty_source(dictionary: Dictionary, table: str) -> SourceTable:
    """An absent optional table: no rows, every column present (so cross-table joins still work)."""
    t = dictionary.table(table)
    frame = pd.DataFrame({LINE: pd.Series([], dtype="int64")})
    for name, column in t.columns.items():
        frame[name] = pd.Series([], dtype="float64" if column.type in ("date", "int", "decimal") else "object")
        if column.type in ("date", "int", "decimal"):
            frame[name + INVALID_SUFFIX] = pd.Series([], dtype="object")
    return SourceTable(table=table, file=f"{table}.csv", frame=frame, raw=pa.table({}),
                       lines=np.zeros(0, dtype="int64"), local_names={c: c for c in t.columns}, present=False)


def build_batch(dictionary: Dictionary, table: str, sources: dict[str, SourceTable]) -> pd.DataFrame:
    """The table joined (on patient_id) with what its cross-table rules need from other tables."""
    batch = sources[table].frame
    for other, columns in join_needs(dictionary, table).items():
        src = sources.get(other)
        if src is None:
            continue
        cols = sorted(columns | {"patient_id"})
        have = [c for c in cols if c in src.frame.columns]
        if "patient_id" not in have:
            continue
        side = src.frame[have].dropna(subset=["patient_id"]).drop_duplicates("patient_id")
        side = side.rename(columns={c: joined_name(other, c) for c in have})
        side["__key"] = side[joined_name(other, "patient_id")]
        if "patient_id" not in batch.columns:
            continue
        batch = batch.merge(side, how="left", left_on="patient_id", right_on="__key", validate="many_to_one")
        batch = batch.drop(columns="__key")
    for rule in dictionary.rules_for(table):
        if rule.kind == "age_between" and rule.other_table and rule.other_column:
            birth = joined_name(rule.other_table, rule.other_column)
            if birth in batch.columns and rule.column in batch.columns:
                batch[AGE_COLUMN] = (batch[rule.column] - batch[birth]) / 365.25
            else:
                batch[AGE_COLUMN] = np.nan
    return batch


def _run_suites(dictionary: Dictionary, study: Study, request: ValidationRequest,
                sources: dict[str, SourceTable], report: Report, progress: ProgressFn) -> None:
    _quiet_gx()
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}  # type: ignore[assignment]
    asset = context.data_sources.add_pandas("export").add_dataframe_asset("table")
    batch_def = asset.add_batch_definition_whole_dataframe("whole")
    wording = Context(conventions=request.site.conventions, site_id=request.site.site_id, study_id=study.study_id,
                      upload_date=request.upload_date)
    params = {"site_id": [request.site.site_id],
              "upload_date": float((pd.Timestamp(request.upload_date) - pd.Timestamp("1970-01-01")).days)}
    for table, src in sources.items():
        if not src.present:
            continue
        progress(f"validating {src.file} ({src.rows:,} rows)")
        suite_dict = load_suite(dictionary, study, table)
        suite = gx.ExpectationSuite(**suite_dict)
        batch_frame = build_batch(dictionary, table, sources)
        batch = batch_def.get_batch(batch_parameters={"dataframe": batch_frame})
        result = batch.validate(suite, expectation_parameters=params,
                                result_format={"result_format": "COMPLETE",
                                               "unexpected_index_column_names": [LINE]})
        report.findings.extend(_findings_from(result, src, sources, wording))


def _findings_from(result: Any, src: SourceTable, sources: dict[str, SourceTable],
                   wording: Context | None = None) -> list[Finding]:
    out: list[Finding] = []
    for res in result.results:
        if res.success:
            continue
        meta = res.expectation_config.meta or {}
        column = meta.get("column")
        if column is None:
            continue
        local = src.local_names.get(column, column)
        exc = res.exception_info or {}
        raised = exc.get("raised_exception") if "raised_exception" in exc else any(
            isinstance(v, dict) and v.get("raised_exception") for v in exc.values())
        if res.expectation_config.type == "expect_column_to_exist":
            out.append(Finding(severity="error", rule="required_column", table=src.table, file=src.file, line=1,
                               column=column, dictionary_column=column, message=meta["message"],
                               hint=meta["hint"]))
            continue
        if raised:
            # A column the expectation needs is missing; that is reported by expect_column_to_exist. Anything
            # else is said in one line (never the library's traceback)
            if column in src.frame.columns:
                log.warning("rule %s on %s could not run: %s", meta.get("rule"), src.file, _one_line(exc))
            continue
        rows = res.result.get("unexpected_index_list") or []
        # A typed cell that holds a value which is not of its type is empty after conversion; the
        # type expectation reports it, so "is required" on the same cell would be a false second alarm.
        presence_check = (res.expectation_config.type == "expect_column_values_to_not_be_null"
                          and res.expectation_config.kwargs.get("column") == column)
        for row in rows:
            line = int(row[LINE])
            raw_value = src.raw_value(line, column)
            if presence_check and raw_value is not None and raw_value.strip():
                continue
            message, detail = meta["message"], _detail(meta, row, sources)
            if wording is not None and not detail:
                message, detail = explain(meta["rule"], column, raw_value, message, {**meta, "table": src.table},
                                          wording)
            out.append(Finding(
                severity="error", rule=meta["rule"], table=src.table, file=src.file, line=line, column=local,
                value=raw_value, dictionary_column=column, message=message, hint=meta["hint"], detail=detail,
            ))
    return out


def _one_line(exc: dict[str, Any]) -> str:
    """The cause of an expectation that raised, as one line (GX keeps the traceback beside it)."""
    infos = [exc] if "raised_exception" in exc else [v for v in exc.values() if isinstance(v, dict)]
    for info in infos:
        text = str(info.get("exception_message") or "").strip()
        if text:
            return text.splitlines()[0][:200]
    return "unknown cause"


def _detail(meta: dict[str, Any], row: dict[str, Any], sources: dict[str, SourceTable]) -> str:
    other = meta.get("other")
    if not other or "." not in other:
        return ""
    table, column = other.split(".", 1)
    key = joined_name(table, column)
    value = row.get(key)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    t = sources.get(table)
    file = t.file if t else f"{table}.csv"
    local = t.local_names.get(column, column) if t else column
    shown = day_to_iso(value) if column.endswith("_date") else str(value)
    return f"{file}: {local} = {shown}"
