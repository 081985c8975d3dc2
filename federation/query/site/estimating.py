"""Per-site estimating quantities computed from a site's own rows, inside its node: Kaplan-Meier
interval counts on a grid, and the score, information and log-likelihood of logistic and Cox models at a
given beta. Only these sums leave the site."""

from __future__ import annotations

import numpy as np


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



def logistic_site(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One site's score U = X'(y - p), information I = X'WX and log-likelihood at `beta`."""
    eta = x @ beta
    p = 1 / (1 + np.exp(-eta))
    w = p * (1 - p)
    score = x.T @ (y - p)
    info = (x * w[:, None]).T @ x
    loglik = float(np.sum(y * eta - np.logaddexp(0, eta)))
    return score, info, loglik



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
