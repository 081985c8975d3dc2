"""Validate one site export: read it through the site's conventions, run the
generated Great Expectations suites on each table's batch, and turn the GX
results back into findings in the site's own terms.

This is the one entry point both the site coordinator's local
`federation validate` and the pipeline's validate task call, so the two can
never disagree.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from federation.config import SiteConfig
from federation.exceptions import UnusableInputError
from federation.schema import Dictionary, Study, load_dictionary, load_registry
from federation.validation.datadocs import DocsEntry, expectation_key, for_docs, result_key
from federation.validation.explain import Context, explain
from federation.validation.findings import Finding
from federation.validation.parts import DEFAULT_MEMORY_MB, PartStore, check_partitionable, parts_for
from federation.validation.reader import (
    DEFAULT_MAX_FILE_BYTES,
    LINE,
    ProgressFn,
    SourceTable,
    TableReader,
    _no_progress,
    day_to_iso,
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
    # Memory the validation may use; a larger export is split by patient into parts that fit (parts.py)
    memory_mb: int = DEFAULT_MEMORY_MB
    parts: int | None = None  # force this many parts (tests, benchmarks); None: from memory_mb
    workdir: Path | None = None  # where part files go (a temporary folder if None)


def _quiet_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _import_gx_in_background() -> threading.Thread:
    """Import Great Expectations (about 3 s here) while the files are read: reading is mostly pyarrow, which
    releases the GIL, so the two overlap."""
    def _import() -> None:
        _quiet_gx()
        import great_expectations  # noqa: F401

    thread = threading.Thread(target=_import, name="import-great-expectations", daemon=True)
    thread.start()
    return thread


def validate_export(request: ValidationRequest, progress: ProgressFn = _no_progress, *,
                    keep_sources: bool = False) -> Report:
    """Validate the export in `request.path` (a folder of `<table>.csv`)."""
    started = time.perf_counter()
    registry = load_registry()
    study = registry.study(request.study_id)
    dictionary = load_dictionary(request.site.dictionary_for(study) if study.study_id in request.site.studies
                                 else study.schema_version)
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

    gx_ready = _import_gx_in_background()
    wanted = tables_of(dictionary, study)
    entries = sorted(request.path.iterdir())
    for link in (p for p in entries if p.is_symlink()):  # never follow a link out of the export folder
        report.unusable.append(Finding(
            severity="error", rule="symbolic_link", table="", file=link.name,
            message=f"{link.name} is a symbolic link; it was not read",
            hint="copy the file itself into the export folder instead of linking to it",
        ))
    files = {p.name.lower(): p for p in entries if p.is_file() and not p.is_symlink()}
    for name, path in sorted(files.items()):
        stem = name[:-4] if name.endswith(".csv") else None
        if stem not in wanted and not name.startswith(".") and name != "manifest.json":
            report.findings.append(Finding(
                severity="warning", rule="unknown_file", table="", file=path.name,
                message=f"{path.name} is not a table of study {study.study_id}; it was ignored",
                hint=f"expected files: {', '.join(t + '.csv' for t in wanted)}",
            ))
    sizes = [files[f"{t}.csv"].stat().st_size for t in wanted if f"{t}.csv" in files]
    csv_bytes = sum(n for n in sizes if n <= request.max_file_bytes)  # a file over the limit is refused unread
    parts = request.parts or parts_for(csv_bytes, request.memory_mb)
    if parts > 1:
        try:
            check_partitionable(dictionary)
        except ValueError as exc:
            log.warning("%s", exc)
            parts = 1
    store = PartStore(parts, dictionary, wanted, folder=request.workdir)
    try:
        _read_all(request, dictionary, study, wanted, files, store, report, progress)
        if not report.unusable:
            waited = time.perf_counter()
            gx_ready.join()
            report.steps["gx"] = report.steps.get("gx", 0.0) + time.perf_counter() - waited
            suites = _Suites(dictionary, study, request, wanted)
            for p in range(parts):
                if parts > 1:
                    progress(f"checking part {p + 1} of {parts} (patients split by id to bound memory)")
                t0 = time.perf_counter()
                sources = store.sources(p)
                report.steps["split"] = report.steps.get("split", 0.0) + time.perf_counter() - t0
                suites.run(sources, report, progress if parts == 1 else _no_progress, part=(p + 1, parts))
                del sources
                if parts > 1:
                    gc.collect()  # GX's batches, validators and engines hold each other in cycles: free this part
    except BaseException:
        store.close()
        raise
    for table, reader in store.readers.items():
        # no verdict on a file whose rules did not run because another could not be read
        report.tables.append(TableSummary(table=table, file=reader.file, rows=reader.rows,
                                          checked=not report.unusable))
    report.tables.sort(key=lambda t: wanted.index(t.table) if t.table in wanted else len(wanted))
    if parts > 1:  # a rule about a whole column (it is missing, ...) fails in every part: say it once
        report.findings = list(dict.fromkeys(report.findings))
    if keep_sources:
        report.parts = store
    else:
        store.close()
    report.finish(time.perf_counter() - started)
    return report


def _read_all(request: ValidationRequest, dictionary: Dictionary, study: Study, wanted: list[str],
              files: dict[str, Path], store: PartStore, report: Report, progress: ProgressFn) -> None:
    """Read every file of the study block by block into the parts; unreadable files are said and dropped."""
    t0 = time.perf_counter()
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
            continue
        progress(f"reading {found.name}")
        reader = TableReader(found, t, study, request.site.conventions, max_bytes=request.max_file_bytes,
                             progress=progress)
        try:
            store.add(reader, reader.blocks())
        except UnusableInputError as exc:
            store.drop(table)
            report.unusable.append(Finding(severity="error", rule="unusable_file", table=table,
                                           file=exc.file or found.name, message=str(exc), hint=exc.hint))
            report.tables.append(TableSummary(table=table, file=found.name, rows=0, readable=False, checked=False))
            continue
        report.findings.extend(reader.findings)
        for step, seconds in reader.steps.items():
            report.steps[step] = report.steps.get(step, 0.0) + seconds
    store.seal()
    inside = sum(report.steps.get(k, 0.0) for k in ("read", "conventions"))
    report.steps["split"] = report.steps.get("split", 0.0) + max(time.perf_counter() - t0 - inside, 0.0)


def _left_join_index(keys: pd.Series, other: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """For each key, the row of `other` that holds it first (null if none), and which rows those are.

    A many-to-one left join by position with pyarrow's hash lookup: the batch keeps its rows and order, and only
    the few columns a rule needs are gathered (the whole batch is never copied)."""
    first = (other.notna() & ~other.duplicated()).to_numpy()
    rows = np.flatnonzero(first)
    side_keys = pa.array(other.to_numpy()[rows], pa.string())
    return pc.index_in(pa.array(keys, pa.string(), from_pandas=True), value_set=side_keys), rows


def _gather(column: pd.Series, rows: np.ndarray, index: pa.Array) -> pd.Series:
    values = column.iloc[rows]
    if column.dtype == "float64":
        return pd.Series(pc.take(pa.array(values.to_numpy(), pa.float64()), index).to_numpy(zero_copy_only=False),
                         dtype="float64")
    return pd.Series(pc.take(pa.array(values, pa.string(), from_pandas=True), index).to_pandas(), dtype="str")


def build_batch(dictionary: Dictionary, table: str, sources: dict[str, SourceTable]) -> pd.DataFrame:
    """The table joined (on patient_id) with what its cross-table rules need from other tables."""
    base = sources[table].frame
    columns: dict[str, pd.Series] = dict(base.items())  # the table's own columns, shared, not copied
    if "patient_id" in base.columns:
        for other, needed in join_needs(dictionary, table).items():
            src = sources.get(other)
            if src is None or "patient_id" not in src.frame.columns:
                continue
            index, rows = _left_join_index(base["patient_id"], src.frame["patient_id"])
            for c in sorted(needed | {"patient_id"}):
                if c in src.frame.columns:
                    columns[joined_name(other, c)] = _gather(src.frame[c], rows, index)
    batch = pd.DataFrame(columns, copy=False)
    for rule in dictionary.rules_for(table):
        if rule.kind == "age_between" and rule.other_table and rule.other_column:
            birth = joined_name(rule.other_table, rule.other_column)
            if birth in batch.columns and rule.column in batch.columns:
                batch[AGE_COLUMN] = (batch[rule.column] - batch[birth]) / 365.25
            else:
                batch[AGE_COLUMN] = np.nan
    return batch


@contextmanager
def _no_batch_fingerprint() -> Iterator[None]:
    """Great Expectations' pandas engine fingerprints every batch it loads by hashing the whole DataFrame (md5 of
    `pandas.util.hash_pandas_object`) when it is under `HASH_THRESHOLD` bytes; the fingerprint only labels the
    batch in results, and a validation loads each batch twice, so on a 1M-row export that hashing was about a
    fifth of the time. This lowers that one module constant for the duration of a validation and restores it
    (docs/decisions/0010-validation-speed-and-memory.md)."""
    from great_expectations.execution_engine import pandas_execution_engine as engine

    saved = engine.HASH_THRESHOLD
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = saved


CHEAP = {"result_format": "BOOLEAN_ONLY"}



def _failed(expectations: list[dict[str, Any]], results: Any) -> list[dict[str, Any]]:
    """The expectations (as in the suite) whose cheap-pass result failed. GX returns results in its own order (by
    column), so they are matched by type, rule and columns; if that ever did not tell two apart, all run again."""
    keys = [expectation_key(e["type"], e["kwargs"], e.get("meta") or {}) for e in expectations]
    if len(set(keys)) != len(keys):
        return expectations
    bad = {result_key(r) for r in results if not r.success}
    return [e for e, k in zip(expectations, keys, strict=True) if k in bad]


class _Suites:
    """The study's suites in one Great Expectations context, run on each part of an export in turn."""

    def __init__(self, dictionary: Dictionary, study: Study, request: ValidationRequest, tables: list[str]) -> None:
        _quiet_gx()
        import great_expectations as gx

        self.gx, self.dictionary = gx, dictionary
        self.wording = Context(conventions=request.site.conventions, site_id=request.site.site_id,
                               study_id=study.study_id, upload_date=request.upload_date)
        self.params = {"site_id": [request.site.site_id],
                       "upload_date": float((pd.Timestamp(request.upload_date) - pd.Timestamp("1970-01-01")).days)}
        self.suites = {t: load_suite(dictionary, study, t) for t in tables}

    def run(self, sources: dict[str, SourceTable], report: Report, progress: ProgressFn,
            part: tuple[int, int] = (1, 1)) -> None:
        gx, steps = self.gx, report.steps
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False, "metric_calculations": False}  # type: ignore
        batch_def = context.data_sources.add_pandas("export").add_dataframe_asset(
            "table").add_batch_definition_whole_dataframe("whole")
        full = {"result_format": "COMPLETE", "unexpected_index_column_names": [LINE]}
        with _no_batch_fingerprint():
            for table, src in sources.items():
                if not src.present or not src.rows:
                    continue
                progress(f"validating {src.file} ({src.rows:,} rows)")
                t1 = time.perf_counter()
                batch_frame = build_batch(self.dictionary, table, sources)
                t2 = time.perf_counter()
                suite_dict = self.suites[table]
                batch = batch_def.get_batch(batch_parameters={"dataframe": batch_frame})
                # A cheap pass says which expectations fail; only those run again for every failing row's line.
                cheap = batch.validate(gx.ExpectationSuite(**suite_dict), expectation_parameters=self.params,
                                       result_format=CHEAP)
                failed = _failed(suite_dict["expectations"], cheap.results)
                results = []
                if failed:
                    detail = gx.ExpectationSuite(**{**suite_dict, "name": suite_dict["name"] + ".failed",
                                                    "expectations": failed})
                    results = batch.validate(detail, expectation_parameters=self.params, result_format=full).results
                t3 = time.perf_counter()
                report.findings.extend(_findings_from(results, src, sources, self.wording))
                report.gx_results.append(DocsEntry(file=src.file, part=part[0], parts=part[1],
                                                   result=for_docs(cheap, results)))
                t4 = time.perf_counter()
                for step, seconds in (("joins", t2 - t1), ("gx", t3 - t2), ("findings", t4 - t3)):
                    steps[step] = steps.get(step, 0.0) + seconds


def _findings_from(results: Any, src: SourceTable, sources: dict[str, SourceTable],
                   wording: Context | None = None) -> list[Finding]:
    out: list[Finding] = []
    for res in results:
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
