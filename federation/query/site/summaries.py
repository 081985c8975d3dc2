"""Everything a site node can be asked, and everything it can answer: the complete list of what may
leave a site, in one file a site's security officer can review.

A request names a unit table, the analyst's filters and the summary wanted. The node checks every column
against its own copy of the query policy, runs its site guards (its own thresholds), computes the summary
with DuckDB on its published version and answers with one of the `Answer` types below. Every answer holds
counts, sums, moments, per-interval counts or model sums over many rows; no answer type has a field that
can carry a row, and anything that is not one of these requests does not parse, so the node refuses it.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from federation.query.columns import (
    GROUPABLE,
    MISSING,
    NUMERIC,
    CutPointGuard,
    check_collected,
    check_comparison,
    check_km_grid,
    check_split,
    declared_levels,
    require,
    unit_columns,
    version_columns,
)
from federation.query.guard import QueryRefused
from federation.query.model import CAUSE_COLUMN, Endpoint, Exists, Filter, UnitTable
from federation.query.policy import EffectiveThresholds, QueryPolicy
from federation.query.site import estimating
from federation.query.site.data import SiteData
from federation.query.site.sql import group_select, ident, subset, where
from federation.schema import load_registry

Label = str | bool | int | None  # one category of a groupable column; None where the value is missing
MAX_GRID_INTERVALS = 2000
MAX_THRESHOLDS = 512
MAX_EARLIER = 2000
MAX_PARAMETERS = 60


def label(v: Any) -> Label:
    """A group key value as it leaves the site: missing values become "(missing)"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, str | bool | int):
        return v
    raise QueryRefused(f"a group value of type {type(v).__name__} cannot leave a site")


# ---- answers: the only shapes that leave a site ------------------------------------------------------
class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cell(Answer):
    key: list[Label]
    n: int
    patients: int | None = None  # distinct patients among the n rows (event tables)
    sketch: str | None = None  # 512-bit membership sketch of the cell's rows (differencing guard), hex


class Counts(Answer):
    kind: Literal["counts"] = "counts"
    cells: list[Cell]


class SubsetSize(Answer):
    """Units (rows; distinct patients for event tables) the filters keep, and units they leave out."""

    kind: Literal["subset_size"] = "subset_size"
    chosen: int
    left: int


class AtomCell(Answer):
    key: list[Label]  # values of the request's dims
    bits: str  # membership in each requested (subset, version) column, as hex of a little-endian bitset
    n: int  # rows
    patients: int  # distinct patients among them


class SizeLists(Answer):
    kind: Literal["size_lists"] = "size_lists"
    items: list[list[Cell]]


class AtomPattern(Answer):
    atoms: list[int]  # indexes into `Atoms.cells`: the atoms one patient has rows in (two or more)
    n: int  # patients with rows in exactly these atoms


class Atoms(Answer):
    kind: Literal["atoms"] = "atoms"
    cells: list[AtomCell]
    # patients whose rows lie in several atoms (tables of several rows per patient): a set of atoms holds
    # fewer patients than the sum of its atoms' when one has rows in two of them (`differencing.Units`)
    patterns: list[AtomPattern] = Field(default_factory=list)


class MomentCell(Answer):
    key: list[Label]
    n: int
    patients: int | None = None  # distinct patients behind the n values (event tables)
    mean: float
    m2: float  # sum of squared deviations from the mean


class Moments(Answer):
    kind: Literal["moments"] = "moments"
    cells: list[MomentCell]


class HitCell(Answer):
    key: list[Label]
    hits: int
    n: int


class Hits(Answer):
    kind: Literal["hits"] = "hits"
    cells: list[HitCell]


class AtOrBelow(Answer):
    kind: Literal["at_or_below"] = "at_or_below"
    counts: list[int]


class KmGroup(Answer):
    key: list[Label]
    at_risk: list[int]
    events: list[int]
    censored: list[int]
    cause_events: list[int] | None = None  # of the events, those whose first event is of the asked cause


class KmIntervals(Answer):
    kind: Literal["km_intervals"] = "km_intervals"
    groups: list[KmGroup]


class LevelCount(Answer):
    covariate: str
    level: Label
    n: int


class ModelProfile(Answer):
    kind: Literal["model_profile"] = "model_profile"
    n: int
    levels: list[LevelCount]


class ModelSums(Answer):
    kind: Literal["model_sums"] = "model_sums"
    n: int
    events: int
    score: list[float]
    information: list[list[float]]
    loglik: float


class Refusal(Answer):
    """The site's own refusal: its guard or its copy of the policy does not allow this request."""

    kind: Literal["refusal"] = "refusal"
    reason: str
    suggestion: str = ""
    not_taking_part: bool = False  # too few rows at this site: it takes no part, the others may go on


AnyAnswer = Annotated[Counts | SubsetSize | Atoms | SizeLists | Moments | Hits | AtOrBelow | KmIntervals
                      | ModelProfile | ModelSums | Refusal, Field(discriminator="kind")]
ANSWER = TypeAdapter(AnyAnswer)


class NotTakingPart(QueryRefused):
    """This site has too few rows to take part (the query goes on without it)."""


# ---- what a request runs against -----------------------------------------------------------------------
@dataclass
class SiteContext:
    """One task at one site: its data version, its effective thresholds and its copy of the policy."""

    study_id: str
    data: SiteData
    thresholds: EffectiveThresholds
    policy: QueryPolicy
    memo: dict[Any, Any] = field(default_factory=dict)
    opener: Callable[[int], SiteData] | None = None  # opens another published version (history checks)

    def version(self, number: int) -> SiteData:
        if number == self.data.version.number:
            return self.data
        if self.opener is None:
            raise QueryRefused("this site answers from one version only here")
        return self.opener(number)

    def once(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def base_rows(self, table: str) -> int:
        return int(self.once(("rows", table), lambda: self.data.sql(f"SELECT count(*) FROM unit_{table}")[0][0]))

    def subset_units(self, table: str, filters: list[Filter], exists: list[Exists]) -> tuple[int, int]:
        """Units the filters keep and leave out: rows of `patients`; distinct patients of an event table (the
        rows of one patient are one person's values, however many there are)."""
        params: list[Any] = []
        cond = f"(({where(filters, exists, params)}) IS TRUE)"
        unit = "*" if table == "patients" else "DISTINCT pid"
        sql = (f"SELECT count({unit}) FILTER (WHERE {cond}), count({unit}) FILTER (WHERE NOT {cond}) "
               f"FROM unit_{table}")
        row = self.once(("units", sql, repr(params)), lambda: self.data.sql(sql, params + params)[0])
        return int(row[0]), int(row[1])


# ---- requests ------------------------------------------------------------------------------------------
class Request(BaseModel):
    """One summary of one unit table, on the rows the filters keep."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    registry: ClassVar[dict[str, type[Request]]] = {}

    table: UnitTable = "patients"
    filters: list[Filter] = Field(default_factory=list, max_length=20)
    exists: list[Exists] = Field(default_factory=list, max_length=5)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "kind" in cls.model_fields:
            Request.registry[cls.model_fields["kind"].default] = cls

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        """Every column the request touches: (column, purpose, allowed types, table)."""
        out: list[tuple[str, str, set[str] | None, str]] = [(f.column, "filtering", None, self.table)
                                                            for f in self.filters]
        for e in self.exists:
            out += [(f.column, f"filtering {e.table}", None, e.table) for f in e.where]
        return out

    def compared(self) -> list[tuple[str, str, str, object]]:
        """Every (table, column, operator, value) the request compares."""
        out: list[tuple[str, str, str, object]] = [(self.table, f.column, f.op, f.value) for f in self.filters]
        return out + [(e.table, f.column, f.op, f.value) for e in self.exists for f in e.where]

    def filtered(self) -> bool:
        return bool(self.filters or self.exists)

    def splits(self) -> list[tuple[str, Filter]]:
        """The split filters of earlier released parts the request evaluates (`check_split`)."""
        return []

    def frm(self) -> tuple[str, list[Any]]:
        return subset(self.table, self.filters, self.exists)

    def answer(self, ctx: SiteContext) -> Answer:  # pragma: no cover - every request defines it
        raise NotImplementedError


class Grouped(Request):
    dims: list[str] = Field(default_factory=list, max_length=4)  # up to 3 group-by columns and a split

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        return super().uses() + [(d, "grouping", GROUPABLE, self.table) for d in self.dims]


class RowCount(Request):
    """Rows of the unit table at this site (whether it may take part)."""

    kind: Literal["row_count"] = "row_count"

    def answer(self, ctx: SiteContext) -> Answer:
        return Counts(cells=[Cell(key=[], n=ctx.base_rows(self.table))])


class SubsetCount(Request):
    """Units the filters keep and leave out (the subset guard's inputs)."""

    kind: Literal["subset_count"] = "subset_count"

    def answer(self, ctx: SiteContext) -> Answer:
        chosen, left = ctx.subset_units(self.table, self.filters, self.exists)
        return SubsetSize(chosen=chosen, left=left)


SKETCH_WORDS = 8  # 8 x 64 = 512 bits


def group_counts(data: SiteData, table: str, filters: list[Filter], exists: list[Exists], dims: list[str],
                 sketch: bool = False) -> list[Cell]:
    """Rows per group, distinct patients for event tables, and with `sketch` a 512-bit sketch of each cell's
    rows: bit md5(row identity) mod 512 is set for each row, so a cell inside another has its bits inside
    the other's (the differencing guard's cheap test for nested cells; md5 is stable across versions)."""
    frm, params = subset(table, filters, exists)
    sel, grp = group_select(dims)
    words = ""
    if sketch:
        words = "".join(f", bit_or(CASE WHEN h // 64 = {w} THEN (1::UBIGINT << (h % 64)::INTEGER) ELSE 0::UBIGINT "
                        f"END)" for w in range(SKETCH_WORDS))
        frm = (f"FROM (SELECT *, (md5_number(CAST(rid AS VARCHAR)) % 512)::INTEGER AS h FROM "
               f"(SELECT *, {row_identity(table)} AS rid {frm}))")
    patients = ", count(DISTINCT pid)" if table != "patients" else ""
    rows = data.sql(f"SELECT {sel}count(*){patients}{words} {frm}{grp}", params)
    nd, out = len(dims), []
    for r in rows:
        sk = "".join(f"{int(x or 0):016x}" for x in r[-SKETCH_WORDS:]) if sketch else None
        out.append(Cell(key=[label(x) for x in r[:nd]], n=int(r[nd]),
                        patients=int(r[nd + 1]) if patients else None, sketch=sk))
    return out


class GroupCounts(Grouped):
    """Rows per group, and distinct patients per group for event tables (count, crosstab)."""

    kind: Literal["group_counts"] = "group_counts"
    sketch: bool = False

    def answer(self, ctx: SiteContext) -> Answer:
        return Counts(cells=group_counts(ctx.data, self.table, self.filters, self.exists, self.dims, self.sketch))




class Subset(BaseModel):
    """An earlier released subset; with `split`, the part of its groups a statistic showed counts of (a
    proportion's value, a model's outcome, a curve's number at risk at a time: `check_split`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    filters: list[Filter] = Field(default_factory=list, max_length=20)
    exists: list[Exists] = Field(default_factory=list, max_length=6)  # a query's five and its shadow's one
    split: list[Filter] = Field(default_factory=list, max_length=3)  # a curve's events of a cause before a day: 3

    @property
    def rows(self) -> list[Filter]:
        """The filters that select its rows (the query's and the split's)."""
        return [*self.filters, *self.split]


class Released(BaseModel):
    """One released subset at the version this site answered it from."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    subset: int = Field(ge=0)
    version: int = Field(ge=1)


def row_identity(table: str) -> str:
    """SQL naming a row the same way in every version: the patient's pseudonym, and for event rows also
    their content (a corrected event is a new row) and rank among identical rows."""
    if table == "patients":
        return "pid"
    content = "concat_ws('|', *COLUMNS(* EXCLUDE (upload_id, schema_version)))"
    return f"pid || ':' || md5({content}) || ':' || row_number() OVER (PARTITION BY {content})"


class ManySubsets(Request):
    """A request over many earlier released subsets (the differencing guard's); every one is checked."""

    subsets: list[Subset] = Field(max_length=MAX_EARLIER)

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        out = super().uses()
        for x in self.subsets:
            out += [(f.column, "filtering", None, self.table) for f in x.rows]
            out += [(f.column, f"filtering {e.table}", None, e.table) for e in x.exists for f in e.where]
        return out

    def splits(self) -> list[tuple[str, Filter]]:
        return [(self.table, f) for x in self.subsets for f in x.split]

    def compared(self) -> list[tuple[str, str, str, object]]:
        out = super().compared()
        for x in self.subsets:
            out += [(self.table, f.column, f.op, f.value) for f in x.filters]
            out += [(e.table, f.column, f.op, f.value) for e in x.exists for f in e.where]
        return out


class HistoryAtoms(ManySubsets):
    """Rows grouped by their `dims` values and by membership in each released (subset, version): the
    differencing guard's view of everything released on this table (counts only; rows matched across
    versions by identity)."""

    kind: Literal["history_atoms"] = "history_atoms"
    columns: list[Released] = Field(max_length=MAX_EARLIER)
    dims: list[str] = Field(default_factory=list, max_length=32)

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        return super().uses() + [(d, "grouping", GROUPABLE, self.table) for d in self.dims]

    def answer(self, ctx: SiteContext) -> Answer:
        if any(c.subset >= len(self.subsets) for c in self.columns):
            raise QueryRefused("a released column names a subset that is not in the request")
        by_version: dict[int, list[int]] = {}
        for i, c in enumerate(self.columns):
            by_version.setdefault(c.version, []).append(i)
        rows: dict[str, list[Any]] = {}  # identity -> [dims values, pid, bits]
        for version in sorted(by_version, reverse=True):  # dims values from the newest version holding the row
            data = ctx.version(version)
            params: list[Any] = []
            chosen = [self.subsets[self.columns[i].subset] for i in by_version[version]]
            conds = [f"(({where(x.rows, x.exists, params)}) IS TRUE)" for x in chosen]
            here = version_columns(data.version.schema_version, self.table)  # an earlier dictionary lacks some
            dims = "".join(f", {ident(d)}" if d in here else ", NULL" for d in self.dims)
            got = data.sql(f"SELECT {row_identity(self.table)} AS rid, pid{dims}, {', '.join(conds)} "
                           f"FROM unit_{self.table}", params)
            nd = len(self.dims)
            for r in got:
                held = rows.setdefault(r[0], [tuple(label(x) for x in r[2:2 + nd]), r[1], 0])
                for i, hit in zip(by_version[version], r[2 + nd:], strict=True):
                    if hit:
                        held[2] |= 1 << i
        cells: dict[tuple[Any, int], list[Any]] = {}
        spread: dict[Any, set[int]] = {}  # patient -> the atoms their rows lie in
        for key, pid, bits in rows.values():
            if bits:
                cell = cells.setdefault((key, bits), [len(cells), 0, set()])
                cell[1] += 1
                cell[2].add(pid)
                spread.setdefault(pid, set()).add(cell[0])
        patterns = Counter(tuple(sorted(atoms)) for atoms in spread.values() if len(atoms) > 1)
        width = max(1, (len(self.columns) + 3) // 4)
        return Atoms(cells=[AtomCell(key=list(key), bits=f"{bits:0{width}x}", n=n, patients=len(pids))
                            for (key, bits), (_, n, pids) in cells.items()],
                     patterns=[AtomPattern(atoms=list(atoms), n=n) for atoms, n in sorted(patterns.items())])


class Sized(BaseModel):
    """One earlier released footprint at this site: its subset, version and group-by columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    subset: int = Field(ge=0)
    version: int = Field(ge=1)
    dims: list[str] = Field(default_factory=list, max_length=16)


class FootprintSizes(ManySubsets):
    """Cell sizes of earlier released results, each at the version it was released from (the differencing
    guard's index; computed once per result and kept by the service)."""

    kind: Literal["footprint_sizes"] = "footprint_sizes"
    items: list[Sized] = Field(max_length=MAX_EARLIER)

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        return super().uses() + [(d, "grouping", GROUPABLE, self.table) for i in self.items for d in i.dims]

    def answer(self, ctx: SiteContext) -> Answer:
        if any(i.subset >= len(self.subsets) for i in self.items):
            raise QueryRefused("an item names a subset that is not in the request")
        return SizeLists(items=[group_counts(ctx.version(i.version), self.table, self.subsets[i.subset].rows,
                                             self.subsets[i.subset].exists, i.dims, sketch=True)
                                for i in self.items])
class ColumnMoments(Grouped):
    """Per group: n, mean and sum of squared deviations of a numeric column (sum, mean, variance)."""

    kind: Literal["moments"] = "moments"
    column: str

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        return super().uses() + [(self.column, "moments", NUMERIC, self.table)]

    def answer(self, ctx: SiteContext) -> Answer:
        frm, params = self.frm()
        sel, grp = group_select(self.dims)
        col = ident(self.column)
        patients = "count(DISTINCT pid)" if self.table != "patients" else "NULL"
        rows = ctx.data.sql(f"SELECT {sel}{patients}, count({col}), avg({col}), "
                            f"coalesce(var_pop({col}) * count({col}), 0) {frm} AND {col} IS NOT NULL{grp}", params)
        return Moments(cells=[MomentCell(key=[label(x) for x in r[:-4]], patients=r[-4], n=int(r[-3]),
                                         mean=float(r[-2] or 0.0), m2=float(r[-1])) for r in rows])


class ValueHits(Grouped):
    """Per group: rows where `column == value`, and all rows (proportion)."""

    kind: Literal["value_hits"] = "value_hits"
    column: str
    value: str | bool | int | float

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        return super().uses() + [(self.column, "a proportion", None, self.table)]

    def compared(self) -> list[tuple[str, str, str, object]]:
        return [*super().compared(), (self.table, self.column, "==", self.value)]

    def answer(self, ctx: SiteContext) -> Answer:
        frm, params = self.frm()
        sel, grp = group_select(self.dims)
        col = ident(self.column)
        rows = ctx.data.sql(f"SELECT {sel}count(*) FILTER (WHERE ({col} = ?) IS TRUE), count(*) {frm}{grp}",
                            [self.value, *params])
        return Hits(cells=[HitCell(key=[label(x) for x in r[:-2]], hits=int(r[-2]), n=int(r[-1])) for r in rows])


class ValueCounts(Grouped):
    """Per group: non-missing rows of a numeric column (quantiles; no minimum, maximum or bracket leaves)."""

    kind: Literal["value_counts"] = "value_counts"
    column: str

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        return super().uses() + [(self.column, "quantiles", NUMERIC, self.table)]

    def answer(self, ctx: SiteContext) -> Answer:
        frm, params = self.frm()
        sel, grp = group_select(self.dims)
        col = ident(self.column)
        rows = ctx.data.sql(f"SELECT {sel}count({col}) {frm} AND {col} IS NOT NULL{grp}", params)
        return Counts(cells=[Cell(key=[label(x) for x in r[:-1]], n=int(r[-1])) for r in rows])


class CountAtOrBelow(Grouped):
    """In one group (`key`, one value per `dims` column): non-missing rows of a numeric column at or below
    each threshold (quantile search)."""

    kind: Literal["count_at_or_below"] = "count_at_or_below"
    column: str
    key: list[Label] = Field(default_factory=list, max_length=3)
    thresholds: list[float] = Field(max_length=MAX_THRESHOLDS)

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        return super().uses() + [(self.column, "quantiles", NUMERIC, self.table)]

    def answer(self, ctx: SiteContext) -> Answer:
        if len(self.key) != len(self.dims):
            raise QueryRefused("a group key needs one value per group-by column")
        grid = ctx.policy.cut_points.get(self.column)
        if CutPointGuard.enabled() and (grid is None or not all(grid.on_grid(t) for t in self.thresholds)):
            raise QueryRefused(f"quantiles of {self.column} are searched only at its declared cut points")
        frm, params = self.frm()
        col = ident(self.column)
        in_group = "".join(f" AND {ident(g)} IS NOT DISTINCT FROM ?" for g in self.dims)
        key = [None if k == MISSING else k for k in self.key]
        marks = ", ".join(f"count(*) FILTER (WHERE {col} <= ?)" for _ in self.thresholds)
        row = ctx.data.sql(f"SELECT {marks} {frm} AND {col} IS NOT NULL{in_group}",
                           [*self.thresholds, *params, *key])[0]
        return AtOrBelow(counts=[int(x) for x in row])


class KmCounts(Grouped):
    """Per group and grid interval: number at risk at its start, events and censorings (Kaplan-Meier)."""

    kind: Literal["km_counts"] = "km_counts"
    endpoint: Endpoint = "os"
    grid_days: float = Field(ge=1.0)
    horizon_days: float = Field(gt=0)
    cause: list[str] | None = Field(default=None, min_length=1, max_length=10)  # efs: first events of interest

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        out = super().uses() + [(f"{self.endpoint}_days", "time to event", None, self.table),
                                (f"{self.endpoint}_event", "time to event", None, self.table)]
        if self.cause:
            out.append((CAUSE_COLUMN.get(self.endpoint, "first_event"), "the cause of an event", GROUPABLE,
                        self.table))
        return out

    def compared(self) -> list[tuple[str, str, str, object]]:
        return super().compared() + ([(self.table, CAUSE_COLUMN.get(self.endpoint, "first_event"), "in", self.cause)]
                                     if self.cause else [])

    def grid(self) -> np.ndarray:
        if self.horizon_days / self.grid_days > MAX_GRID_INTERVALS:
            raise QueryRefused(f"a grid of more than {MAX_GRID_INTERVALS} intervals is not computed")
        return np.arange(0.0, self.horizon_days + self.grid_days, self.grid_days)

    def answer(self, ctx: SiteContext) -> Answer:
        check_km_grid(ctx.policy, self.grid_days, self.horizon_days)
        grid = self.grid()
        frm, params = self.frm()
        time_col, event_col = f"{self.endpoint}_days", f"{self.endpoint}_event"
        if self.cause and self.endpoint not in CAUSE_COLUMN:
            raise QueryRefused("causes are those of the first event: ask them with the efs or late_effect endpoint")
        sel, _ = group_select(self.dims)
        cause = f", {CAUSE_COLUMN[self.endpoint]} AS c" if self.cause else ""
        data = ctx.data.arrays(f"SELECT {sel}{time_col} AS t, {event_col} AS e{cause} {frm} AND {time_col} IS NOT "
                               "NULL", params)
        groups: dict[tuple[Label, ...], list[int]] = {}
        gcols = [data[g] for g in self.dims]
        for i in range(len(data["t"])):
            groups.setdefault(tuple(label(c[i]) for c in gcols), []).append(i)
        out = []
        for key, idx in groups.items():
            t = np.asarray(data["t"][idx], dtype=float)
            e = np.asarray(data["e"][idx], dtype=bool)
            at_risk, events, censored = estimating.km_grid_counts(t, e, grid)
            of_cause = None
            if self.cause:
                mine = e & np.isin(np.asarray(data["c"][idx], dtype=object), self.cause)
                of_cause = estimating.km_grid_counts(t, mine, grid)[1].tolist()
            out.append(KmGroup(key=list(key), at_risk=at_risk.tolist(), events=events.tolist(),
                               censored=censored.tolist(), cause_events=of_cause))
        return KmIntervals(groups=out)


class Model(Request):
    """A regression model on this site's complete cases: logistic (y = 1 where `outcome` holds) or Cox."""

    model: Literal["logistic", "cox"]
    covariates: list[str] = Field(min_length=1, max_length=10)
    outcome: Filter | None = None  # logistic
    endpoint: Endpoint = "os"  # cox

    def response_columns(self) -> list[str]:
        if self.model == "logistic":
            if self.outcome is None:
                raise QueryRefused("a logistic model needs an outcome")
            return [self.outcome.column]
        return [f"{self.endpoint}_days", f"{self.endpoint}_event"]

    def uses(self) -> list[tuple[str, str, set[str] | None, str]]:
        out = super().uses() + [(c, "a covariate", None, self.table) for c in self.covariates]
        if self.model == "logistic" and self.outcome is not None:
            out.append((self.outcome.column, "the outcome", None, self.table))
        return out

    def compared(self) -> list[tuple[str, str, str, object]]:
        out = super().compared()
        o = self.outcome
        return out + ([(self.table, o.column, o.op, o.value)] if o is not None else [])

    def response(self, data: dict[str, Any]) -> np.ndarray:
        if self.model == "cox":
            return np.asarray(data[f"{self.endpoint}_event"], dtype=bool).astype(float)
        assert self.outcome is not None
        return outcome_indicator(self.outcome, data[self.outcome.column])

    def categorical(self, study_id: str) -> list[str]:
        types = unit_columns(study_id, self.table)
        return [c for c in self.covariates if types.get(c) in ("string", "bool")]

    def declared_levels(self, policy: QueryPolicy, study_id: str) -> dict[str, list[Label]]:
        """The categories of the categorical covariates: the dictionary's (narrowed by the model's filters), the
        first being the reference; complete cases have no missing value."""
        out: dict[str, list[Label]] = {}
        for c in self.categorical(study_id):
            levels = declared_levels(policy, study_id, self.table, c, self.filters) or []
            out[c] = [v for v in levels if v != MISSING]  # type: ignore[misc]
        return out

    def complete_cases(self, ctx: SiteContext) -> dict[str, Any]:
        def load() -> dict[str, Any]:
            frm, params = self.frm()
            cols = list(dict.fromkeys([*self.covariates, *self.response_columns()]))
            not_null = " AND ".join(f"{ident(c)} IS NOT NULL" for c in cols)
            return ctx.data.arrays(f"SELECT {', '.join(ident(c) for c in cols)} {frm} AND {not_null}", params)

        return _cached_cases((ctx.data.site_id, ctx.data.version.version_id, self.model_dump_json(
            include={"table", "filters", "exists", "covariates", "outcome", "endpoint", "model"})), load)


class ModelLevels(Model):
    """Complete cases and the categories of categorical covariates with their counts (to agree on levels)."""

    kind: Literal["model_levels"] = "model_levels"

    def answer(self, ctx: SiteContext) -> Answer:
        data = self.complete_cases(ctx)
        n = len(data[self.covariates[0]])
        levels = []
        for c in self.categorical(ctx.study_id):
            levels += [LevelCount(covariate=c, level=v, n=m) for v, m in Counter(label(v) for v in data[c]).items()]
        return ModelProfile(n=n, levels=levels)


class ModelTerms(Model):
    """Score vector, information matrix and log-likelihood at `beta` (one Newton step's share)."""

    kind: Literal["model_terms"] = "model_terms"
    levels: dict[str, list[Label]] = Field(default_factory=dict)  # categorical covariate -> levels, first = reference
    beta: list[float] = Field(max_length=MAX_PARAMETERS)

    def n_parameters(self) -> int:
        return (1 if self.model == "logistic" else 0) + sum(
            len(self.levels[c]) - 1 if c in self.levels else 1 for c in self.covariates)

    def design(self, data: dict[str, Any]) -> np.ndarray:
        n = len(data[self.covariates[0]])
        cols = [np.ones(n)] if self.model == "logistic" else []
        for c in self.covariates:
            if c in self.levels:
                values = np.array([label(v) for v in data[c]], dtype=object)
                cols += [(values == level).astype(float) for level in self.levels[c][1:]]
            else:
                cols.append(np.asarray(data[c], dtype=float))
        return np.column_stack(cols) if cols else np.zeros((n, 0))

    def answer(self, ctx: SiteContext) -> Answer:
        data = self.complete_cases(ctx)
        x, y = self.design(data), self.response(data)
        beta = np.asarray(self.beta, dtype=float)
        if x.shape[1] != len(beta):
            raise QueryRefused(f"beta has {len(beta)} values for {x.shape[1]} parameters")
        if self.model == "logistic":
            score, info, loglik = estimating.logistic_site(x, y, beta)
        else:
            t = np.asarray(data[f"{self.endpoint}_days"], dtype=float)
            score, info, loglik = estimating.cox_site(t, y.astype(bool), x, beta)
        return ModelSums(n=len(y), events=int(y.sum()), score=score.tolist(), information=info.tolist(),
                         loglik=loglik)


def outcome_indicator(f: Filter, values: Any) -> np.ndarray:
    v = f.value
    ops: dict[str, Callable[[Any], Any]] = {
        "==": lambda x: x == v, "!=": lambda x: x != v, "<": lambda x: x < v, "<=": lambda x: x <= v,
        ">": lambda x: x > v, ">=": lambda x: x >= v,
        "in": lambda x: x in v, "not in": lambda x: x not in v, "present": lambda x: x is not None}
    return np.array([1.0 if ops[f.op](x) else 0.0 for x in values])


_CASES: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
_CASES_LOCK = threading.Lock()


def _cached_cases(key: tuple[str, str, str], load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A model's complete cases stay in the node between Newton iterations (a version never changes)."""
    with _CASES_LOCK:
        if key in _CASES:
            _CASES.move_to_end(key)
            return _CASES[key]
    data = load()
    with _CASES_LOCK:
        _CASES[key] = data
        while len(_CASES) > 8:
            _CASES.popitem(last=False)
    return data


AnyRequest = Annotated[RowCount | SubsetCount | GroupCounts | HistoryAtoms | FootprintSizes | ColumnMoments | ValueHits
                       | ValueCounts | CountAtOrBelow | KmCounts | ModelLevels | ModelTerms,
                       Field(discriminator="kind")]
REQUEST = TypeAdapter(AnyRequest)


def check_columns(request: Request, ctx: SiteContext) -> None:
    check_collected(ctx.study_id, [request.table, *(e.table for e in request.exists)])
    check_collected_here(request, ctx)
    for column, what, kinds, table in request.uses():
        require(ctx.policy, ctx.study_id, table, column, what, kinds)
    for table, column, op, value in request.compared():
        check_comparison(ctx.policy, ctx.study_id, table, column, op, value)
    for table, f in request.splits():
        check_split(ctx.policy, ctx.study_id, table, f)


def check_collected_here(request: Request, ctx: SiteContext) -> None:
    """A site whose data follows an earlier dictionary than its study (`Study.also_accepts`) takes no part in a
    request about tables or columns that dictionary does not have: "not collected", never counted as absent."""
    version = ctx.data.version.schema_version
    if version == load_registry().study(ctx.study_id).schema_version or isinstance(request, ManySubsets):
        return  # the differencing guard's requests name only subsets this site answered (`HistoryAtoms`: dims)
    missing: list[str] = []
    for unit in [request.table, *(e.table for e in request.exists)]:
        if unit != "patients" and not version_columns(version, unit):
            missing.append(unit)
    used: list[tuple[str, str]] = [(t, c) for c, _, _, t in request.uses()]
    used += [(t, c) for t, c, _, _ in request.compared()]
    used += [(t, f.column) for t, f in request.splits()]
    for table, column in used:
        if table not in missing and column not in version_columns(version, table):
            missing.append(f"{table}.{column}" if table != "patients" else column)
    if missing:
        raise NotTakingPart(f"not collected: its data follows data dictionary v{version}, which has no "
                            + ", ".join(dict.fromkeys(missing)))
