"""The statistics that combine exactly from per-site summaries (see GLOSSARY).

Sites return counts, (n, mean, M2) moments, Kaplan-Meier interval counts on
a shared grid, and logistic score vectors and information matrices; these
functions combine them. Nothing here sees a row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy import stats as sps


def merge_moments(parts: Iterable[tuple[int, float, float]]) -> tuple[int, float, float]:
    """Chan et al.: merge (n, mean, M2) of disjoint parts; M2 = sum of squared deviations."""
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mb, m2b in parts:
        if nb == 0:
            continue
        delta = mb - mean
        total = n + nb
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
    return n, mean, m2


def wilson(x: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def km_grid_counts(time: np.ndarray, event: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per interval [t_{j-1}, t_j) of the grid: at risk at its start, events and censorings in it."""
    n_int = len(grid) - 1
    idx = np.searchsorted(grid, time, side="right") - 1  # interval of each time
    inside = (idx >= 0) & (idx < n_int)
    events = np.bincount(idx[inside & event], minlength=n_int)[:n_int]
    censored = np.bincount(idx[inside & ~event], minlength=n_int)[:n_int]
    leaving_before = np.concatenate([[0], np.cumsum(events + censored)[:-1]])
    at_risk = int(np.sum(time >= grid[0])) - leaving_before
    return at_risk.astype(int), events.astype(int), censored.astype(int)


def km_from_counts(at_risk: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Survival at the end of each interval and its Greenwood variance."""
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(at_risk > 0, 1 - events / at_risk, 1.0)
        surv = np.cumprod(step)
        term = np.where((at_risk > 0) & (at_risk > events), events / (at_risk * (at_risk - events)), 0.0)
    var = surv ** 2 * np.cumsum(term)
    return surv, var


def log_log_ci(surv: float, var: float, z: float = 1.959963984540054) -> tuple[float, float]:
    if not 0 < surv < 1 or var <= 0:
        return surv, surv
    se = math.sqrt(var) / (surv * abs(math.log(surv)))
    lo = surv ** math.exp(z * se)
    hi = surv ** math.exp(-z * se)
    return lo, hi


def logistic_site(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One site's score U = X'(y - p), information I = X'WX and log-likelihood at `beta`."""
    eta = x @ beta
    p = 1 / (1 + np.exp(-eta))
    w = p * (1 - p)
    score = x.T @ (y - p)
    info = (x * w[:, None]).T @ x
    loglik = float(np.sum(y * eta - np.logaddexp(0, eta)))
    return score, info, loglik


def newton_step(beta: np.ndarray, score: np.ndarray, info: np.ndarray) -> np.ndarray:
    return beta + np.linalg.solve(info, score)


def z_test(beta: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = beta / se
    return z, 2 * sps.norm.sf(np.abs(z))


def cox_site(time: np.ndarray, event: np.ndarray, x: np.ndarray, beta: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, float]:
    """One site's partial-likelihood score, information and log-likelihood (Breslow ties) at `beta`.

    Summed over sites this is the Cox model stratified by site: each site keeps its own baseline
    hazard, and no risk set crosses a site, so nothing but these sums leaves a site.
    """
    p = x.shape[1]
    score, info, loglik = np.zeros(p), np.zeros((p, p)), 0.0
    if not event.any():
        return score, info, loglik
    order = np.argsort(-time, kind="stable")
    t, e, xs = time[order], event[order], x[order]
    w = np.exp(xs @ beta)
    s0 = np.cumsum(w)
    s1 = np.cumsum(w[:, None] * xs, axis=0)
    s2 = np.cumsum(w[:, None, None] * xs[:, :, None] * xs[:, None, :], axis=0)
    ascending = t[::-1]
    for tt in np.unique(t[e]):
        j = len(t) - 1 - int(np.searchsorted(ascending, tt, side="left"))  # risk set: indices 0..j
        dead = (t == tt) & e
        d = int(dead.sum())
        xbar = s1[j] / s0[j]
        score += xs[dead].sum(axis=0) - d * xbar
        info += d * (s2[j] / s0[j] - np.outer(xbar, xbar))
        loglik += float((xs[dead] @ beta).sum() - d * np.log(s0[j]))
    return score, info, loglik
