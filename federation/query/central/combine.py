"""Exact combination of per-site summaries (see GLOSSARY), in the query service.

Sites return counts, (n, mean, M2) moments, Kaplan-Meier interval counts on
a shared grid, and score vectors and information matrices; these functions
combine them. Nothing here sees a row.
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


def newton_step(beta: np.ndarray, score: np.ndarray, info: np.ndarray) -> np.ndarray:
    return beta + np.linalg.solve(info, score)


def z_test(beta: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = beta / se
    return z, 2 * sps.norm.sf(np.abs(z))
