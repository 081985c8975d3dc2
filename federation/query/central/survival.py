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


def restricted_mean(at_risk: np.ndarray, events: np.ndarray, width: float, intervals: int) -> tuple[float, float]:
    """The restricted mean survival time to the end of the first `intervals` grid intervals (each `width`
    days; events tied at an interval's end) and its variance: the area under the Kaplan-Meier step curve,
    sum over intervals i of width x S(start of i), and sum over intervals j of A_j^2 d_j / (n_j (n_j - d_j)),
    A_j the area from the end of j to the horizon (Klein and Moeschberger 4.5; R's survRM2)."""
    n = np.asarray(at_risk, dtype=float)[:intervals]
    d = np.asarray(events, dtype=float)[:intervals]
    with np.errstate(divide="ignore", invalid="ignore"):
        surv = np.cumprod(np.where(n > 0, 1 - d / n, 1.0))
        term = np.where((n > 0) & (n > d), d / (n * (n - d)), 0.0)
    level = np.concatenate([[1.0], surv[:-1]])  # the curve's level during each interval
    area = width * level
    after = np.concatenate([np.cumsum(area[::-1])[::-1][1:], [0.0]])  # from the end of interval j to the horizon
    return float(area.sum()), float(np.sum(after ** 2 * term))
