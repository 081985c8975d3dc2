"""The base of every statistic's central half, and helpers the statistics share.

A statistic is one small class: `names` (what `Query.statistic` says), `check` (what the query must give),
`requests` (the site summaries of its first round: its site half, defined in `query.site.summaries`)
and `combine` (exact combination and suppression, asking more rounds through `ctx.ask` if it needs them).
Subclasses register themselves; `Statistic.for_query` finds the one a query names.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from federation.query.central.disclosure import Released, suppress
from federation.query.columns import EmptyCellGuard, declared_levels
from federation.query.guard import Guard, QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import Answer, Counts, Request

if TYPE_CHECKING:
    from federation.query.central.runner import Context

Key = tuple[Any, ...]


class Statistic:
    names: ClassVar[tuple[str, ...]] = ()
    per_site: ClassVar[bool] = True  # whether results carry per-site values
    registry: ClassVar[dict[str, type[Statistic]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in cls.names:
            Statistic.registry[name] = cls

    @classmethod
    def for_query(cls, q: Query) -> Statistic:
        if q.statistic not in cls.registry:
            raise QueryRefused(f"unknown statistic {q.statistic!r}", f"use one of {sorted(cls.registry)}")
        return cls.registry[q.statistic]()

    def check(self, q: Query, policy: QueryPolicy) -> None:
        """Refuse a query this statistic cannot answer (columns, parameters), before any site is asked."""

    def requests(self, q: Query) -> list[Request]:
        raise NotImplementedError

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self, ctx: Context) -> None:
        """Add to `ctx.result.payload`, after every guard has run on it, what follows from what it shows."""


MAX_GROUPS = 120  # groups (or crosstab cells) per result: bounds the suppression audit's work


def sorted_keys(keys: set[Key]) -> list[Key]:
    if len(keys) > MAX_GROUPS:
        raise QueryRefused(f"the result would have more than {MAX_GROUPS} groups; disclosure control of so many "
                           "small cells is not offered", "group by fewer or coarser columns, or filter first")
    return sorted(keys, key=lambda t: tuple((x is None, str(x)) for x in t))


def group_keys(ctx: Context, observed: set[Key], dims: list[str] | None = None) -> list[Key]:
    """The groups of a result: every combination of the declared levels of its group-by columns (narrowed by its
    own filters), whatever the data holds, so that a group with no row is shown (hidden) like a group of
    1..k-1 rows instead of missing from the result. `observed`: the keys the sites returned (each must be
    declared: a value outside the dictionary means the published data was not validated)."""
    q = ctx.query
    dims = q.group_by if dims is None else dims
    if not dims:
        return [()]
    lists = [declared_levels(ctx.policy, q.study_id, q.table, d, q.filters) for d in dims]
    if not EmptyCellGuard.enabled() or any(v is None for v in lists):
        return sorted_keys(observed) or [()]
    keys: list[Key] = list(itertools.product(*lists))  # type: ignore[arg-type]
    if len(keys) > MAX_GROUPS:
        sorted_keys(set(keys))  # refuses with the usual text
    if observed - set(keys):
        raise QueryRefused(f"a site's published data holds a value of {' x '.join(dims)} outside the data "
                           "dictionary's list", "ask the data team to validate and re-publish that site's data")
    return keys


def cell(v: float) -> Any:
    """A released count, or the mark of a suppressed one."""
    return {"suppressed": True} if np.isnan(v) else int(v)


def count_table(ctx: Context, per_site: dict[str, dict[Key, int]], keys: list[Key], *, totals: bool = True,
                patients: dict[str, dict[Key, int]] | None = None) -> Released:
    """Suppression of counts by group for every site and combined; `totals` when the result releases
    the total over the groups too (a count does; the n behind means and quantiles does not); `patients`
    per cell for event tables (a cell of 1..k-1 patients is hidden however many rows it has)."""
    sites = ctx.sites
    cells = np.array([[[per_site[s].get(key, 0)] for key in keys] for s in sites], dtype=float)
    units = (np.array([[[patients[s].get(key, 0)] for key in keys] for s in sites], dtype=float)
             if patients is not None else None)
    margins = None
    if units is not None and ctx.level_patients is not None:  # the total's patients (`RowMultiplicityGuard`)
        margins = np.full((len(sites) + 1, len(keys) + 1, 2), np.nan)
        total = ctx.level_patients.get(())
        if total is not None and ctx.query.group_by:
            margins[:-1, -1, 0] = [total.get(s, {}).get((), 0) for s in sites]
            margins[-1, -1, 0] = margins[:-1, -1, 0].sum()
    return suppress(cells, [ctx.thresholds[s].min_cell for s in sites], ctx.k, col_margin=False, row_margin=totals,
                    units=units, margins=margins)


def shared_pattern(ctx: Context, answers: dict[str, Counts], keys: list[Key]) -> np.ndarray:
    """Which (site or combined, group) cells the count of the same rows by the same groups hides: every
    statistic that reveals its counts hides at least these, so that no statistic shows a count that the
    count (with its totals) hid. Shape (sites + 1, groups); True = hidden."""
    rows = {s: {tuple(c.key): c.n for c in a.cells} for s, a in answers.items()}
    patients = ({s: {tuple(c.key): c.patients or 0 for c in a.cells} for s, a in answers.items()}
                if ctx.query.table != "patients" else None)
    rel = count_table(ctx, rows, keys, totals=True, patients=patients)
    if not SharedSuppressionGuard.enabled():
        return np.zeros((len(ctx.sites) + 1, len(keys)), dtype=bool)
    return np.asarray(np.isnan(rel.values[:, :len(keys), 0]))


class SharedSuppressionGuard(Guard):
    """Statistics that reveal counts hide at least the cells the count of the same rows hides."""
