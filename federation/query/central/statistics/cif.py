"""Cumulative incidence with competing risks (Aalen-Johansen) on the policy's grid (site half: `KmCounts` with
a cause).

In pediatric oncology relapse, death in remission and second cancers compete: one minus a Kaplan-Meier curve
of relapse (deaths censored) overstates it. Per group and grid interval each site returns the number at risk,
all first events and those of the asked cause (`Query.cause`, values of `first_event`; every other first event
competes); summed, they give the pooled Aalen-Johansen estimate of the cause and of the competing events on
that grid exactly, with statsmodels' delta-method variance. Both curves of a group step together: a point is
released only with at least k at risk and at least k events of the cause and k competing events since the
previous released point (the two curves and the event-free survival add up to one, so a point of one with a
small step of the other would show that step). Per-site curves and the numbers at risk follow the
Kaplan-Meier rules. A result by groups carries the log-rank test of the cause-specific hazards of the shown
groups (competing events censored), unstratified and stratified by site, over the whole follow-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from federation.query.central.combine import log_log_ci
from federation.query.central.statistics.km import KaplanMeier, Parts
from federation.query.central.survival import aalen_johansen, gray_test, logrank
from federation.query.columns import EmptyCellGuard, declared_levels, require
from federation.query.guard import Guard, QueryRefused
from federation.query.model import CAUSE_COLUMN, Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import KmCounts, Request

if TYPE_CHECKING:
    from federation.query.central.runner import Context


class CumulativeIncidence(KaplanMeier):
    names = ("cif",)

    def check(self, q: Query, policy: QueryPolicy) -> None:
        if q.endpoint not in CAUSE_COLUMN:
            raise QueryRefused("competing risks are the causes of a first event: use --endpoint efs (relapse, "
                               "progression, death, second cancer) or --endpoint late_effect (a late effect's "
                               "category, death)")
        example = ("--cause RELAPSE --cause PROGRESSION (death and second cancers compete)" if q.endpoint == "efs"
                   else "--cause HEARING, or every category but DEATH for any late effect (death competes)")
        if not q.cause:
            raise QueryRefused("a cumulative incidence needs the cause of interest", f"give --cause, e.g. {example}")
        column = CAUSE_COLUMN[q.endpoint]
        require(policy, q.study_id, q.table, column, "the cause of an event")
        codes = [c for c in declared_levels(policy, q.study_id, "patients", column, []) or [] if c != "NONE"]
        unknown = [c for c in q.cause if c not in codes]
        if unknown or len(set(q.cause)) == len(codes):
            raise QueryRefused(f"the cause must be some, not all, of the first events {', '.join(map(str, codes))}"
                               + (f" ({', '.join(unknown)} is not one)" if unknown else ""), f"e.g. {example}")
        super().check(q, policy)

    def requests(self, q: Query) -> list[Request]:
        return [KmCounts(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by, endpoint=q.endpoint,
                         grid_days=q.grid_days, horizon_days=self.test_horizon or q.horizon_days, cause=q.cause)]

    def series(self, parts: Parts) -> tuple[np.ndarray, ...]:
        return (parts[0], parts[3], parts[1] - parts[3]) if CompetingStepGuard.enabled() else (parts[0], parts[3])

    def curve(self, parts: Parts, grid: np.ndarray, k: int, only: set[int] | None = None,
              risk_ok: set[int] | None = None) -> dict[str, Any]:
        return release_incidence(parts[0], parts[1], parts[3], grid, k, only=only, risk_ok=risk_ok,
                                 censored=parts[2])

    def note(self, q: Query, k: int) -> str:
        return (f"Cumulative incidence (Aalen-Johansen) of {'/'.join(q.cause)} with the other first events "
                f"competing, on a grid of {q.grid_days:g} days: per interval, sites return the number at risk, all "
                "first events and those of the cause; the combined curves equal the pooled estimates on this grid. "
                f"A point is released only with at least {k} at risk and at least {k} events of the cause and {k} "
                "competing events since the previous released point.")

    def test_kinds(self) -> dict[str, Callable[[np.ndarray], Any]]:
        """Gray's test of the incidence curves, and the log-rank test of the cause-specific hazards (competing
        events censored)."""
        return {"gray": lambda c: gray_test(c[:, :, 0], c[:, :, 3], c[:, :, 1] - c[:, :, 3]),
                "logrank": lambda c: logrank(c[:, :, 0], c[:, :, 3])}

    def finish(self, ctx: Context) -> None:
        """The tests (no median: an incidence need not reach one half)."""
        if ctx.query.group_by:
            tests = self.tests(ctx)
            cause = "/".join(ctx.query.cause)
            for name, t in tests.items():
                t["hazard"] = (f"subdistribution (Gray): the cumulative incidence of {cause}" if name.startswith("gray")
                               else f"cause-specific: {cause} (competing events censored)")
            ctx.result.payload["tests"] = tests


class CompetingStepGuard(Guard):
    """A cumulative incidence shows a point only after k events of the cause and k competing events."""


def release_incidence(at_risk: np.ndarray, events: np.ndarray, cause_events: np.ndarray, grid: np.ndarray, k: int,
                      only: set[int] | None = None, risk_ok: set[int] | None = None,
                      censored: np.ndarray | None = None) -> dict[str, Any]:
    """The released points of one group's two curves (the cause's incidence and the competing events'); for
    per-site curves `only` are the points where every site's curves may be shown."""
    other_events = events - cause_events
    mine, mine_var = aalen_johansen(at_risk, events, cause_events)
    other, other_var = aalen_johansen(at_risk, events, other_events)
    empty_small = EmptyCellGuard.enabled()

    def risk(j: int) -> Any:
        n = int(at_risk[j])
        shown = (n >= k or (n == 0 and not empty_small)) and (risk_ok is None or j in risk_ok)
        return n if shown else {"suppressed": True}

    def small(n: int) -> bool:
        return n < k and (n > 0 or empty_small)

    points = [{"day": 0.0, "incidence": 0.0, "ci95": [0.0, 0.0], "competing": 0.0, "competing_ci95": [0.0, 0.0],
               "at_risk": risk(0) if len(at_risk) else 0}]
    since_mine = since_other = gone = 0
    lost = censored if censored is not None else np.zeros(len(at_risk), int)
    for j in range(len(at_risk)):
        since_mine += int(cause_events[j])
        since_other += int(other_events[j])
        gone += int(lost[j])
        if at_risk[j] < k:
            break  # fewer than k at risk: the curves stop here
        if (only is not None and j not in only) or small(since_mine) or (small(since_other)
                                                                         and CompetingStepGuard.enabled()):
            continue
        points.append({"day": float(grid[j + 1]), "incidence": float(mine[j]),
                       "ci95": list(log_log_ci(float(mine[j]), float(mine_var[j]))),
                       "competing": float(other[j]),
                       "competing_ci95": list(log_log_ci(float(other[j]), float(other_var[j]))),
                       "at_risk": risk(j + 1) if j + 1 < len(at_risk) else {"suppressed": True},
                       **({"censored_since": gone >= k} if censored is not None else {})})
        since_mine = since_other = gone = 0
    return {"points": points}
