"""The guards a site node runs before it answers, with its own thresholds (the consortium's, tightened
by the site's configuration). They hold even if the query service were wrong or compromised."""

from __future__ import annotations

from federation.query.guard import Guard, QueryRefused
from federation.query.site.summaries import (
    FootprintSizes,
    HistoryAtoms,
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


def small_subset(base: int, chosen: int, k: int) -> bool:
    """A filter that keeps fewer than k rows or leaves fewer than k out, *none included*: the answer for 0 and
    for 1..k-1 must be the same, or refusals become an oracle (bisection on a threshold finds a patient)."""
    return chosen < k or base - chosen < k


def small_subset_reason(k: int) -> str:
    """The one text for a site left out by a filter: it never says which side was small, nor how small."""
    return (f"takes no part: the filter keeps fewer than {k} rows here, or leaves fewer than {k} out "
            "(possibly none)")


class SiteSubsetGuard(SiteGuard):
    """At this site a filter must keep at least min_cell rows and leave at least min_cell out, or the site
    takes no part (the same answer whether the small side holds no row or a few)."""

    @classmethod
    def check(cls, request: Request, ctx: SiteContext) -> None:
        if not request.filtered() or isinstance(request, SubsetCount | HistoryAtoms | FootprintSizes):
            return  # the subset size itself goes to the service's subset guard, which decides the same way
        k = ctx.thresholds.min_cell
        if small_subset(ctx.base_rows(request.table), ctx.chosen_rows(request.table, request.filters,
                                                                       request.exists), k):
            raise NotTakingPart(small_subset_reason(k))


class SiteModelGuard(SiteGuard):
    """A model needs few parameters for its rows, and enough events, non-events and rows per category, here."""

    @classmethod
    def check(cls, request: Request, ctx: SiteContext) -> None:
        if not isinstance(request, ModelTerms):
            return
        data = request.complete_cases(ctx)
        n = len(data[request.covariates[0]])
        k, ratio = ctx.thresholds.min_cell, ctx.thresholds.glm_max_param_ratio
        n_params = request.n_parameters()
        if n_params > ratio * n:
            raise QueryRefused(f"the model has {n_params} parameters, more than {ratio} x the rows at one site",
                               "use fewer covariates or coarser categories")
        events = int(request.response(data).sum())
        what = "outcome" if request.model == "logistic" else f"{request.endpoint.upper()} endpoint"
        if 0 < events < k or 0 < n - events < k:
            raise QueryRefused(f"the {what} has fewer than {k} events or non-events at one site",
                               "choose a more common outcome")
        for c, levels in request.levels.items():
            values = [label(v) for v in data[c]]
            for level in levels:
                m = values.count(level)
                if 0 < m < k:
                    raise QueryRefused(f"category {c} = {level} has fewer than {k} rows at one site",
                                       f"merge rare categories of {c} or leave it out")


SITE_GUARDS: list[type[SiteGuard]] = [SiteRowsGuard, SiteSubsetGuard, SiteModelGuard]
