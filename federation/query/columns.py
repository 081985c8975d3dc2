"""Which columns a query may touch, and how: the allow-list of the query policy and the harmonized types.

Checked twice on purpose: by the query service before it sends anything, and by every site node before
it answers (a node never trusts that a task was checked).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from federation.exceptions import ConfigurationError
from federation.query.guard import Guard, QueryRefused
from federation.query.policy import NEVER_QUERYABLE, QueryPolicy
from federation.schema import load_dictionary, load_registry

if TYPE_CHECKING:
    from federation.query.model import Filter

# patient-level columns of diagnoses and outcomes joined onto each patient (unit table `patients`)
PATIENT_LEVEL = {
    "diagnoses": ["stage", "histology_icdo3", "topography_icdo3", "histology_risk", "risk_group", "diagnosis_day"],
    "outcomes": ["vital_status", "first_event", "last_contact_day", "death_day", "first_event_day"],
}
# patient characteristics joined onto each event row (unit tables `adverse_events`, `treatments`)
EVENT_PATIENT_COLUMNS = ["sex", "arm", "age_group", "stage", "histology_risk", "risk_group"]
GROUPABLE = {"string", "bool", "int8", "int16"}
NUMERIC = {"int8", "int16", "int32", "float64"}
CONTINUOUS = NUMERIC - GROUPABLE  # filtered only at the policy's cut points


@lru_cache(maxsize=64)
def unit_columns(study_id: str, table: str) -> dict[str, str]:
    """Column -> harmonized Arrow type name of a unit table (patients joined with diagnosis and outcome)."""
    d = load_dictionary(load_registry().study(study_id).schema_version)
    h = d.harmonized
    types = {c.name: c.type for c in h.common}
    if table == "patients":
        types.update({c.name: c.type for c in h.tables["patients"]})
        for t, cols in PATIENT_LEVEL.items():
            types.update({c.name: c.type for c in h.tables[t] if c.name in cols})
    else:
        types.update({c.name: c.type for c in h.tables[table]})
        patients = unit_columns(study_id, "patients")
        types.update({c: patients[c] for c in EVENT_PATIENT_COLUMNS})
    return types


class ComparisonTypeGuard(Guard):
    """A filter compares a column only with values of its own type (no conversion errors quoting a row)."""


def check_value(study_id: str, table: str, column: str, value: object) -> None:
    """Refuse a comparison value (or list of values) whose type is not the column's: the database would
    otherwise try to convert the column's values and could name one of them in its error."""
    if not ComparisonTypeGuard.enabled():
        return
    kind = unit_columns(study_id, table).get(column)
    expected: tuple[type, ...] = (str,) if kind == "string" else (bool,) if kind == "bool" else (int, float)
    word = {"string": "text", "bool": "true or false"}.get(kind or "", "a number")
    for v in value if isinstance(value, list) else [value]:
        if not isinstance(v, expected) or (kind != "bool" and isinstance(v, bool)):
            raise QueryRefused(f"{column} is {kind}: compare it with {word}, not {v!r}")


class CutPointGuard(Guard):
    """A continuous column is compared only with < or >= at a cut point the policy declares (no arbitrary threshold)."""


def _point(x: float) -> str:
    return f"{x:g}"


def check_comparison(policy: QueryPolicy, study_id: str, table: str, column: str, op: str, value: object) -> None:
    """One comparison of a filter, an outcome or a proportion: the value's type, and for a continuous column
    a declared cut point with `<` or `>=` (so a subset is always a union of declared bins)."""
    check_value(study_id, table, column, value)
    if not CutPointGuard.enabled() or unit_columns(study_id, table).get(column) not in CONTINUOUS:
        return
    grid = policy.cut_points.get(column)
    if grid is None:
        raise QueryRefused(f"{column} is continuous and the query policy declares no cut points for it, so it "
                           "cannot be filtered on", f"summarize it instead (--column {column}), or ask the "
                           "consortium to declare cut points for it")
    first = grid.points[min(1, len(grid.points) - 1)]
    if op not in ("<", ">="):
        raise QueryRefused(f"{column} is continuous: compare it with < or >= at a declared cut point "
                           f"({grid.describe()}), not with {op}",
                           f"e.g. '{column} < {_point(first)}' and '{column} >= {_point(first)}'")
    assert isinstance(value, int | float)
    if not grid.on_grid(float(value)):
        near = " or ".join(_point(x) for x in grid.nearest(float(value)))
        raise QueryRefused(f"{_point(float(value))} is not a declared cut point of {column} ({grid.describe()})",
                           f"use {near}")


class KmGridGuard(Guard):
    """A Kaplan-Meier grid is one the policy declares (months, quarters, ...), never one the analyst sets."""


def check_km_grid(policy: QueryPolicy, grid_days: float, horizon_days: float) -> None:
    if not KmGridGuard.enabled():
        return
    d = policy.disclosure
    if not any(abs(grid_days - g) < 1e-9 for g in d.km_grids_days):
        raise QueryRefused(f"a Kaplan-Meier grid of {grid_days:g} days is not one the policy declares",
                           "leave grid_days unset (months), or use one of " + ", ".join(f"{g:g}"
                                                                                      for g in d.km_grids_days))
    if horizon_days > d.km_max_horizon_days:
        raise QueryRefused(f"the horizon is beyond the policy's {d.km_max_horizon_days:g} days",
                           f"use a horizon of at most {d.km_max_horizon_days:g} days")


def check_split(policy: QueryPolicy, study_id: str, table: str, f: Filter) -> None:
    """A split the query service asks a site to evaluate for the differencing check: a comparison a query may
    make (a proportion's value, a model's outcome), or a Kaplan-Meier number at risk or events before a
    time on a grid the policy declares (`endpoint_days >= t` or `< t`, t a multiple of a declared grid
    within the horizon). Nothing else: no arbitrary threshold reaches a site this way either."""
    if f.column.endswith("_days") and f.column[:-5] in ("efs", "os") and f.op in (">=", "<"):
        if not isinstance(f.value, int | float) or isinstance(f.value, bool):
            raise QueryRefused(f"a split on {f.column} needs a number of days")
        d = policy.disclosure
        on_grid = any(abs(f.value / g - round(f.value / g)) < 1e-9 for g in d.km_grids_days)
        if KmGridGuard.enabled() and not (on_grid and 0 < f.value <= d.km_max_horizon_days + max(d.km_grids_days)):
            raise QueryRefused(f"{f.value:g} days is not a Kaplan-Meier time the policy declares")
        return
    check_comparison(policy, study_id, table, f.column, f.op, f.value)


def require(policy: QueryPolicy, study_id: str, table: str, column: str, what: str,
            kinds: set[str] | None = None) -> None:
    """Refuse `column` for `what` unless the policy allows it on `table` (and its type is one of `kinds`)."""
    if column in NEVER_QUERYABLE:
        raise QueryRefused(f"{column} is an identifier or free text and is never queryable")
    try:
        load_registry().study(study_id)
        allowed = set(policy.allowed(study_id, table))
    except ConfigurationError as exc:
        raise QueryRefused(str(exc)) from None
    if column not in allowed:
        raise QueryRefused(f"{column} is not a queryable column of {table} ({what})",
                      f"queryable columns: {', '.join(sorted(allowed))}")
    kind = unit_columns(study_id, table).get(column)
    if kinds and kind not in kinds:
        raise QueryRefused(f"{column} cannot be used for {what} (it is {kind})")
