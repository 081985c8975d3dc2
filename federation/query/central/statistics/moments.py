"""Sums, means and variances of a numeric column by group, merged exactly (site half: `ColumnMoments`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from federation.query.central.combine import merge_moments
from federation.query.central.statistics.base import Statistic, count_table, sorted_keys
from federation.query.central.statistics.counts import check_filters
from federation.query.columns import NUMERIC, require
from federation.query.guard import QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import Answer, ColumnMoments, Moments, Request

if TYPE_CHECKING:
    from federation.query.central.runner import Context

EMPTY = (0, 0.0, 0.0)


class MomentStatistic(Statistic):
    names = ("sum", "mean", "variance")

    def check(self, q: Query, policy: QueryPolicy) -> None:
        check_filters(q, policy)
        if not q.column:
            raise QueryRefused(f"{q.statistic} needs a numeric --column")
        require(policy, q.study_id, q.table, q.column, q.statistic, NUMERIC)

    def requests(self, q: Query) -> list[Request]:
        assert q.column
        return [ColumnMoments(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by, column=q.column)]

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        q = ctx.query
        per_site: dict[str, dict[tuple[Any, ...], tuple[int, float, float]]] = {}
        for site, (moments,) in answers.items():
            assert isinstance(moments, Moments)
            per_site[site] = {tuple(c.key): (c.n, c.mean, c.m2) for c in moments.cells}
        keys = sorted_keys({key for c in per_site.values() for key in c}) or [()]
        names = ctx.sites
        counts = {s: {key: per_site[s].get(key, EMPTY)[0] for key in keys} for s in names}
        rel = count_table(ctx, counts, keys, totals=False)
        S = len(names)

        def describe(m: tuple[int, float, float], hidden: bool) -> dict[str, Any]:
            n, mean, m2 = m
            if hidden or n == 0:
                return {"suppressed": True} if hidden else {"n": 0}
            var = m2 / (n - 1) if n > 1 else float("nan")
            out: dict[str, Any] = {"n": n, "mean": mean, "variance": var, "sd": math.sqrt(var) if n > 1 else None}
            if q.statistic == "sum":
                out["sum"] = mean * n
            return out

        rows = []
        for r, key in enumerate(keys):
            merged = merge_moments(per_site[s].get(key, EMPTY) for s in names)
            rows.append({"group": list(key), "combined": describe(merged, bool(np.isnan(rel.values[S, r, 0]))),
                         "per_site": {s: describe(per_site[s].get(key, EMPTY), bool(np.isnan(rel.values[i, r, 0])))
                                      for i, s in enumerate(names)}})
        ctx.result.notes.append("no minimum or maximum is released; means and variances are exact (Chan's merge)")
        return {"statistic": q.statistic, "column": q.column, "dims": q.group_by, "rows": rows}
