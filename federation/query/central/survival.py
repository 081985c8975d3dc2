"""Survival summaries trial reports carry, from the per-interval counts sites return on the policy's grid.

Nothing here sees a row: the log-rank test is computed from the number at risk and the events of each group
in each grid interval (summed over sites, or kept apart by site for the stratified test), exactly as the
pooled test on the same patients with every time moved to the end of its grid interval; the median survival
and its confidence interval are read from the points of a curve that disclosure control released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class LogRank:
    chi2: float
    df: int
    p: float
    observed: list[float]
    expected: list[float]


def logrank(at_risk: np.ndarray, events: np.ndarray) -> LogRank:
    """The log-rank test of equal hazards across groups on a grid, stratified over the first axis.

    `at_risk` and `events` have the shape (strata, groups, intervals): per stratum, group and interval the
    number at risk at the interval's start and the events in it (events in an interval are tied at its end).
    Per interval of each stratum the expected events of a group are d n_g / n and the hypergeometric
    covariance is d (n - d) / (n - 1) n_g / n (1[g = h] - n_h / n); observed minus expected and the
    covariances are summed over intervals and strata, and chi2 = (O - E)' V^-1 (O - E) over all groups but
    the last (groups - 1 degrees of freedom), as in R's survdiff and statsmodels' survdiff."""
    n = np.asarray(at_risk, dtype=float)
    d = np.asarray(events, dtype=float)
    if n.ndim != 3 or n.shape != d.shape:
        raise ValueError("at_risk and events must both have the shape (strata, groups, intervals)")
    total_n = n.sum(axis=1, keepdims=True)  # (strata, 1, intervals)
    total_d = d.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total_n > 0, n / total_n, 0.0)  # n_g / n
        factor = np.where(total_n > 1, total_d * (total_n - total_d) / (total_n - 1), 0.0)[:, 0, :]
    expected = (total_d * share).sum(axis=(0, 2))
    observed = d.sum(axis=(0, 2))
    groups = n.shape[1]
    # V_gh = sum over strata and intervals of factor * share_g * (1[g = h] - share_h)
    cov = np.einsum("sj,sgj,shj->gh", factor, share, share)
    diag = np.einsum("sj,sgj->g", factor, share)
    v = np.diag(diag) - cov
    u = observed - expected
    if groups < 2:
        raise ValueError("a log-rank test compares at least two groups")
    reduced = v[:-1, :-1]
    rank = int(np.linalg.matrix_rank(reduced)) if reduced.size else 0
    if rank == 0:
        return LogRank(chi2=0.0, df=0, p=1.0, observed=observed.tolist(), expected=expected.tolist())
    chi2 = float(u[:-1] @ np.linalg.pinv(reduced) @ u[:-1])
    return LogRank(chi2=chi2, df=rank, p=float(sps.chi2.sf(chi2, rank)), observed=observed.tolist(),
                   expected=expected.tolist())


def median_from_points(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The median survival and its 95 % confidence interval read from a curve's released points (day,
    survival, ci95 of a log-log band): the median is the first point with survival at or below 0.5; the
    interval is Brookmeyer and Crowley's, the times whose band holds 0.5, from the first such point to the
    point after the last (None: not reached within the curve; both None when the band steps over 0.5 at
    once, as statsmodels' quantile_ci gives no interval then). A curve shows a point only where disclosure
    control released it, so the median is the pooled one moved to the next released point (on a dense curve,
    the pooled median itself) and tells nothing the curve does not."""
    shown = [p for p in points if isinstance(p.get("survival"), int | float)]
    median = next((float(p["day"]) for p in shown if p["survival"] <= 0.5), None)
    inside = [i for i, p in enumerate(shown) if p["ci95"][0] <= 0.5 <= p["ci95"][1] and p["survival"] < 1.0]
    lower = float(shown[inside[0]]["day"]) if inside else None
    upper = float(shown[inside[-1] + 1]["day"]) if inside and inside[-1] + 1 < len(shown) else None
    return {"day": median, "ci95": [lower, upper]}


def aalen_johansen(at_risk: np.ndarray, events: np.ndarray, cause_events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative incidence of one cause at the end of each grid interval, with competing causes (the
    other events), and its delta-method variance, as statsmodels' `CumIncidenceRight` computes them on the
    pooled patients with every time at the end of its grid interval: F(t_j) = sum over i <= j of
    S(t_i-1) d_c,i / n_i, with S the Kaplan-Meier estimate of being free of any event."""
    n = np.asarray(at_risk, dtype=float)
    d_all = np.asarray(events, dtype=float)
    d = np.asarray(cause_events, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        surv = np.cumprod(np.where(n > 0, 1 - d_all / n, 1.0))
        before = np.concatenate([[1.0], surv[:-1]])
        s0 = np.where(n > 0, before / n, 0.0)  # S(t_i-1) / n_i
        f = np.cumsum(s0 * d)
        ra = np.where((n > 0) & (n > d_all), d_all / (n * (n - d_all)), 0.0)
        var = f ** 2 * np.cumsum(ra) - 2 * f * np.cumsum(f * ra) + np.cumsum(f ** 2 * ra)
        var += np.cumsum(s0 ** 2 * np.where(n > 0, (n - d) * d / n, 0.0))
        rb = np.where(n > 0, s0 * d / n, 0.0)
        var += -2 * f * np.cumsum(rb) + 2 * np.cumsum(f * rb)
    return f, np.maximum(var, 0.0)


def restricted_mean(days: list[float], surv: list[float], greenwood: list[float]) -> tuple[float, float]:
    """The restricted mean survival time of a curve as shown, to its last point, and its variance.

    `days`, `surv`: the curve's points from day 0 (survival 1) to the horizon; between points the curve is
    flat, so the area is sum over points r of (day_r+1 - day_r) S_r. `greenwood`: each point's Greenwood sum
    (variance of S over S squared, 0 at day 0). The variance is the delta method's, with Cov(S_r, S_s) =
    S_r S_s G_min(r, s) (Kaplan-Meier's covariance). Both are functions of the shown points alone (a point's
    CI gives its Greenwood sum): on a curve that shows a point at every grid interval with an event it is
    the pooled RMST on the grid; on a coarser one it is the area under the curve as shown, never below it."""
    d = np.asarray(days, dtype=float)
    s = np.asarray(surv, dtype=float)[:-1]
    g = np.asarray(greenwood, dtype=float)[:-1]
    w = np.diff(d)
    area = float(np.sum(w * s))
    ws = w * s
    g_min = np.minimum.outer(g, g)  # G of the earlier of two points (G grows with time)
    return area, float(ws @ g_min @ ws)


@dataclass(frozen=True)
class GrayTest:
    chi2: float
    df: int
    p: float


def gray_test(at_risk: np.ndarray, cause_events: np.ndarray, other_events: np.ndarray, rho: float = 0.0) -> GrayTest:
    """Gray's (1988) test of equal cumulative incidence of a cause across groups, stratified over the first axis,
    from grid counts of shape (strata, groups, intervals): number at risk at each interval's start, events of
    the cause and competing events in it (tied at its end; censorings leave after it). A line-by-line port of
    `crstm`/`crst` of R's cmprsk (Robert Gray, GPL), whose loop over distinct times is here a loop over grid
    intervals; checked against R's `cuminc` on the same tied times (tests/query/test_survival.py)."""
    n_all = np.asarray(at_risk, dtype=float)
    d1_all = np.asarray(cause_events, dtype=float)
    d2_all = np.asarray(other_events, dtype=float)
    ng = n_all.shape[1]
    if ng < 2:
        raise ValueError("Gray's test compares at least two groups")
    ng1 = ng - 1
    s_total = np.zeros(ng1)
    v_total = np.zeros((ng1, ng1))
    for n, d1, d2 in zip(n_all, d1_all, d2_all, strict=True):
        s, v = _gray_stratum(n, d1, d2, rho)
        s_total += s
        v_total += v
    rank = int(np.linalg.matrix_rank(v_total)) if v_total.size else 0
    if rank == 0:
        return GrayTest(chi2=0.0, df=0, p=1.0)
    chi2 = float(s_total @ np.linalg.pinv(v_total) @ s_total)
    return GrayTest(chi2=chi2, df=ng1, p=float(sps.chi2.sf(chi2, ng1)))


def _gray_stratum(at_risk: np.ndarray, d1: np.ndarray, d2: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """cmprsk's `crst` for one stratum: the scores of the first groups - 1 and their covariance."""
    ng, n_int = at_risk.shape
    ng1 = ng - 1
    s = np.zeros(ng1)
    v = np.zeros((ng1, ng1))  # lower triangle used, as the Fortran's packed v
    f1m, f1 = np.zeros(ng), np.zeros(ng)
    skmm, skm = np.ones(ng), np.ones(ng)
    v3 = np.zeros(ng)
    v2 = np.zeros((ng1, ng))
    c = np.zeros((ng, ng))
    fm = f = 0.0
    for j in range(n_int):
        rs = at_risk[:, j]
        nd1, nd2 = float(d1[:, j].sum()), float(d2[:, j].sum())
        if nd1 > 0 or nd2 > 0:
            tr = tq = 0.0
            for i in range(ng):
                if rs[i] <= 0:
                    continue
                skm[i] = skmm[i] * (rs[i] - d1[i, j] - d2[i, j]) / rs[i]
                f1[i] = f1m[i] + skmm[i] * d1[i, j] / rs[i]
                tr += rs[i] / skmm[i]
                tq += rs[i] * (1 - f1m[i]) / skmm[i]
            f = fm + nd1 / tr
            fb = (1 - fm) ** rho
            a = np.zeros((ng, ng))
            for i in range(ng):
                if rs[i] <= 0:
                    continue
                t1 = rs[i] / skmm[i]
                a[i, i] = fb * t1 * (1 - t1 / tr)
                if a[i, i] != 0:
                    c[i, i] += a[i, i] * nd1 / (tr * (1 - fm))
                for k in range(i + 1, ng):
                    if rs[k] <= 0:
                        continue
                    a[i, k] = -fb * t1 * rs[k] / (skmm[k] * tr)
                    if a[i, k] != 0:
                        c[i, k] += a[i, k] * nd1 / (tr * (1 - fm))
            for i in range(1, ng):
                for k in range(i):
                    a[i, k] = a[k, i]
                    c[i, k] = c[k, i]
            for i in range(ng1):
                if rs[i] > 0:
                    s[i] += fb * (d1[i, j] - nd1 * rs[i] * (1 - f1m[i]) / (skmm[i] * tq))
            if nd1 > 0:
                for k in range(ng):
                    if rs[k] <= 0:
                        continue
                    t4 = 1 - (1 - f) / skm[k] if skm[k] > 0 else 1.0
                    t5 = 1 - (nd1 - 1) / (tr * skmm[k] - 1) if nd1 > 1 else 1.0
                    t3 = t5 * skmm[k] * nd1 / (tr * rs[k])
                    v3[k] += t4 * t4 * t3
                    for i in range(ng1):
                        t1 = a[i, k] - t4 * c[i, k]
                        v2[i, k] += t1 * t4 * t3
                        for m in range(i + 1):
                            v[i, m] += t1 * (a[m, k] - t4 * c[m, k]) * t3
            if nd2 > 0:
                for k in range(ng):
                    if skm[k] <= 0 or d2[k, j] <= 0:
                        continue
                    t4 = (1 - f) / skm[k]
                    t5 = 1 - (d2[k, j] - 1) / (rs[k] - 1) if d2[k, j] > 1 else 1.0
                    t3 = t5 * (skmm[k] ** 2 * d2[k, j]) / rs[k] ** 2
                    v3[k] += t4 * t4 * t3
                    for i in range(ng1):
                        t1 = t4 * c[i, k]
                        v2[i, k] -= t1 * t4 * t3
                        for m in range(i + 1):
                            v[i, m] += t1 * (t4 * c[m, k]) * t3
        fm = f
        f1m = f1.copy()
        skmm = skm.copy()
    for i in range(ng1):
        for m in range(i + 1):
            for k in range(ng):
                v[i, m] += c[i, k] * c[m, k] * v3[k] + c[i, k] * v2[m, k] + c[m, k] * v2[i, k]
    return s, np.tril(v) + np.tril(v, -1).T
