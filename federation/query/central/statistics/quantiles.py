"""Quantiles of a numeric column by federated search on counts (site halves: `ValueBracket`, `CountAtOrBelow`).

The combined quantile is the smallest c with F(c) >= p (inverse empirical CDF). Each round asks every
site how many values lie at or below 31 evenly spaced candidates inside the current bracket, so the bracket
shrinks 32-fold per round; the released value is within its stated error bound above the exact pooled
quantile. Only combined values are released.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from federation.query.central.statistics.base import Statistic, count_table, sorted_keys
from federation.query.central.statistics.counts import check_filters
from federation.query.columns import NUMERIC, require
from federation.query.guard import QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import Answer, AtOrBelow, Brackets, CountAtOrBelow, Request, ValueBracket

if TYPE_CHECKING:
    from federation.query.central.runner import Context

QUANTILE_TOL = 1e-6
CANDIDATES = 31
MAX_ROUNDS = 40


class Quantiles(Statistic):
    names = ("quantiles",)

    def check(self, q: Query, policy: QueryPolicy) -> None:
        check_filters(q, policy)
        if not q.column:
            raise QueryRefused("quantiles need a numeric --column")
        require(policy, q.study_id, q.table, q.column, "quantiles", NUMERIC)
        bad = [p for p in q.probs if p not in policy.disclosure.quantile_probs]
        if bad:
            raise QueryRefused(f"quantiles {bad} are not released (extreme quantiles reveal single patients)",
                               f"ask for probabilities among {list(policy.disclosure.quantile_probs)}")

    def requests(self, q: Query) -> list[Request]:
        assert q.column
        return [ValueBracket(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by, column=q.column)]

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        q = ctx.query
        assert q.column
        n_per: dict[str, dict[tuple[Any, ...], int]] = {}
        bracket = [math.inf, -math.inf]
        for site, (brackets,) in answers.items():
            assert isinstance(brackets, Brackets)
            n_per[site] = {tuple(c.key): c.n for c in brackets.cells}
            for c in brackets.cells:  # the bracket only bounds the search; it is never released
                bracket = [min(bracket[0], c.low), max(bracket[1], c.high)]
        ordered = sorted_keys({key for c in n_per.values() for key in c}) or [()]
        names = ctx.sites
        rel = count_table(ctx, {s: {key: n_per[s].get(key, 0) for key in ordered} for s in names}, ordered,
                          totals=False)
        S, k = len(names), ctx.k
        tol = max(QUANTILE_TOL * max(bracket[1] - bracket[0], 1.0), 1e-9)
        rows: list[dict[str, Any]] = []
        searches: dict[tuple[int, str], list[float]] = {}  # (row, prob) -> [lo, hi, target]
        for r, key in enumerate(ordered):
            n = sum(n_per[s].get(key, 0) for s in names)
            row: dict[str, Any] = {"group": list(key)}
            rows.append(row)
            if np.isnan(rel.values[S, r, 0]) or n == 0:
                row["combined"] = {"suppressed": True}
                continue
            row["combined"] = {"n": n, "quantiles": {}}
            for p in q.probs:
                if n * min(p, 1 - p) < k:
                    row["combined"]["quantiles"][str(p)] = {"suppressed": True,
                                                            "why": f"fewer than {k} rows on one side of it"}
                else:
                    row["combined"]["quantiles"][str(p)] = None
                    searches[(r, str(p))] = [bracket[0] - tol, bracket[1], math.ceil(p * n - 1e-12)]
        for _ in range(MAX_ROUNDS):
            active = [(rp, s) for rp, s in searches.items() if s[1] - s[0] > tol]
            if not active:
                break
            grids = [[s[0] + (s[1] - s[0]) * i / (CANDIDATES + 1) for i in range(1, CANDIDATES + 1)]
                     for _, s in active]
            reqs: list[Request] = [CountAtOrBelow(table=q.table, filters=q.filters, exists=q.exists, column=q.column,
                                                  dims=q.group_by, key=list(ordered[r]), thresholds=grid)
                                   for ((r, _), _), grid in zip(active, grids, strict=True)]
            replies = ctx.ask(reqs)
            for j, ((_, s), grid) in enumerate(zip(active, grids, strict=True)):
                counts = np.zeros(len(grid), dtype=int)
                for site in names:
                    below = replies[site][j]
                    assert isinstance(below, AtOrBelow)
                    counts += np.asarray(below.counts, dtype=int)
                first = int(np.searchsorted(counts, s[2], side="left"))  # counts rise with the candidate
                if first < len(grid):
                    s[1] = grid[first]
                if first > 0:
                    s[0] = grid[first - 1]
        for (r, prob), (lo, hi, _) in searches.items():
            rows[r]["combined"]["quantiles"][prob] = {"value": hi, "error_bound": hi - lo}
        ctx.result.notes.append(f"quantiles by federated search on counts (inverse empirical CDF); each value is "
                                f"within its error_bound (<= {tol:.3g}) above the exact pooled quantile; only "
                                "combined values are released")
        return {"statistic": "quantiles", "column": q.column, "dims": q.group_by, "rows": rows}
