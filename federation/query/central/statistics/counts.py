"""Counts by up to three groups, and two-way crosstabs with margins (site half: `GroupCounts`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from federation.query.central.disclosure import suppress
from federation.query.central.statistics.base import Key, Statistic, cell, count_table, group_keys, sorted_keys
from federation.query.columns import GROUPABLE, check_comparison, check_groupable, require
from federation.query.guard import QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import Answer, Counts, GroupCounts, Request

if TYPE_CHECKING:
    from federation.query.central.runner import Context


def check_filters(q: Query, policy: QueryPolicy) -> None:
    """The columns every statistic touches: filters, exists-filters and group-by columns."""
    for g in q.group_by:
        require(policy, q.study_id, q.table, g, "grouping", GROUPABLE)
        check_groupable(policy, q.study_id, q.table, g)
    for f in q.filters:
        require(policy, q.study_id, q.table, f.column, "filtering")
        check_comparison(policy, q.study_id, q.table, f.column, f.op, f.value)
    for e in q.exists:
        for f in e.where:
            require(policy, q.study_id, e.table, f.column, f"filtering {e.table}")
            check_comparison(policy, q.study_id, e.table, f.column, f.op, f.value)


def per_site_counts(answers: dict[str, list[Answer]], patients: bool = False) -> dict[str, dict[Key, int]]:
    """Rows (or, with `patients`, distinct patients) per group of each site's first `Counts` answer."""
    out = {}
    for site, (counts, *_) in answers.items():
        assert isinstance(counts, Counts)
        out[site] = {tuple(c.key): (c.patients or 0) if patients else c.n for c in counts.cells}
    return out


class Count(Statistic):
    names = ("count",)

    def check(self, q: Query, policy: QueryPolicy) -> None:
        check_filters(q, policy)

    def requests(self, q: Query) -> list[Request]:
        return [GroupCounts(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by)]

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        per_site = per_site_counts(answers)
        keys = group_keys(ctx, {key for c in per_site.values() for key in c})
        events = ctx.query.table != "patients"
        rel = count_table(ctx, per_site, keys, patients=per_site_counts(answers, patients=True) if events else None)
        names = ctx.sites
        S, R = len(names), len(keys)
        rows = [{"group": list(key), "combined": cell(rel.values[S, r, 0]),
                 "per_site": {s: cell(rel.values[i, r, 0]) for i, s in enumerate(names)}}
                for r, key in enumerate(keys)]
        total = {"combined": cell(rel.values[S, R, 0]),
                 "per_site": {s: cell(rel.values[i, R, 0]) for i, s in enumerate(names)}}
        return {"statistic": "count", "dims": ctx.query.group_by, "rows": rows, "total": total,
                "suppressed_entries": rel.n_suppressed}


class Crosstab(Count):
    names = ("crosstab",)

    def check(self, q: Query, policy: QueryPolicy) -> None:
        if len(q.group_by) != 2:
            raise QueryRefused("a crosstab needs exactly two group-by columns", "give --by twice")
        check_filters(q, policy)

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        q = ctx.query
        per_site = per_site_counts(answers)
        keys = {key for c in per_site.values() for key in c}
        row_keys = group_keys(ctx, {(key[0],) for key in keys}, q.group_by[:1])
        col_keys = group_keys(ctx, {(key[1],) for key in keys}, q.group_by[1:])
        sorted_keys({(r, c) for r in row_keys for c in col_keys})  # the full table is what gets audited
        names = ctx.sites
        cells = np.array([[[per_site[s].get((r[0], c[0]), 0) for c in col_keys] for r in row_keys] for s in names],
                         dtype=float)
        units = margins = None
        if q.table != "patients":
            pts = per_site_counts(answers, patients=True)
            units = np.array([[[pts[s].get((r[0], c[0]), 0) for c in col_keys] for r in row_keys] for s in names],
                             dtype=float)
        if units is not None and ctx.level_patients is not None:  # margins' patients (`RowMultiplicityGuard`)
            margins = np.full((len(names) + 1, len(row_keys) + 1, len(col_keys) + 1), np.nan)
            lp = ctx.level_patients
            for i, s in enumerate(names):
                margins[i, :-1, -1] = [lp[(q.group_by[0],)].get(s, {}).get(r, 0) for r in row_keys]
                margins[i, -1, :-1] = [lp[(q.group_by[1],)].get(s, {}).get(c, 0) for c in col_keys]
                margins[i, -1, -1] = lp[()].get(s, {}).get((), 0)
            margins[-1] = margins[:-1].sum(axis=0)
        rel = suppress(cells, [ctx.thresholds[s].min_cell for s in names], ctx.k, units=units, margins=margins)

        def matrix(i: int) -> list[list[Any]]:
            v = rel.values[i]
            return [[cell(v[r, c]) for c in range(v.shape[1])] for r in range(v.shape[0])]

        return {"statistic": "crosstab", "rows_dim": q.group_by[0], "cols_dim": q.group_by[1],
                "rows": [r[0] for r in row_keys] + ["total"], "cols": [c[0] for c in col_keys] + ["total"],
                "combined": matrix(len(names)), "per_site": {s: matrix(i) for i, s in enumerate(names)},
                "suppressed_entries": rel.n_suppressed}
