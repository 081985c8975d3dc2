"""Great Expectations suites generated from the data dictionary.

One suite per (dictionary version, study, table). Each suite runs on the
table's *batch*: the table in dictionary terms (see reader.py) joined on
patient_id with the columns of other tables its cross-table rules need, so
that per-table and cross-table rules are all GX expectations and land in
the same report. Every expectation carries in `meta` the rule id, the
dictionary column to report at, a plain-language message and a hint.
The suites are committed as JSON under expectations/ and a test fails when
they drift from schemas/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from federation.paths import EXPECTATIONS_DIR
from federation.schema import (
    Column,
    Condition,
    Dictionary,
    Rule,
    Study,
    Table,
    is_package_registry,
    load_registry,
    registry_dir,
    studies_label,
)
from federation.validation.reader import EPOCH, INVALID_SUFFIX

log = logging.getLogger(__name__)

AGE_COLUMN = "__age_years"
GX_VERSION_KEY = "great_expectations_version"


def joined_name(table: str, column: str) -> str:
    """Name of a column of another table inside a batch."""
    return f"{table}__{column}"


def _day(date: Any) -> float:
    import pandas as pd

    return float((pd.Timestamp(date) - EPOCH).days)


def _expectation(type_: str, kwargs: dict[str, Any], *, rule: str, column: str, message: str, hint: str,
                 kind: str, **meta: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "kwargs": kwargs,
        "meta": {"rule": rule, "column": column, "kind": kind, "message": message, "hint": hint, **meta},
    }


def _column_expectations(table: Table, column: Column, study: Study, dictionary: Dictionary) -> list[dict[str, Any]]:
    c = column.name
    out: list[dict[str, Any]] = []

    def add(type_: str, kwargs: dict[str, Any], rule: str, message: str, hint: str, **meta: Any) -> None:
        out.append(_expectation(type_, {"column": c, **kwargs} if "column" not in kwargs else kwargs,
                                rule=rule, column=c, message=message, hint=hint, kind="column", **meta))

    if column.required is True:
        add("expect_column_to_exist", {}, "required_column",
            f"required column {c} is missing", f"add the column {c} (or map your column name to it "
            f"under conventions.column_renames.{table.name})")
        add("expect_column_values_to_not_be_null", {}, "required",
            f"{c} is required but empty", f"fill in {c}")
    if column.type in ("date", "int", "decimal"):
        what = {"date": "a date in the site's declared date format", "int": "a whole number",
                "decimal": "a number"}[column.type]
        hint = {"date": "write the date in the declared format (conventions.date_formats); "
                        "check that the day exists in that month",
                "int": "write a whole number without decimals or units",
                "decimal": "write a number, using the declared decimal mark and no units"}[column.type]
        out.append(_expectation("expect_column_values_to_be_null", {"column": c + INVALID_SUFFIX},
                                rule=f"type_{column.type}", column=c, kind="column",
                                message=f"{c} is not {what}", hint=hint))
    codes = study.codes_for(column)
    if codes is not None:
        shown = ", ".join(codes)
        add("expect_column_values_to_be_in_set", {"value_set": codes}, "code_list",
            f"{c} is not one of the allowed codes ({shown})",
            f"use one of {shown}, or map your local code under conventions.code_maps.{table.name}.{c}")
    if column.pattern:
        add("expect_column_values_to_match_regex", {"regex": column.pattern}, "pattern",
            f"{c} does not have the required form (e.g. {column.example})",
            f"write {c} like {column.example}")
    if column.not_spreadsheet:
        add("expect_column_values_to_not_match_regex", {"regex": dictionary.spreadsheet_mangled_pattern},
            "spreadsheet_mangled", f"{c} looks like a number re-formatted by a spreadsheet (e.g. 1.23E+05)",
            f"format the {c} column as text before exporting, so ids keep all their characters")
    if column.unique:
        add("expect_column_values_to_be_unique", {}, "unique",
            f"{c} appears more than once in {table.name}", f"each {c} may appear only once in {table.name}")
    if column.min is not None or column.max is not None:
        rng = f"{'above' if column.strict_min else 'at least'} {column.min:g}" if column.min is not None else ""
        if column.max is not None:
            rng = f"{column.min:g} to {column.max:g}" if column.min is not None else f"at most {column.max:g}"
        kwargs: dict[str, Any] = {"min_value": column.min, "max_value": column.max}
        if column.strict_min:
            kwargs["strict_min"] = True
        add("expect_column_values_to_be_between", kwargs, "range", f"{c} must be {rng}", f"check {c}")
    if column.equals_study:
        add("expect_column_values_to_be_in_set", {"value_set": [study.study_id]}, "study_id",
            f"{c} is not the study being uploaded ({study.study_id})",
            "upload each study separately, with the study id given on upload")
    if column.equals_param:
        add("expect_column_values_to_be_in_set", {"value_set": {"$PARAMETER": column.equals_param}},
            "site_id", f"{c} is not the uploading site's id",
            "every row must carry your own site id; a site cannot upload for another")
    if column.not_after_param:
        add("expect_column_values_to_be_between", {"max_value": {"$PARAMETER": column.not_after_param}},
            "not_after_upload", f"{c} is after the upload date", f"{c} cannot be in the future; check the date")
    if column.within == "accrual_window":
        add("expect_column_values_to_be_between",
            {"min_value": _day(study.accrual.first), "max_value": _day(study.accrual.last)},
            "accrual_window",
            f"{c} is outside the study's accrual window ({study.accrual.first} to {study.accrual.last})",
            "check the date and its format; patients enrolled outside the window belong to no study upload",
            first=str(study.accrual.first), last=str(study.accrual.last))
    return out


def _batch_column(rule: Rule, which: str) -> str:
    """The name in the batch of rule.column (which='column') or rule.other."""
    if which == "column":
        return rule.column
    assert rule.other is not None
    if rule.cross_table:
        assert rule.other_table and rule.other_column
        return joined_name(rule.other_table, rule.other_column)
    return rule.other_column or rule.other


def _condition(cond: Condition, table: str, negate: bool = False) -> str:
    col = cond.column
    if cond.present:
        return f"{col} != {col}" if negate else f"{col} == {col}"
    if cond.equals is not None:
        value = json.dumps(cond.equals)
        return f"{col} != {value}" if negate else f"{col} == {value}"
    if cond.not_equals is not None:
        value = json.dumps(cond.not_equals)
        return f"{col} == {value}" if negate else f"({col} == {col}) & ({col} != {value})"
    if cond.not_in is not None:
        values = json.dumps(cond.not_in)
        return f"{col} in {values}" if negate else f"({col} == {col}) & ({col} not in {values})"
    raise ValueError(f"empty condition in a rule of {table}")


def _rule_expectation(rule: Rule) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if rule.when is not None:
        negate = rule.kind == "absent_unless"
        kwargs = {"row_condition": _condition(rule.when, rule.table, negate), "condition_parser": "pandas"}
    meta = {"rule": rule.id, "column": rule.column, "kind": "cross_table" if rule.cross_table else "row",
            "message": rule.message, "hint": rule.hint}
    if rule.other:
        meta["other"] = rule.other

    def exp(type_: str, kw: dict[str, Any]) -> dict[str, Any]:
        return {"type": type_, "kwargs": {**kw, **kwargs}, "meta": meta}

    col, other = rule.column, _batch_column(rule, "other") if rule.other else None
    pair = {"ignore_row_if": "either_value_is_missing"}
    if rule.kind == "required_if":
        return exp("expect_column_values_to_not_be_null", {"column": col})
    if rule.kind == "absent_unless":
        return exp("expect_column_values_to_be_null", {"column": col})
    if rule.kind == "not_before":
        return exp("expect_column_pair_values_a_to_be_greater_than_b",
                   {"column_A": col, "column_B": other, "or_equal": True, **pair})
    if rule.kind == "not_after":
        return exp("expect_column_pair_values_a_to_be_greater_than_b",
                   {"column_A": other, "column_B": col, "or_equal": True, **pair})
    if rule.kind in ("references", "has_row_in"):
        return exp("expect_column_values_to_not_be_null", {"column": other})
    if rule.kind == "age_between":
        return exp("expect_column_values_to_be_between",
                   {"column": AGE_COLUMN, "min_value": rule.min_years, "max_value": rule.max_years,
                    "strict_max": True})
    if rule.kind == "value_in":
        return exp("expect_column_values_to_be_in_set", {"column": other, "value_set": rule.values})
    if rule.kind == "equals":
        return exp("expect_column_pair_values_to_be_equal", {"column_A": col, "column_B": other, **pair})
    if rule.kind == "pair_in":
        return exp("expect_column_pair_values_to_be_in_set",
                   {"column_A": other, "column_B": col, "value_pairs_set": [list(p) for p in rule.pairs], **pair})
    raise ValueError(f"rule kind {rule.kind} has no expectation")


def suite_name(dictionary: Dictionary, study: Study, table: str) -> str:
    return f"v{dictionary.schema_version}.{study.study_id}.{table}"


def build_suite(dictionary: Dictionary, study: Study, table: str) -> dict[str, Any]:
    """The GX 1.x suite (as its JSON dict) for one table of one study."""
    t = dictionary.table(table)
    expectations: list[dict[str, Any]] = []
    for column in t.columns.values():
        expectations.extend(_column_expectations(t, column, study, dictionary))
    for rule in dictionary.rules_for(table):
        expectations.append(_rule_expectation(rule))
    for e in expectations:
        e.setdefault("severity", "critical")
    return {
        "name": suite_name(dictionary, study, table),
        "id": None,
        "expectations": expectations,
        "meta": {
            GX_VERSION_KEY: _gx_version(),
            "generated_from": f"schemas/v{dictionary.schema_version}/dictionary.yaml and {studies_label()}",
            "schema_version": dictionary.schema_version,
            "study_id": study.study_id,
            "table": table,
            "note": "generated by `federation schema generate`; do not edit by hand",
        },
        "notes": None,
    }


def _gx_version() -> str:
    from importlib.metadata import version

    return version("great_expectations")


def suite_path(dictionary: Dictionary, study: Study, table: str, root: Path = EXPECTATIONS_DIR) -> Path:
    return root / f"v{dictionary.schema_version}" / study.study_id / f"{table}.json"


def tables_of(dictionary: Dictionary, study: Study) -> list[str]:
    """The tables a study collects: the required ones and its optional ones."""
    return [n for n, t in dictionary.tables.items() if t.required or n in study.optional_tables]


def render_suite(suite: dict[str, Any]) -> str:
    return json.dumps(suite, indent=2, sort_keys=False) + "\n"


def suites_root() -> Path:
    """Where the committed suites of the registry in use are: `<registry>/expectations/` for a deployment's
    registry, the package's `expectations/` for its example registry."""
    return EXPECTATIONS_DIR if is_package_registry() else registry_dir() / "expectations"


def load_suite(dictionary: Dictionary, study: Study, table: str, root: Path | None = None) -> dict[str, Any]:
    """The suite generated from the dictionary and the registry in use. A committed copy that differs (the
    registry changed, `federation schema generate` was not run) is stale: said in a warning, not used."""
    built = build_suite(dictionary, study, table)
    path = suite_path(dictionary, study, table, root or suites_root())
    if path.exists() and path.read_text(encoding="utf-8") != render_suite(built):
        log.warning("%s is stale: the registry in use (%s) and dictionary v%s give another suite for %s; "
                    "validation uses the one they give. Regenerate the committed suites: `federation schema "
                    "generate%s`", path, load_registry().source, dictionary.schema_version, suite_name(
                        dictionary, study, table), "" if is_package_registry() else f" --registry {registry_dir()}")
    return built


def join_needs(dictionary: Dictionary, table: str) -> dict[str, set[str]]:
    """Columns of other tables that the rules of `table` need in its batch."""
    needs: dict[str, set[str]] = {}
    for rule in dictionary.rules_for(table):
        if rule.cross_table and rule.other_table and rule.other_column:
            needs.setdefault(rule.other_table, set()).add(rule.other_column)
        if rule.kind == "age_between" and rule.other_table and rule.other_column:
            needs.setdefault(rule.other_table, set()).add(rule.other_column)
    return needs
