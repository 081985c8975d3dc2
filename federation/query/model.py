"""The query model: what an analyst may ask, instead of raw SQL.

A query names a study, a unit table (`patients`: one row per patient with
its diagnosis and outcome; `adverse_events` or `treatments`: one row per
event, with the patient's characteristics), filters on allowed columns,
"exists" filters on events of the patient, group-by dimensions and one
statistic. Columns and values are checked against the allow-list and the
harmonized schema before anything runs; SQL is generated from the model
with bound parameters only.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Statistic = Literal["count", "crosstab", "sum", "mean", "variance", "quantiles", "proportion", "km", "cif",
                    "logistic", "cox"]
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "present"]  # present: the column has a value (True)
EventTable = Literal["adverse_events", "treatments", "biomarkers", "late_effects", "quality_of_life"]
UnitTable = Literal["patients", "adverse_events", "treatments", "biomarkers", "late_effects", "quality_of_life"]
UNIT_TABLES = ("patients", "adverse_events", "treatments", "biomarkers", "late_effects", "quality_of_life")


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field(max_length=64)
    op: Op
    value: Any

    @field_validator("value")
    @classmethod
    def _scalar_or_list(cls, v: Any) -> Any:
        if any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, list) else [v])):
            raise ValueError("a filter value must be a finite number")
        if isinstance(v, str) and len(v) > 200:
            raise ValueError("a filter value is at most 200 characters")
        if isinstance(v, list):
            if len(v) > 50:
                raise ValueError("an 'in' list has at most 50 values")
            if not all(isinstance(x, str | int | float | bool) and len(str(x)) <= 200 for x in v):
                raise ValueError("list values must be strings, numbers or booleans")
            return v
        if not isinstance(v, str | int | float | bool):
            raise ValueError("a filter value must be a string, a number or a boolean")
        return v

    @model_validator(mode="after")
    def _present_is_true(self) -> Filter:
        if self.op == "present" and self.value is not True:
            raise ValueError("'present' keeps the rows where the column has a value: give it the value true")
        return self

    def describe(self) -> str:
        return f"{self.column} is present" if self.op == "present" else f"{self.column} {self.op} {self.value!r}"


class Exists(BaseModel):
    """Keep patients that have at least one row in `table` matching `where`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    table: EventTable
    where: list[Filter] = Field(default_factory=list, max_length=20)  # as many as a query's filters (its shadow)


Endpoint = Literal["efs", "os", "late_effect"]
# the endpoints whose events have causes (cumulative incidence): the patient-level column that names the cause
CAUSE_COLUMN = {"efs": "first_event", "late_effect": "first_late_effect"}


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    study_id: str = Field(max_length=64)
    table: UnitTable = "patients"
    statistic: Statistic = "count"
    filters: list[Filter] = Field(default_factory=list, max_length=20)
    exists: list[Exists] = Field(default_factory=list, max_length=5)
    group_by: list[str] = Field(default_factory=list, max_length=3)
    column: str | None = None  # the variable of sum, mean, variance, quantiles, proportion
    value: Any = None  # proportion: the share of rows where column == value
    probs: list[float] = Field(default_factory=lambda: [0.5], max_length=9)  # quantiles
    endpoint: Endpoint = "os"  # km, cif (efs, late_effect), cox
    cause: list[str] = Field(default_factory=list, max_length=10)  # cif: first events of interest; others compete
    grid_days: float = 30.4375  # km: monthly grid by default
    horizon_days: float = 3652.5  # km: ten years
    outcome: Filter | None = None  # logistic: y = 1 where the filter holds
    covariates: list[str] = Field(default_factory=list, max_length=10)  # logistic and Cox
    sites: list[str] | None = Field(default=None, max_length=200)  # default: every site with published data
    versions: dict[str, int] | None = Field(default=None, max_length=200)  # pin site -> version (reproduce)
    allow_partial: bool = False

    @field_validator("value")
    @classmethod
    def _finite_value(cls, v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("the value must be a finite number")
        return v

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def describe(self) -> str:
        what = {"km": f"Kaplan-Meier {self.endpoint.upper()}",
                "cif": f"cumulative incidence of {'/'.join(self.cause) or '?'} (other first events competing)"
                       + (" as the first late effect" if self.endpoint == "late_effect" else ""),
                "logistic": "logistic regression",
                "cox": f"Cox regression ({self.endpoint.upper()})"}.get(
            self.statistic, self.statistic)
        parts = [f"{what} of {self.table}"]
        if self.statistic == "logistic" and self.outcome is not None:
            parts.append(f"for the outcome {self.outcome.describe()}")
        if self.statistic in ("logistic", "cox") and self.covariates:
            parts.append("on " + ", ".join(self.covariates))
        if self.column:
            parts.append(f"({self.column})")
        if self.group_by:
            parts.append("by " + " x ".join(self.group_by))
        if self.filters:
            parts.append("where " + " and ".join(f.describe() for f in self.filters))
        for e in self.exists:
            parts.append(f"with any {e.table}" + (" where " + " and ".join(f.describe() for f in e.where)
                                                    if e.where else ""))
        return f"{self.study_id}: " + " ".join(parts)
