"""Sums, means and variances of a numeric column by group, merged exactly (site half: `ColumnMoments`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from federation.query.central.combine import merge_moments
from federation.query.central.statistics.base import Statistic, count_table, group_keys, shared_pattern
from federation.query.central.statistics.counts import check_filters
from federation.query.columns import NUMERIC, require
from federation.query.guard import QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import Answer, ColumnMoments, Counts, GroupCounts, Moments, Request

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
        return [ColumnMoments(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by, column=q.column),
                GroupCounts(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by)]

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        q = ctx.query
        per_site: dict[str, dict[tuple[Any, ...], tuple[int, float, float]]] = {}
        patients: dict[str, dict[tuple[Any, ...], int]] = {}
        rows: dict[str, Counts] = {}
        for site, (moments, group_rows) in answers.items():
            assert isinstance(moments, Moments) and isinstance(group_rows, Counts)
            per_site[site] = {tuple(c.key): (c.n, c.mean, c.m2) for c in moments.cells}
            patients[site] = {tuple(c.key): c.patients or 0 for c in moments.cells}
            rows[site] = group_rows
        keys = group_keys(ctx, {key for c in per_site.values() for key in c}
                         | {tuple(c.key) for a in rows.values() for c in a.cells})
        names = ctx.sites
        counts = {s: {key: per_site[s].get(key, EMPTY)[0] for key in keys} for s in names}
        rel = count_table(ctx, counts, keys, totals=False, patients=patients if q.table != "patients" else None)
        hidden = np.isnan(rel.values[:, :len(keys), 0]) | shared_pattern(ctx, rows, keys)
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

        out = []
        for r, key in enumerate(keys):
            merged = merge_moments(per_site[s].get(key, EMPTY) for s in names)
            out.append({"group": list(key), "combined": describe(merged, bool(hidden[S, r])),
                        "per_site": {s: describe(per_site[s].get(key, EMPTY), bool(hidden[i, r]))
                                     for i, s in enumerate(names)}})
        ctx.result.notes.append("no minimum or maximum is released; means and variances are exact (Chan's merge)")
        return {"statistic": q.statistic, "column": q.column, "dims": q.group_by, "rows": out}
