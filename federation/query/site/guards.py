"""The guards a site node runs before it answers, with its own thresholds (the consortium's, tightened
by the site's configuration). They hold even if the query service were wrong or compromised."""

from __future__ import annotations

from federation.query.guard import Guard, QueryRefused
from federation.query.site.summaries import (
    DifferenceCounts,
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
        if isinstance(request, RowCount):
            return
        k = ctx.thresholds.min_site_rows
        if ctx.base_rows(request.table) < k:
            raise NotTakingPart(f"fewer than {k} rows in {request.table}: does not take part")


class SiteSubsetGuard(SiteGuard):
    """At this site a filter must keep 0 or at least min_cell rows, and leave 0 or at least min_cell out."""

    @classmethod
    def check(cls, request: Request, ctx: SiteContext) -> None:
        if not request.filtered() or isinstance(request, SubsetCount | DifferenceCounts):
            return  # the subset size itself goes to the service's subset guard, which refuses the same way
        k = ctx.thresholds.min_cell
        base = ctx.base_rows(request.table)
        chosen = ctx.chosen_rows(request.table, request.filters, request.exists)
        if 0 < chosen < k or 0 < base - chosen < k:
            raise QueryRefused(
                f"the filter selects fewer than {k} rows, or leaves fewer than {k} rows out, at one or more "
                "sites: comparing it with the unfiltered result would isolate a few patients",
                "use a broader filter, or group by the variable instead of filtering on it")


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
