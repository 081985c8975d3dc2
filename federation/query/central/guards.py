"""The guards the query service runs on the sites' first answers, before anything is combined.

Each guard asks the sites for what it needs in the first round (`requests`) and then refuses the query,
or restricts what is released (`check`). Suppression of small cells is a guard too
(`disclosure.ComplementarySuppressionGuard`).
"""

from __future__ import annotations

from typing import Any

from federation.query.central.runner import Context
from federation.query.guard import Guard, QueryRefused
from federation.query.model import Query
from federation.query.site.guards import small_subset, small_subset_reason
from federation.query.site.summaries import (
    Answer,
    DifferenceCounts,
    Differences,
    Earlier,
    Request,
    SubsetCount,
    SubsetSize,
)


class CentralGuard(Guard, abstract=True):
    """Base of the guards that run in the query service."""

    def requests(self, ctx: Context) -> list[Request]:
        return []

    def check(self, ctx: Context, answers: dict[str, list[Answer]]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SubsetGuard(CentralGuard):
    """A filter must keep at least k rows and leave at least k out at a site, or that site takes no part
    (none counts as fewer than k, so the answer never tells an empty subset from a small one)."""

    def requests(self, ctx: Context) -> list[Request]:
        q = ctx.query
        return [SubsetCount(table=q.table, filters=q.filters, exists=q.exists)] if q.filters or q.exists else []

    def check(self, ctx: Context, answers: dict[str, list[Answer]]) -> None:
        if not ctx.query.filters and not ctx.query.exists:
            return
        for site, (size,) in answers.items():
            assert isinstance(size, SubsetSize)
            ks = ctx.thresholds[site].min_cell
            if small_subset(size.base, size.chosen, ks):
                ctx.exclude(site, small_subset_reason(ks))
        if not ctx.sites:
            raise QueryRefused("no site can take part in this query: " + small_subset_reason(ctx.policy.disclosure
                                                                                              .min_cell),
                               "use a broader filter, or group by the variable instead of filtering on it")


def small_difference(only_new: int, only_old: int, k: int) -> bool:
    """Nested subsets whose difference is a few rows: subtracting the two results isolates them."""
    return (only_new == 0 and 0 < only_old < k) or (only_old == 0 and 0 < only_new < k)


class DifferencingGuard(CentralGuard):
    """Two released results on rows that differ by a few patients in some cell must not both be shown."""

    def _earlier(self, ctx: Context) -> list[tuple[dict[str, Any], Query]]:
        q = ctx.query
        lookback = ctx.policy.disclosure.differencing_lookback
        out: list[tuple[dict[str, Any], Query]] = []
        # the lookback counts only earlier queries on the same study and table: unrelated queries cannot
        # push a comparable one out of view
        for entry in reversed(ctx.history):
            if len(out) >= lookback:
                break
            query = entry.get("query") or {}
            if query.get("study_id") != q.study_id or query.get("table", "patients") != q.table:
                continue
            try:
                old = Query.model_validate(query)
            except ValueError:
                continue
            if (old.filters, old.exists) != (q.filters, q.exists):
                out.append((entry, old))
        return out

    def requests(self, ctx: Context) -> list[Request]:
        q = ctx.query
        self.compared = self._earlier(ctx)
        if not self.compared:
            return []
        return [DifferenceCounts(table=q.table, filters=q.filters, exists=q.exists,
                                 earlier=[Earlier(filters=old.filters, exists=old.exists,
                                                  dims=[d for d in q.group_by if d in old.group_by])
                                          for _, old in self.compared])]

    def check(self, ctx: Context, answers: dict[str, list[Answer]]) -> None:
        if not self.compared:
            return
        k = ctx.k
        for i, (entry, old) in enumerate(self.compared):
            combined: dict[tuple[Any, ...], list[int]] = {}
            old_had_sites = bool(entry.get("released", {}).get("per_site", True))
            for site, (diff,) in answers.items():
                assert isinstance(diff, Differences)
                for cell in diff.items[i]:
                    total = combined.setdefault(tuple(cell.key), [0, 0])
                    total[0] += cell.only_new
                    total[1] += cell.only_old
                    if old_had_sites and small_difference(cell.only_new, cell.only_old,
                                                          ctx.thresholds[site].min_cell):
                        ctx.combined_only = True
            if any(small_difference(a, b, k) for a, b in combined.values()):
                raise QueryRefused(
                    f"this query and your earlier query #{entry['id']} ({old.describe()}) differ by fewer than {k} "
                    "rows in a cell: subtracting one result from the other would isolate a few patients "
                    "(differencing)",
                    "ask for the groups you compare directly, e.g. with --by, so that disclosure control covers them")


CENTRAL_GUARDS: list[type[CentralGuard]] = [SubsetGuard, DifferencingGuard]
