"""Kaplan-Meier curves on a shared grid, with risk tables (site half: `KmCounts`).

Per grid interval each site returns the number at risk at its start, events and censorings; summed, they
give the pooled Kaplan-Meier estimate on that grid exactly. A point is released only with at least k at
risk and at least k events since the previous released point (none is as few as 1..k-1: a flat step would
tell that no one had an event there); per-site curves only at points
where every site's curve may be shown, so that no site can be subtracted from the combined curve.

Each released curve carries its median survival with a confidence interval, read from its released points
(`survival.median_from_points`), and a result by groups carries the log-rank test of the groups whose curves
are shown, unstratified and stratified by site, over the whole follow-up (`survival.logrank`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from federation.query.central.combine import km_from_counts, log_log_ci
from federation.query.central.statistics.base import SharedSuppressionGuard, Statistic, count_table, group_keys
from federation.query.central.statistics.counts import check_filters
from federation.query.central.survival import logrank, median_from_points, restricted_mean
from federation.query.columns import EmptyCellGuard, check_km_grid, require
from federation.query.guard import Guard, QueryRefused
from federation.query.model import Query
from federation.query.policy import EffectiveThresholds, QueryPolicy
from federation.query.site.summaries import MAX_GRID_INTERVALS, Answer, KmCounts, KmIntervals, Request

if TYPE_CHECKING:
    from federation.query.central.runner import Context

Parts = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # at risk, events, censored, events of the cause


class KaplanMeier(Statistic):
    names = ("km",)

    def __init__(self) -> None:
        self.test_horizon: float | None = None  # the follow-up the survival tests cover (`check`)
        self.counts: dict[str, dict[tuple[Any, ...], Parts]] = {}  # per site and group, to the test horizon
        self.keys: list[tuple[Any, ...]] = []

    def check(self, q: Query, policy: QueryPolicy) -> None:
        check_filters(q, policy)
        if q.table != "patients":
            raise QueryRefused("survival models are computed on patients", "use --table patients")
        for column in (f"{q.endpoint}_days", f"{q.endpoint}_event"):
            require(policy, q.study_id, q.table, column, "time to event")  # a v1 study has no late_effect
        check_km_grid(policy, q.grid_days, q.horizon_days)
        self.test_horizon = q.horizon_days
        if WholeFollowUpGuard.enabled():
            whole = max(q.horizon_days, policy.disclosure.km_max_horizon_days)
            # a grid too fine for the whole follow-up (only a policy declaring daily grids has one): no test
            self.test_horizon = whole if whole / q.grid_days <= MAX_GRID_INTERVALS else None

    def requests(self, q: Query) -> list[Request]:
        # one request for the curve and the tests: the counts to the tests' horizon (the curve uses the first)
        return [KmCounts(table=q.table, filters=q.filters, exists=q.exists, dims=q.group_by, endpoint=q.endpoint,
                         grid_days=q.grid_days, horizon_days=self.test_horizon or q.horizon_days)]

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        q = ctx.query
        grid = np.arange(0.0, q.horizon_days + q.grid_days, q.grid_days)
        n_int = len(grid) - 1
        per_site: dict[str, dict[tuple[Any, ...], Parts]] = {}
        for site, (km,) in answers.items():
            assert isinstance(km, KmIntervals)
            self.counts[site] = {tuple(g.key): (np.asarray(g.at_risk, int), np.asarray(g.events, int),
                                                np.asarray(g.censored, int),
                                                np.asarray(g.cause_events if g.cause_events is not None
                                                           else np.zeros(len(g.events)), int))
                                 for g in km.groups}
            per_site[site] = {key: (a[:n_int], e[:n_int], c[:n_int], ce[:n_int])
                              for key, (a, e, c, ce) in self.counts[site].items()}
        keys = self.keys = group_keys(ctx, {key for c in per_site.values() for key in c})
        names = ctx.sites
        zero = (np.zeros(n_int, int),) * 4
        k = ctx.k
        empty_small = EmptyCellGuard.enabled()  # no one at risk is shown like 1..k-1 at risk
        # the number at risk at day 0 is each group's count: hidden at least where the count of the same
        # patients by the same groups (with its totals) hides it, with the curve that would reveal it
        start = {s: {key: int(per_site[s].get(key, zero)[0][:1].sum()) for key in keys} for s in names}
        hidden = np.isnan(count_table(ctx, start, keys, totals=True).values[:, :len(keys), 0])
        if not SharedSuppressionGuard.enabled():
            hidden[:] = False
        curves = []
        for r, key in enumerate(keys):
            parts = {s: per_site[s].get(key, zero) for s in names}
            summed: Parts = tuple(np.asarray(sum(p[i] for p in parts.values())) for i in range(4))  # type: ignore[assignment]
            at_risk = summed[0]
            common = common_points({s: self.series(parts[s]) for s in names}, ctx.thresholds)
            # a number at risk (a site's, or the combined one) is shown only where every site's is at least its k
            # (or 0, with the empty-cell guard off): then neither a site insider, nor two site selections (all
            # sites, all but one), nor the per-site curves with the combined one can leave 0..k-1 patients at risk
            risk_ok = {j for j in range(n_int)
                       if all(parts[s][0][j] >= ctx.thresholds[s].min_cell or (parts[s][0][j] == 0 and not empty_small)
                              for s in names)}
            if not SiteRiskGuard.enabled():
                risk_ok = set(range(n_int))
            combined = self.curve(summed, grid, k, risk_ok=risk_ok)
            combined["risk_table"] = risk_table(at_risk, grid, k, risk_ok=risk_ok)
            site_curves = {s: dict(WITHHELD) if hidden[i, r] else
                           self.curve(parts[s], grid, ctx.thresholds[s].min_cell, only=common, risk_ok=risk_ok)
                           for i, s in enumerate(names)}
            if hidden[len(names), r]:
                combined = {**WITHHELD, "risk_table": risk_table(at_risk, grid, k, risk_ok=set())}
            curves.append({"group": list(key), "combined": combined, "per_site": site_curves})
        ctx.result.notes.append(self.note(q, k))
        return {"statistic": q.statistic, "endpoint": q.endpoint, "grid_days": q.grid_days, "dims": q.group_by,
                **({"cause": q.cause} if q.statistic == "cif" else {}), "curves": curves}

    def series(self, parts: Parts) -> tuple[np.ndarray, ...]:
        """A site's number at risk and the event counts whose steps a curve shows (for `common_points`)."""
        return parts[0], parts[1]

    def curve(self, parts: Parts, grid: np.ndarray, k: int, only: set[int] | None = None,
              risk_ok: set[int] | None = None) -> dict[str, Any]:
        return release_curve(parts[0], parts[1], grid, k, only=only, risk_ok=risk_ok, censored=parts[2])

    def note(self, q: Query, k: int) -> str:
        return (f"Kaplan-Meier on a grid of {q.grid_days:g} days: per interval, sites return the number at risk, "
                "events and censorings; the combined curve equals the pooled estimate on this grid. A point is "
                f"released only with at least {k} at risk and at least {k} events since the previous released point.")


    def finish(self, ctx: Context) -> None:
        """On the result as disclosure control left it: each shown curve's median from its own points, and the
        log-rank tests of the groups whose combined curves are shown."""
        payload = ctx.result.payload
        for r, curve in enumerate(payload["curves"]):
            for value in [curve["combined"], *curve["per_site"].values()]:
                if not curve_hidden(value):
                    value["median"] = median_from_points(value["points"])
            if not curve_hidden(curve["combined"]):
                curve["combined"]["rmst"] = self.rmst(ctx, self.keys[r], curve["combined"]["points"])
        if ctx.query.group_by:
            payload["tests"] = self.tests(ctx)
            payload["rmst_differences"] = rmst_differences(payload["curves"])


    def rmst(self, ctx: Context, key: tuple[Any, ...], points: list[dict[str, Any]]) -> dict[str, Any]:
        """The restricted mean survival time of a combined curve to the query's horizon: the area under the
        curve as shown (`survival.restricted_mean`), only where it shows a point at the horizon (after its last
        point the curve may have stopped for want of patients at risk)."""
        q = ctx.query
        tau = q.horizon_days
        shown = [float(p["day"]) for p in points]
        if not any(abs(d - tau) < 1e-6 for d in shown):
            near = sorted(shown[1:], key=lambda d: abs(d - tau))[:2]
            return {"horizon_days": tau, "withheld": True,
                    "reason": f"the curve shows no point at day {tau:g}" + (
                        "; ask with the horizon at a day it shows, e.g. " + " or ".join(f"{d:g}" for d in sorted(near))
                        if near else "")}
        n_int = len(np.arange(0.0, (self.test_horizon or q.horizon_days) + q.grid_days, q.grid_days)) - 1
        zero = (np.zeros(n_int, int),) * 4  # a site without the group (every site's counts have this length)
        parts = [self.counts[s].get(key, zero) for s in ctx.sites]
        at_risk = sum((p[0] for p in parts), np.zeros(n_int, int))
        events = sum((p[1] for p in parts), np.zeros(n_int, int))
        surv, var = km_from_counts(at_risk, events)
        index = [int(round(d / q.grid_days)) - 1 for d in shown]  # a point at day grid[j + 1] ends interval j
        greenwood = [0.0] + [float(var[j] / surv[j] ** 2) if surv[j] > 0 else 0.0 for j in index[1:]]
        levels = [float(p["survival"]) for p in points]
        if not RmstOfShownCurveGuard.enabled():  # the area under the curve on every grid interval
            levels = [1.0, *surv[: index[-1] + 1].tolist()]
            shown = [float(q.grid_days * i) for i in range(index[-1] + 2)]
            greenwood = [0.0, *[float(var[j] / surv[j] ** 2) if surv[j] > 0 else 0.0 for j in range(index[-1] + 1)]]
        value, variance = restricted_mean(shown, levels, greenwood)
        half = 1.959963984540054 * float(np.sqrt(variance))
        return {"horizon_days": tau, "days": value, "se": float(np.sqrt(variance)),
                "ci95": [value - half, value + half]}

    def tests(self, ctx: Context) -> dict[str, Any]:
        """The tests of the groups whose combined curves are shown, each unstratified and stratified by site
        (`<name>` and `<name>_stratified_by_site`), over the whole follow-up; withheld with the reason."""
        q = ctx.query
        curves = ctx.result.payload["curves"]
        names = ctx.sites
        n_int = len(np.arange(0.0, (self.test_horizon or q.horizon_days) + q.grid_days, q.grid_days)) - 1
        zero = (np.zeros(n_int, int),) * 4
        if ShownGroupsGuard.enabled():  # a curve showing a step after day 0: at least k events of what it counts
            chosen = [r for r, c in enumerate(curves)
                      if not curve_hidden(c["combined"]) and len(c["combined"].get("points") or []) > 1]
        else:
            chosen = [r for r, key in enumerate(self.keys)
                      if any(self.counts[s].get(key, zero)[0][:1].sum() for s in names)]
        left_out = [curves[r]["group"] for r in range(len(curves)) if r not in chosen]
        about = {"groups": [curves[r]["group"] for r in chosen], "left_out": left_out,
                 "follow_up_days": self.test_horizon}
        kinds = [f"{name}{how}" for name in self.test_kinds() for how in ("", "_stratified_by_site")]
        reason = None
        if self.test_horizon is None:
            reason = (f"the grid of {q.grid_days:g} days is too fine for a test over the whole follow-up "
                      f"(more than {MAX_GRID_INTERVALS} intervals)")
        elif len(chosen) < 2:
            reason = "fewer than two groups have a curve that shows a step (at least k events)"
        if reason is not None:
            return {name: {"withheld": True, "reason": reason, **about} for name in kinds}
        # per site, compared group and interval: number at risk, events, censorings, events of the cause
        parts = np.array([[self.counts[s].get(self.keys[r], zero) for r in chosen] for s in names])
        out: dict[str, Any] = {}
        for name, test in self.test_kinds().items():
            plain = test(parts.sum(axis=0, keepdims=True))
            out[name] = {"chi2": plain.chi2, "df": plain.df, "p": plain.p, **about}
            # stratified by site: a scalar over every site's groups like the unstratified one (no count of a
            # site follows from it); withheld with the per-site values when those would isolate patients there
            if ctx.combined_only:
                out[f"{name}_stratified_by_site"] = {
                    "withheld": True, **about, "reason": "per-site values are withheld (differencing), and the "
                                                         "stratified test weighs each site's groups"}
            else:
                strat = test(parts)
                out[f"{name}_stratified_by_site"] = {"chi2": strat.chi2, "df": strat.df, "p": strat.p, **about}
        return out

    def test_kinds(self) -> dict[str, Callable[[np.ndarray], Any]]:
        """Name -> test on counts of shape (strata, groups, 4 count kinds, intervals)."""
        return {"logrank": lambda c: logrank(c[:, :, 0], c[:, :, 1])}


WITHHELD: dict[str, Any] = {"points": [], "withheld": True}


class SiteRiskGuard(Guard):
    """A number at risk is shown only where every site's number at risk is 0 or at least its k."""


class WholeFollowUpGuard(Guard):
    """A survival test covers the whole follow-up to the policy's longest horizon, whatever the curve's horizon."""


class RmstOfShownCurveGuard(Guard):
    """A restricted mean survival time is the area under the curve as shown, not under every grid interval."""


class ShownGroupsGuard(Guard):
    """A survival test compares only groups whose combined curves show a step (at least k events)."""


def curve_hidden(curve: Any) -> bool:
    """A curve that shows nothing of its group: withheld, or stopping at day 0 with its number at risk hidden."""
    if not isinstance(curve, dict) or curve.get("withheld"):
        return True
    points = curve.get("points") or []
    return len(points) <= 1 and (not points or points[0].get("at_risk") == {"suppressed": True})


YEAR_DAYS = 365.25


def year_start(year: int, grid_days: float) -> float:
    """The start of the grid interval holding `year` (the time a risk table's number at that year is at)."""
    return float(np.floor(year * YEAR_DAYS / grid_days + 1e-9) * grid_days)


def risk_table(at_risk: np.ndarray, grid: np.ndarray, k: int, every_days: float = YEAR_DAYS,
               risk_ok: set[int] | None = None) -> list[dict[str, Any]]:
    """Number at risk at each whole year (the start of the grid interval containing it); small numbers, and
    numbers at times where some site's is 1..k-1 (`risk_ok`), hidden."""
    out: list[dict[str, Any]] = []
    year = 0
    while year * every_days <= grid[-1]:
        j = int(np.searchsorted(grid, year * every_days, side="right") - 1)
        if j >= len(at_risk):
            break
        n = int(at_risk[j])
        shown = (n >= k or (n == 0 and not EmptyCellGuard.enabled())) and (risk_ok is None or j in risk_ok)
        out.append({"year": year, "at_risk": n if shown else {"suppressed": True}})
        year += 1
    return out


def common_points(parts: dict[str, tuple[np.ndarray, ...]], thresholds: dict[str, EffectiveThresholds]) -> set[int]:
    """Grid points where every site's curve may be shown (so sites cannot be subtracted from the combined): per
    site, its number at risk and one or more event counts whose steps the curve shows (each at least k since
    the last such point)."""
    n_int = len(next(iter(parts.values()))[0])
    ok: set[int] = set()
    since = {s: [0] * (len(p) - 1) for s, p in parts.items()}
    empty_ok = not EmptyCellGuard.enabled()  # with it on, no event since is as few as 1..k-1
    for j in range(n_int):
        for s, (_, *series) in parts.items():
            since[s] = [n + int(ev[j]) for n, ev in zip(since[s], series, strict=True)]
        if all(parts[s][0][j] >= thresholds[s].min_cell and all((n == 0 and empty_ok) or n >= thresholds[s].min_cell
                                                                for n in since[s])
               for s in parts):
            ok.add(j)
            since = {s: [0] * len(v) for s, v in since.items()}
    return ok


def release_curve(at_risk: np.ndarray, events: np.ndarray, grid: np.ndarray, k: int,
                  only: set[int] | None = None, risk_ok: set[int] | None = None,
                  censored: np.ndarray | None = None) -> dict[str, Any]:
    """The released points of one curve. For per-site curves, `only` are the grid points where every
    site's curve may be shown and `risk_ok` the intervals where every site's number at risk may be. With
    `censored`, each point says whether at least k patients were censored since the previous point (the
    plot's censor mark on that step; fewer are not marked, and the legend says so)."""
    surv, var = km_from_counts(at_risk, events)
    lost = censored if censored is not None else np.zeros(len(at_risk), int)

    def risk(j: int) -> Any:
        n = int(at_risk[j])
        shown = (n >= k or (n == 0 and not EmptyCellGuard.enabled())) and (risk_ok is None or j in risk_ok)
        return n if shown else {"suppressed": True}

    points = [{"day": 0.0, "survival": 1.0, "ci95": [1.0, 1.0], "at_risk": risk(0) if len(at_risk) else 0}]
    since = gone = 0
    for j in range(len(at_risk)):
        since += int(events[j])
        gone += int(lost[j])
        if at_risk[j] < k:
            break  # fewer than k at risk: the curve stops here
        if only is not None and j not in only:
            continue
        if since < k and (since or EmptyCellGuard.enabled()):
            continue  # coarsen: wait until k events have accumulated (no event is as few as 1..k-1)
        lo, hi = log_log_ci(float(surv[j]), float(var[j]))
        points.append({"day": float(grid[j + 1]), "survival": float(surv[j]), "ci95": [lo, hi],
                       "at_risk": risk(j + 1) if j + 1 < len(at_risk) else {"suppressed": True},
                       **({"censored_since": gone >= k} if censored is not None else {})})
        since = gone = 0
    return {"points": points}


def rmst_differences(curves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group's restricted mean survival time minus the first group's (of the groups whose combined RMST is
    released), with the normal 95 % interval and two-sided p of the difference (the groups' patients are
    distinct, so the variances add). Computed from released values only: nothing new is disclosed."""
    shown = [(c["group"], c["combined"]["rmst"]) for c in curves
             if isinstance(c["combined"].get("rmst"), dict) and not c["combined"]["rmst"].get("withheld")]
    if len(shown) < 2:
        return []
    (ref_group, ref), out = shown[0], []
    for group, rm in shown[1:]:
        diff, se = rm["days"] - ref["days"], math.hypot(rm["se"], ref["se"])
        z = diff / se if se > 0 else math.nan
        out.append({"group": group, "reference": ref_group, "horizon_days": rm["horizon_days"],
                    "difference_days": diff, "se": se,
                    "ci95": [diff - 1.959963984540054 * se, diff + 1.959963984540054 * se],
                    "p": math.erfc(abs(z) / math.sqrt(2)) if se > 0 else None})
    return out
