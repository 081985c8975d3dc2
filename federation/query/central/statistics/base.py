"""The base of every statistic's central half, and helpers the statistics share.

A statistic is one small class: `names` (what `Query.statistic` says), `check` (what the query must give),
`requests` (the site summaries of its first round: its site half, defined in `query.site.summaries`)
and `combine` (exact combination and suppression, asking more rounds through `ctx.ask` if it needs them).
Subclasses register themselves; `Statistic.for_query` finds the one a query names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from federation.query.central.disclosure import Released, suppress
from federation.query.guard import QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import Answer, Request

if TYPE_CHECKING:
    from federation.query.central.runner import Context

Key = tuple[Any, ...]


class Statistic:
    names: ClassVar[tuple[str, ...]] = ()
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


MAX_GROUPS = 120  # groups (or crosstab cells) per result: bounds the suppression audit's work


def sorted_keys(keys: set[Key]) -> list[Key]:
    if len(keys) > MAX_GROUPS:
        raise QueryRefused(f"the result would have more than {MAX_GROUPS} groups; disclosure control of so many "
                           "small cells is not offered", "group by fewer or coarser columns, or filter first")
    return sorted(keys, key=lambda t: tuple((x is None, str(x)) for x in t))


def cell(v: float) -> Any:
    """A released count, or the mark of a suppressed one."""
    return {"suppressed": True} if np.isnan(v) else int(v)


def count_table(ctx: Context, per_site: dict[str, dict[Key, int]], keys: list[Key], *, totals: bool = True
                ) -> Released:
    """Suppression of counts by group for every site and combined; `totals` when the result releases
    the total over the groups too (a count does; the n behind means and quantiles does not)."""
    sites = ctx.sites
    cells = np.array([[[per_site[s].get(key, 0)] for key in keys] for s in sites], dtype=float)
    return suppress(cells, [ctx.thresholds[s].min_cell for s in sites], ctx.k, col_margin=False, row_margin=totals)
