"""The share of rows where a column equals a value, by group, with Wilson intervals (site half: `ValueHits`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from federation.query.central.combine import wilson
from federation.query.central.disclosure import suppress
from federation.query.central.statistics.base import Statistic, shared_pattern
from federation.query.central.statistics.base import group_keys as groups_of
from federation.query.central.statistics.counts import check_filters
from federation.query.columns import check_comparison, require
from federation.query.guard import QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import Answer, Counts, GroupCounts, Hits, Request, ValueHits, label

if TYPE_CHECKING:
    from federation.query.central.runner import Context


class Proportion(Statistic):
    names = ("proportion",)

    def check(self, q: Query, policy: QueryPolicy) -> None:
        check_filters(q, policy)
        if not q.column or q.value is None:
            raise QueryRefused("a proportion needs --column and --value (the share of rows where column == value)")
        if not isinstance(q.value, str | bool | int | float):
            raise QueryRefused("the value of a proportion must be a string, a number or a boolean")
        require(policy, q.study_id, q.table, q.column, "a proportion")
        check_comparison(policy, q.study_id, q.table, q.column, "==", q.value)

    def requests(self, q: Query) -> list[Request]:
        assert q.column
        return [ValueHits(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by, column=q.column,
                          value=q.value),
                GroupCounts(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by),
                GroupCounts(table=q.table, filters=q.filters, exists=q.exists, dims=[*q.group_by, str(q.column)])]

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        q = ctx.query
        per_site: dict[str, dict[tuple[Any, ...], tuple[int, int]]] = {}
        group_rows: dict[str, Counts] = {}
        split_rows: dict[str, Counts] = {}
        for site, (hits, counts, split) in answers.items():
            assert isinstance(hits, Hits) and isinstance(counts, Counts) and isinstance(split, Counts)
            per_site[site] = {tuple(c.key): (c.hits, c.n) for c in hits.cells}
            group_rows[site] = counts
            split_rows[site] = split
        group_keys = groups_of(ctx, {key for c in per_site.values() for key in c})
        shared = shared_pattern(ctx, group_rows, group_keys)
        # x is the count of (group, column == value): hidden at least where the count by group and column is
        split_keys = groups_of(ctx, {tuple(c.key) for a in split_rows.values() for c in a.cells},
                                [*q.group_by, str(q.column)])
        by_column = shared_pattern(ctx, split_rows, split_keys) if split_keys else None
        hit_of = {key: j for j, key in enumerate(split_keys)}
        names = ctx.sites
        pairs = [[per_site[s].get(g, (0, 0)) for g in group_keys] for s in names]
        cells = np.array([[[hits, n - hits] for hits, n in row] for row in pairs], dtype=float)
        rel = suppress(cells, [ctx.thresholds[s].min_cell for s in names], ctx.k)
        S = len(names)

        def share(i: int, r: int) -> dict[str, Any]:
            x, n = rel.values[i, r, 0], rel.values[i, r, 2]
            j = hit_of.get((*group_keys[r], label(q.value)))
            if np.isnan(x) or np.isnan(n) or shared[i, r] or (by_column is not None and j is not None
                                                              and by_column[i, j]):
                return {"suppressed": True}
            lo, hi = wilson(int(x), int(n))
            return {"x": int(x), "n": int(n), "proportion": x / n if n else None, "ci95": [lo, hi]}

        rows = [{"group": list(g), "combined": share(S, r), "per_site": {s: share(i, r) for i, s in enumerate(names)}}
                for r, g in enumerate(group_keys)]
        ctx.result.notes.append("95% confidence intervals by Wilson's score method")
        return {"statistic": "proportion", "column": q.column, "value": q.value, "dims": q.group_by, "rows": rows}
