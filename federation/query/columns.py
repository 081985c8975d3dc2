"""Which columns a query may touch, and how: the allow-list of the query policy and the harmonized types.

Checked twice on purpose: by the query service before it sends anything, and by every site node before
it answers (a node never trusts that a task was checked).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, get_args

from federation.exceptions import ConfigurationError
from federation.query.guard import Guard, QueryRefused
from federation.query.policy import NEVER_QUERYABLE, QueryPolicy
from federation.schema import Column, HarmonizedColumn, load_dictionary, load_registry

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
    return version_columns(load_registry().study(study_id).schema_version, table)


@lru_cache(maxsize=64)
def version_columns(version: str, table: str) -> dict[str, str]:
    """`unit_columns` of data harmonized with dictionary `version` (a site still on an earlier one)."""
    d = load_dictionary(version)
    h = d.harmonized
    types = {c.name: c.type for c in h.common}
    if table == "patients":
        types.update({c.name: c.type for c in h.tables["patients"]})
        for t, cols in PATIENT_LEVEL.items():
            types.update({c.name: c.type for c in h.tables[t] if c.name in cols})
    elif table not in h.tables:
        return {}  # not collected in this study's dictionary (`require` says so)
    else:
        types.update({c.name: c.type for c in h.tables[table]})
        patients = version_columns(version, "patients")
        types.update({c: patients[c] for c in EVENT_PATIENT_COLUMNS})
    return types


def check_collected(study_id: str, tables: list[str]) -> None:
    """Refuse a unit table (or an exists filter's table) that the study's data dictionary does not have."""
    for table in tables:
        if table != "patients" and not unit_columns(study_id, table):
            version = load_registry().study(study_id).schema_version
            raise QueryRefused(f"{table} is not collected in {study_id} (data dictionary v{version} has no table "
                               f"{table})", "ask a study on a dictionary that has it (e.g. v2)")


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
    a declared cut point with `<` or `>=` (so a subset is always a union of declared bins). `present` (the
    column has a value) is every bin and every code."""
    if op == "present":
        return
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
    from federation.query.model import Endpoint

    if f.column.endswith("_days") and f.column[:-5] in get_args(Endpoint) and f.op in (">=", "<"):
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
    if kind is None:
        version = load_registry().study(study_id).schema_version
        what_is_missing = f"such column in {table}" if unit_columns(study_id, table) else f"table {table}"
        raise QueryRefused(f"{column} is not collected in {study_id} (data dictionary v{version} has no "
                           f"{what_is_missing})")
    if kinds and kind not in kinds:
        raise QueryRefused(f"{column} cannot be used for {what} (it is {kind})")


MISSING = "(missing)"  # a group value where the column is empty (as it leaves a site)


class EmptyCellGuard(Guard):
    """Groups come from the dictionary, never from the data: every declared level of a group-by column is in
    every result (an absent level is a cell of 0, hidden like a cell of 1..k-1), and a column without a closed
    list of values (ICD-O-3 codes, MedDRA codes, site_id) cannot be grouped by."""


def declared_levels(policy: QueryPolicy | None, study_id: str, table: str, column: str,
                    filters: list[Filter] | tuple[Filter, ...] = ()) -> list[object] | None:
    """The groups of `column` in `table`, from the dictionary, the study's registry entry and the query policy
    alone (never from the data): the dictionary's values in its order, `MISSING` last where the column may be
    empty, or the policy's `group_levels` for the column (a subset of them); narrowed by the query's own
    filters on that column (`arm != NR` leaves three arms). None: no closed list (free codes)."""
    full = dictionary_levels(study_id, table, column)
    offered = policy.offered_levels(study_id, column) if policy is not None else None
    if full is None or offered is None:
        levels = full
    else:
        unknown = [v for v in offered if v not in full]
        if unknown:
            raise QueryRefused(f"the query policy offers groups of {column} that the data dictionary does not "
                               f"declare: {unknown}", "ask the data team to correct group_levels")
        levels = list(offered)
    if levels is None:
        return None
    for f in filters:
        if f.column == column:
            levels = [v for v in levels if v != MISSING and holds(f.op, v, f.value)]
    return levels


def dictionary_levels(study_id: str, table: str, column: str) -> list[object] | None:
    """Every value `column` can take in `table` by the dictionary and the study's registry entry (`MISSING`
    last where the column may be empty); None where the dictionary has no closed list."""
    levels = _dictionary_levels(study_id, table, column)
    return None if levels is None else list(levels)


@lru_cache(maxsize=4096)
def _dictionary_levels(study_id: str, table: str, column: str) -> tuple[object, ...] | None:
    study = load_registry().study(study_id)
    harmonized, source = _columns_of(study.schema_version)
    kind = unit_columns(study_id, table).get(column)
    values: list[object] | None = None
    nullable = False
    if harmonized.get(column) is not None and harmonized[column].values:
        values = list(harmonized[column].values or [])
    elif kind == "bool":
        values = [False, True]
    elif column == "enrollment_year":
        values = list(range(study.accrual.first.year, study.accrual.last.year + 1))
    elif column in source and column != "site_id":
        spec = source[column]
        nullable = spec.required is not True
        if spec.type == "code":
            base = ([a.code for a in study.arms] if spec.codes_from == "study.arms" else
                    list(study.stages) if spec.codes_from == "study.stages" else list(spec.codes or []))
            values = [*base, *(c for c in spec.extra_codes if c not in base)]
        elif spec.type == "int" and spec.min is not None and spec.max is not None:
            values = list(range(int(spec.min), int(spec.max) + 1))
    if values is None:
        return None
    return (*values, *([MISSING] if nullable else []))


@lru_cache(maxsize=8)
def _columns_of(schema_version: str) -> tuple[dict[str, HarmonizedColumn], dict[str, Column]]:
    """A dictionary's harmonized columns and its source columns, by name."""
    d = load_dictionary(schema_version)
    harmonized = {c.name: c for c in d.harmonized.common}
    for cols in d.harmonized.tables.values():
        harmonized.update({c.name: c for c in cols})
    return harmonized, {name: spec for t in d.tables.values() for name, spec in t.columns.items()}


@lru_cache(maxsize=4096)
def may_be_empty(study_id: str, table: str, column: str) -> bool:
    """Whether `column` can hold no value: an optional column of the dictionary (`X_day` columns follow their
    `X_date`), or one derived from an optional table (v2: marker status, exposures, the first late effect);
    the other derived columns (ages, EFS and OS, age groups, enrollment year) come from required ones."""
    _, source = _columns_of(load_registry().study(study_id).schema_version)
    spec = source.get(column) or (source.get(column[:-4] + "_date") if column.endswith("_day") else None)
    if spec is not None:
        return spec.required is not True
    # the columns derived from a table a site may not send (a marker status, an exposure, the first late effect)
    derived = _columns_of(load_registry().study(study_id).schema_version)[0].get(column)
    return derived is not None and bool(derived.marker or derived.exposure or derived.late_effect)


def holds(op: str, x: object, v: object) -> bool:
    try:
        return bool({"==": lambda: x == v, "!=": lambda: x != v, "in": lambda: x in v,  # type: ignore[operator]
                     "not in": lambda: x not in v, "<": lambda: x < v, "<=": lambda: x <= v,  # type: ignore[operator]
                     ">": lambda: x > v, ">=": lambda: x >= v, "present": lambda: True}[op]())  # type: ignore[operator]
    except TypeError:
        return True  # a comparison the dictionary cannot decide keeps the level


def check_groupable(policy: QueryPolicy, study_id: str, table: str, column: str) -> None:
    """A group-by column needs a closed list of values in the dictionary (see `EmptyCellGuard`)."""
    if not EmptyCellGuard.enabled():
        return
    if column == "site_id":
        raise QueryRefused("site_id cannot be grouped by: every result already shows each site's values")
    if declared_levels(policy, study_id, table, column) is None:
        raise QueryRefused(f"{column} has no closed list of values in the data dictionary, so grouping by it would "
                           "show which values occur", f"filter on the values you want instead (--where "
                           f"'{column} == ...'), or group by a coded column")
