"""The guards a site node runs before it answers, with its own thresholds (the consortium's, tightened
by the site's configuration). They hold even if the query service were wrong or compromised."""

from __future__ import annotations

from functools import partial

import numpy as np

from federation.query.columns import MISSING, EmptyCellGuard, dictionary_levels
from federation.query.guard import Guard, QueryRefused
from federation.query.site.sql import ident
from federation.query.site.summaries import (
    FootprintSizes,
    HistoryAtoms,
    Model,
    ModelLevels,
    ModelTerms,
    NotTakingPart,
    Request,
    RowCount,
    SiteContext,
    SubsetCount,
    label,
)


class SiteGuard(Guard, abstract=True):
    """Base of the guards that run inside a site node."""

    where = "site"

    @classmethod
    def check(cls, request: Request, ctx: SiteContext) -> None:  # pragma: no cover - every guard defines it
        raise NotImplementedError


class SiteRowsGuard(SiteGuard):
    """A site takes part only with at least min_site_rows rows in the queried table."""

    @classmethod
    def check(cls, request: Request, ctx: SiteContext) -> None:
        if isinstance(request, RowCount | HistoryAtoms | FootprintSizes):
            return  # the history check covers every site that ever answered, whatever its size now
        k = ctx.thresholds.min_site_rows
        if ctx.base_rows(request.table) < k:
            raise NotTakingPart(f"fewer than {k} rows in {request.table}: does not take part")


def small_subset(chosen: int, left: int, k: int) -> bool:
    """A filter that keeps fewer than k units or leaves fewer than k out, *none included*: the answer for 0
    and for 1..k-1 must be the same, or refusals become an oracle (bisection on a threshold finds a patient).
    Units are rows of `patients` and distinct patients of an event table."""
    return chosen < k or left < k


def small_subset_reason(k: int) -> str:
    """The one text for a site left out by a filter: it never says which side was small, nor how small."""
    return (f"takes no part: the filter keeps fewer than {k} rows (or patients) here, or leaves fewer than {k} "
            "out (possibly none)")


class SiteSubsetGuard(SiteGuard):
    """At this site a filter must keep at least min_cell rows and leave at least min_cell out, or the site
    takes no part (the same answer whether the small side holds no row or a few)."""

    @classmethod
    def check(cls, request: Request, ctx: SiteContext) -> None:
        if not request.filtered() or isinstance(request, SubsetCount | HistoryAtoms | FootprintSizes):
            return  # the subset size itself goes to the service's subset guard, which decides the same way
        k = ctx.thresholds.min_cell
        if small_subset(*ctx.subset_units(request.table, request.filters, request.exists), k):
            raise NotTakingPart(small_subset_reason(k))


class SiteModelGuard(SiteGuard):
    """A model needs few parameters for its rows here; and every outcome x category cell at this site (events
    and non-events overall and in each category of each categorical covariate) holds at least min_cell
    patients, or the site takes no part (the same answer for an empty cell as for a small one)."""

    @classmethod
    def check(cls, request: Request, ctx: SiteContext) -> None:
        if not isinstance(request, ModelLevels | ModelTerms):
            return
        data = request.complete_cases(ctx)
        n = len(data[request.covariates[0]])
        k, ratio = ctx.thresholds.min_cell, ctx.thresholds.glm_max_param_ratio
        if isinstance(request, ModelTerms) and request.n_parameters() > ratio * n:
            raise QueryRefused(f"the model has more parameters than {ratio} x the rows at one site",
                               "use fewer covariates or coarser categories")
        y = request.response(data) > 0.5
        if min(int(y.sum()), int((~y).sum())) < k:
            raise NotTakingPart(MODEL_CELLS.format(k=k))
        declared = EmptyCellGuard.enabled()
        if declared:  # the dictionary's levels, not the data's: an absent category is an empty cell, hence small
            levels = request.declared_levels(ctx.policy, ctx.study_id)
            if isinstance(request, ModelTerms) and request.levels != levels:
                raise QueryRefused("the model's categories are not the data dictionary's")
        else:
            levels = request.levels if isinstance(request, ModelTerms) else {
                c: sorted({label(v) for v in data[c]}, key=str) for c in request.categorical(ctx.study_id)}
        for c, wanted in levels.items():
            values = np.array([label(v) for v in data[c]], dtype=object)
            for level in wanted:
                here = values == level
                if (declared or here.any()) and min(int((here & y).sum()), int((here & ~y).sum())) < k:
                    raise NotTakingPart(MODEL_CELLS.format(k=k))



class SiteGroupLevelsGuard(SiteGuard):
    """Where the query policy offers fewer groups of a column than the dictionary declares (values a study
    never uses), a site whose data holds another value, anywhere in the table, takes no part in results
    grouped by that column: its rows would otherwise fall outside every group. Checked on the whole table,
    never on a query's subset, so the answer cannot follow a filter."""

    @classmethod
    def check(cls, request: Request, ctx: SiteContext) -> None:
        if isinstance(request, HistoryAtoms | FootprintSizes):
            return
        grouped = [(table, c) for c, what, _, table in request.uses() if what == "grouping"]
        if isinstance(request, Model):
            grouped += [(request.table, c) for c in request.categorical(ctx.study_id)]
        for table, column in dict.fromkeys(grouped):
            offered = ctx.policy.offered_levels(ctx.study_id, column)
            full = dictionary_levels(ctx.study_id, table, column)
            if offered is None or full is None or set(full) <= set(offered):
                continue
            values = [v for v in offered if v != MISSING]
            cond = f"{ident(column)} IS NULL" if MISSING not in offered else "FALSE"
            if values:
                cond += f" OR {ident(column)} NOT IN ({', '.join('?' for _ in values)})"
            sql = f"SELECT count(*) FROM unit_{table} WHERE {cond}"
            params: list[object] = list(values)
            outside = ctx.once(("outside", sql, repr(params)), partial(_count, ctx, sql, params))
            if outside:
                raise NotTakingPart(f"takes no part: its data holds values of {column} outside the groups the query "
                                    "policy offers (the data team must add them to group_levels)")


def _count(ctx: SiteContext, sql: str, params: list[object]) -> int:
    return int(ctx.data.sql(sql, params)[0][0])


MODEL_CELLS = ("takes no part in this model: an outcome x category cell here (events or non-events, overall or "
               "in one category) holds fewer than {k} patients (possibly none)")


SITE_GUARDS: list[type[SiteGuard]] = [SiteRowsGuard, SiteSubsetGuard, SiteModelGuard, SiteGroupLevelsGuard]
