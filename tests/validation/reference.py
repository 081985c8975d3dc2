"""The validation path as it was before it was made fast and bounded (commit 20ff98d), kept as a reference.

Simple and slow on purpose: every file read whole with Python's csv module, site conventions applied with
pandas on object columns (`Series.map`, `pandas.to_datetime`), cross-table columns joined with pandas
merges, and each whole table validated by its Great Expectations suite in one COMPLETE pass. The same
suites and the same translation of GX results into findings (`runner._findings_from`) are used, so a
difference in findings is a difference in reading, joining, splitting or the two-pass run.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from federation.config import SiteConfig
from federation.schema import load_dictionary, load_registry
from federation.validation.findings import Finding
from federation.validation.reader import (
    INVALID_SUFFIX,
    LINE,
    SourceTable,
    _canonical_codes,
    _code_key,
    date_to_day,
)
from federation.validation.runner import _findings_from, _quiet_gx
from federation.validation.suites import AGE_COLUMN, join_needs, joined_name, load_suite, tables_of
from tests.validation.helpers import AS_OF


def _read(path: Path, table: str, site: SiteConfig, study_id: str) -> SourceTable:
    registry = load_registry()
    study = registry.study(study_id)
    t = load_dictionary(study.schema_version).table(table)
    conv = site.conventions
    text = path.read_bytes().decode("utf-8-sig" if conv.encoding.lower().replace("_", "-") == "utf-8"
                                    else conv.encoding)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=conv.delimiter, strict=False)
    header = next(reader)
    rows, lines, prev = [], [], reader.line_num
    for row in reader:
        start, prev = prev + 1, reader.line_num
        if any(f.strip() for f in row) and len(row) == len(header):
            rows.append(row)
            lines.append(start)
    renames = {k.strip().lower(): v for k, v in conv.column_renames.get(table, {}).items()}
    positions, local_names = {}, {}
    for pos, name in enumerate(header):
        target = renames.get(name.strip().lower(), name.strip().lower())
        if target in t.columns and target not in positions:
            positions[target], local_names[target] = pos, name.strip()
    raw = pa.table({c: pa.array([r[p] for r in rows], pa.string()) for c, p in positions.items()})
    frame = pd.DataFrame({LINE: np.asarray(lines, dtype="int64")})
    for name, column in t.columns.items():
        if name not in positions:
            if not column.required:
                frame[name] = pd.Series([None] * len(rows), dtype="object")
                local_names.setdefault(name, name)
            continue
        series = pd.Series([r[positions[name]].strip() or None for r in rows], dtype="object")
        if column.type == "string":
            frame[name] = series
        elif column.type == "code":
            canon = _canonical_codes(study.codes_for(column) or [])
            local = {_code_key(k): v for k, v in conv.code_maps.get(table, {}).get(name, {}).items()}
            mapping = {}
            for v in series.dropna().unique():
                mine = local.get(_code_key(v), v)
                mapping[v] = canon.get(_code_key(mine).upper(), mine)
            frame[name] = series.map(mapping)
        else:
            if column.type == "date":
                parsed = date_to_day(series, conv.date_formats)
            else:
                text_values = series.str.replace(",", ".") if (
                    column.type == "decimal" and conv.decimal_mark == ",") else series
                pattern = r"^[+-]?[0-9]+$" if column.type == "int" else r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)$"
                ok = text_values.str.match(pattern).fillna(False).astype(bool)
                parsed = pd.to_numeric(text_values.where(ok), errors="coerce").astype("float64")
            frame[name] = parsed
            frame[name + INVALID_SUFFIX] = series.where(series.notna() & parsed.isna(), None)
    return SourceTable(table=table, file=path.name, frame=frame, raw=raw, lines=np.asarray(lines, dtype="int64"),
                       local_names=local_names)


def _batch(table: str, sources: dict[str, SourceTable], study_id: str) -> pd.DataFrame:
    dictionary = load_dictionary(load_registry().study(study_id).schema_version)
    batch = sources[table].frame
    for other, columns in join_needs(dictionary, table).items():
        if other not in sources:
            continue
        have = sorted(columns | {"patient_id"})
        side = sources[other].frame[have].dropna(subset=["patient_id"]).drop_duplicates("patient_id")
        side = side.rename(columns={c: joined_name(other, c) for c in have})
        side["__key"] = side[joined_name(other, "patient_id")]
        batch = batch.merge(side, how="left", left_on="patient_id", right_on="__key", validate="many_to_one")
        batch = batch.drop(columns="__key")
    for rule in dictionary.rules_for(table):
        if rule.kind == "age_between" and rule.other_table and rule.other_column:
            batch[AGE_COLUMN] = (batch[rule.column] - batch[joined_name(rule.other_table, rule.other_column)]) / 365.25
    return batch


def reference_findings(folder: Path, site: SiteConfig, study_id: str) -> list[Finding]:
    """The findings of the suites (not of reading) on a readable export with every file present."""
    _quiet_gx()
    import great_expectations as gx

    study = load_registry().study(study_id)
    dictionary = load_dictionary(study.schema_version)
    tables = tables_of(dictionary, study)
    sources = {t: _read(folder / f"{t}.csv", t, site, study_id) for t in tables}
    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas("reference").add_dataframe_asset("table")
    batch_def = asset.add_batch_definition_whole_dataframe("whole")
    params = {"site_id": [site.site_id], "upload_date": float((pd.Timestamp(AS_OF) - pd.Timestamp("1970-01-01")).days)}
    out: list[Finding] = []
    for table in tables:
        batch = batch_def.get_batch(batch_parameters={"dataframe": _batch(table, sources, study_id)})
        result = batch.validate(gx.ExpectationSuite(**load_suite(dictionary, study, table)),
                                expectation_parameters=params,
                                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [LINE]})
        out.extend(_findings_from(result.results, sources[table], sources))
    return out
