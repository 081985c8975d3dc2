"""Quantiles of a numeric column, released as the declared bin that holds them (site halves: `ValueCounts`,
`CountAtOrBelow`).

The combined quantile is the smallest value c with F(c) >= p (inverse empirical CDF). Sites count their
non-missing values at or below every declared cut point of the column (the policy's, e.g. half years of
age or months of follow-up), in one round; summed, the counts place each quantile in one bin (lo, hi]
of the grid exactly. The released value is the bin's upper end and the error bound its width: both
come from the policy, never from the data (no minimum, maximum or data-driven bracket leaves a site).
Only combined values are released, for probabilities 0.1-0.9 with at least k rows on each side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from federation.query.central.statistics.base import Statistic, count_table, group_keys, shared_pattern
from federation.query.central.statistics.counts import check_filters
from federation.query.columns import NUMERIC, require
from federation.query.guard import QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import (
    MAX_THRESHOLDS,
    Answer,
    AtOrBelow,
    CountAtOrBelow,
    Counts,
    GroupCounts,
    Request,
    ValueCounts,
)

if TYPE_CHECKING:
    from federation.query.central.runner import Context


class Quantiles(Statistic):
    names = ("quantiles",)
    per_site = False  # only combined values are released

    def check(self, q: Query, policy: QueryPolicy) -> None:
        check_filters(q, policy)
        if not q.column:
            raise QueryRefused("quantiles need a numeric --column")
        require(policy, q.study_id, q.table, q.column, "quantiles", NUMERIC)
        if q.column not in policy.cut_points:
            raise QueryRefused(f"quantiles are released as declared bins, and {q.column} has no cut points in the "
                               "query policy", f"ask for the mean of {q.column} instead")
        bad = [p for p in q.probs if p not in policy.disclosure.quantile_probs]
        if bad:
            raise QueryRefused(f"quantiles {bad} are not released (extreme quantiles reveal single patients)",
                               f"ask for probabilities among {list(policy.disclosure.quantile_probs)}")

    def requests(self, q: Query) -> list[Request]:
        assert q.column
        return [ValueCounts(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by, column=q.column),
                GroupCounts(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by)]

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        q = ctx.query
        assert q.column
        grid = ctx.policy.cut_points[q.column]
        cuts = list(grid.points)
        n_per: dict[str, dict[tuple[Any, ...], int]] = {}
        rows_of: dict[str, Counts] = {}
        for site, (values, counts) in answers.items():
            assert isinstance(values, Counts) and isinstance(counts, Counts)
            n_per[site] = {tuple(c.key): c.n for c in values.cells}
            rows_of[site] = counts
        ordered = group_keys(ctx, {key for c in n_per.values() for key in c})
        names = ctx.sites
        rel = count_table(ctx, {s: {key: n_per[s].get(key, 0) for key in ordered} for s in names}, ordered,
                          totals=False)
        shared = shared_pattern(ctx, rows_of, ordered)
        S, k = len(names), ctx.k
        rows: list[dict[str, Any]] = []
        wanted: list[int] = []
        for r, key in enumerate(ordered):
            n = sum(n_per[s].get(key, 0) for s in names)
            row: dict[str, Any] = {"group": list(key)}
            rows.append(row)
            if np.isnan(rel.values[S, r, 0]) or shared[S, r] or n == 0:
                row["combined"] = {"suppressed": True}
                continue
            row["combined"] = {"n": n, "quantiles": {}}
            wanted.append(r)
        chunks = [cuts[i:i + MAX_THRESHOLDS] for i in range(0, len(cuts), MAX_THRESHOLDS)]
        reqs: list[Request] = [CountAtOrBelow(table=q.table, filters=q.filters, exists=q.exists, column=q.column,
                                              dims=q.group_by, key=list(ordered[r]), thresholds=chunk)
                               for r in wanted for chunk in chunks]
        replies = ctx.ask(reqs) if reqs else {}
        for j, r in enumerate(wanted):
            below = np.zeros(len(cuts), dtype=int)
            for site in names:
                parts: list[int] = []
                for c in range(len(chunks)):
                    part = replies[site][j * len(chunks) + c]
                    assert isinstance(part, AtOrBelow)
                    parts += part.counts
                below += np.asarray(parts, dtype=int)
            n = rows[r]["combined"]["n"]
            for p in q.probs:
                if n * min(p, 1 - p) < k:
                    rows[r]["combined"]["quantiles"][str(p)] = {"suppressed": True,
                                                                "why": f"fewer than {k} rows on one side of it"}
                    continue
                target = math.ceil(p * n - 1e-12)
                i = int(np.searchsorted(below, target, side="left"))  # first cut with F(cut) >= p
                lo = cuts[i - 1] if i > 0 else None
                hi = cuts[i] if i < len(cuts) else None
                rows[r]["combined"]["quantiles"][str(p)] = {
                    "bin": [lo, hi], "value": hi, "error_bound": (hi - lo) if hi is not None and lo is not None
                    else None}
        ctx.result.notes.append(f"quantiles are released as the declared bin (lo, hi] of {q.column} that holds them "
                                f"({grid.describe()}); value = hi, error_bound = the bin's width; exact on that grid")
        return {"statistic": "quantiles", "column": q.column, "dims": q.group_by, "rows": rows}
