"""The survival summaries from grid counts equal statsmodels' pooled computations on the same patients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from federation.query.central.combine import km_from_counts, log_log_ci
from federation.query.central.survival import logrank, median_from_points
from federation.query.site.estimating import km_grid_counts

GRID = np.arange(0.0, 3652.5 + 30.4375, 30.4375)


def _patients(rng: np.random.Generator, n: int, groups: int, strata: int) -> tuple[np.ndarray, ...]:
    group = rng.integers(0, groups, n)
    stratum = rng.integers(0, strata, n)
    hazard = 1 / (900 + 500 * group + 200 * stratum)
    event_time = rng.exponential(1 / hazard)
    censor_time = rng.uniform(100, 4200, n)
    t = np.minimum(event_time, censor_time).round()
    return t, event_time <= censor_time, group, stratum


def _on_grid(t: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every time moved to the end of its grid interval; after the grid, censored beyond it."""
    beyond = t >= GRID[-1]
    end = GRID[np.minimum(np.searchsorted(GRID, t, side="right"), len(GRID) - 1)]
    return np.where(beyond, GRID[-1] + 1, end), (e & ~beyond).astype(int)


def _counts(t: np.ndarray, e: np.ndarray, group: np.ndarray, stratum: np.ndarray, groups: int, strata: int
            ) -> tuple[np.ndarray, np.ndarray]:
    shape = (strata, groups, len(GRID) - 1)
    n, d = np.zeros(shape, int), np.zeros(shape, int)
    for s in range(strata):
        for g in range(groups):
            at = (stratum == s) & (group == g)
            n[s, g], d[s, g], _ = km_grid_counts(t[at], e[at], GRID)
    return n, d


@pytest.mark.parametrize(("groups", "strata", "seed"), [(2, 1, 1), (3, 1, 2), (2, 4, 3), (3, 6, 4)])
def test_logrank_on_grid_counts_equals_statsmodels_survdiff(groups: int, strata: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t, e, group, stratum = _patients(rng, 700, groups, strata)
    n, d = _counts(t, e, group, stratum, groups, strata)
    rounded, status = _on_grid(t, e)
    # unstratified: the per-site counts summed; stratified: kept apart
    plain = logrank(n.sum(axis=0, keepdims=True), d.sum(axis=0, keepdims=True))
    chi2, p = survdiff(rounded, status, group)
    assert plain.df == groups - 1
    assert plain.chi2 == pytest.approx(chi2, rel=1e-9) and plain.p == pytest.approx(p, rel=1e-7, abs=1e-15)
    assert sum(plain.observed) == status.sum() and sum(plain.expected) == pytest.approx(status.sum())
    if strata > 1:
        strat = logrank(n, d)
        chi2_s, p_s = survdiff(rounded, status, group, strata=stratum)
        assert strat.chi2 == pytest.approx(chi2_s, rel=1e-9) and strat.p == pytest.approx(p_s, rel=1e-7, abs=1e-15)
        assert strat.chi2 != pytest.approx(plain.chi2, rel=1e-6)  # the strata matter in this data


def test_logrank_of_identical_groups_is_not_significant_and_of_different_ones_is() -> None:
    rng = np.random.default_rng(7)
    t, e, group, stratum = _patients(rng, 2000, 2, 1)
    n, d = _counts(t, e, group, stratum, 2, 1)
    assert logrank(n, d).p < 1e-6  # hazards differ by design
    same = np.stack([n[:, 0], n[:, 0]], axis=1), np.stack([d[:, 0], d[:, 0]], axis=1)
    assert logrank(*same).chi2 == pytest.approx(0.0, abs=1e-12)


def _points(at_risk: np.ndarray, events: np.ndarray, every: int = 1) -> list[dict[str, object]]:
    surv, var = km_from_counts(at_risk, events)
    pts: list[dict[str, object]] = [{"day": 0.0, "survival": 1.0, "ci95": [1.0, 1.0]}]
    for j in range(0, len(at_risk), every):
        if events[j]:
            pts.append({"day": float(GRID[j + 1]), "survival": float(surv[j]),
                        "ci95": list(log_log_ci(float(surv[j]), float(var[j])))})
    return pts


def _one_group(seed: int) -> tuple[np.ndarray, np.ndarray, SurvfuncRight]:
    """900 patients' grid counts (one stratum, one group) and statsmodels' curve of the same patients on the grid."""
    t, e, group, stratum = _patients(np.random.default_rng(seed), 900, 1, 1)
    n, d = _counts(t, e, group, stratum, 1, 1)
    return n, d, SurvfuncRight(*_on_grid(t, e))


def test_median_and_its_interval_equal_statsmodels_on_a_curve_showing_every_step() -> None:
    n, d, sf = _one_group(11)
    median = median_from_points(_points(n[0, 0], d[0, 0]))
    # the first time the curve is at or below 0.5 (R's survfit; statsmodels' quantile takes < 0.5)
    assert median["day"] == sf.surv_times[np.flatnonzero(sf.surv_prob <= 0.5)[0]]
    assert median["ci95"] == list(sf.quantile_ci(0.5, method="cloglog"))


def test_a_coarser_curve_moves_the_median_to_its_next_point_and_never_before_the_pooled_one() -> None:
    rng = np.random.default_rng(12)
    t, e, group, stratum = _patients(rng, 900, 1, 1)
    n, d = _counts(t, e, group, stratum, 1, 1)
    fine = median_from_points(_points(n[0, 0], d[0, 0]))
    coarse_points = _points(n[0, 0], d[0, 0], every=3)
    coarse = median_from_points(coarse_points)
    days = [p["day"] for p in coarse_points]
    assert coarse["day"] == min(x for x in days if x >= fine["day"])  # type: ignore[operator]
    assert coarse["day"] in days and coarse["ci95"][0] in days


def test_a_median_not_reached_is_none() -> None:
    pts = [{"day": 0.0, "survival": 1.0, "ci95": [1.0, 1.0]}, {"day": 30.0, "survival": 0.8, "ci95": [0.7, 0.9]}]
    assert median_from_points(pts) == {"day": None, "ci95": [None, None]}


@pytest.mark.parametrize("seed", [5, 6])
def test_aalen_johansen_on_grid_counts_equals_statsmodels_cumincidence(seed: int) -> None:
    from statsmodels.duration.survfunc import CumIncidenceRight

    from federation.query.central.survival import aalen_johansen

    rng = np.random.default_rng(seed)
    t, e, _, _ = _patients(rng, 800, 1, 1)
    cause = np.where(e, rng.choice([1, 2], len(t), p=[0.7, 0.3]), 0)  # 1: relapse, 2: death in remission
    n, d_all, _ = km_grid_counts(t, e, GRID)
    rounded, status = _on_grid(t, e)
    status = np.where(status == 1, cause, 0)
    ref = CumIncidenceRight(rounded, status)
    for c in (1, 2):
        d = km_grid_counts(t, cause == c, GRID)[1]
        f, var = aalen_johansen(n, d_all, d)
        at = np.searchsorted(ref.times, GRID[1:] + 1e-9, side="right") - 1  # the last pooled time at each grid point
        shown = at >= 0
        assert np.allclose(f[shown], ref.cinc[c - 1][at[shown]], rtol=0, atol=1e-12)
        assert np.allclose(np.sqrt(var[shown]), ref.cinc_se[c - 1][at[shown]], rtol=0, atol=1e-12)
    both = [aalen_johansen(n, d_all, km_grid_counts(t, cause == c, GRID)[1])[0] for c in (1, 2)]
    surv, _ = km_from_counts(n, d_all)
    assert np.allclose(both[0] + both[1], 1 - surv)  # the causes share out exactly what the survival loses


def test_restricted_mean_of_a_curve_showing_every_step_equals_the_area_under_statsmodels_curve() -> None:
    from federation.query.central.survival import restricted_mean

    n, d, sf = _one_group(21)
    surv, var = km_from_counts(n[0, 0], d[0, 0])
    for months in (12, 37, 60, 120):
        tau = GRID[months]
        days = [0.0, *GRID[1:months + 1]]
        value, variance = restricted_mean(days, [1.0, *surv[:months]], [0.0, *(var[:months] / surv[:months] ** 2)])
        # the pooled curve integrated up to tau, and the delta method's variance from its own standard errors
        times = np.concatenate([[0.0], sf.surv_times[sf.surv_times < tau], [tau]])
        levels = np.concatenate([[1.0], sf.surv_prob[sf.surv_times < tau]])
        assert value == pytest.approx(float(np.sum(np.diff(times) * levels)), rel=1e-12)
        g = np.concatenate([[0.0], (sf.surv_prob_se[sf.surv_times < tau] / sf.surv_prob[sf.surv_times < tau]) ** 2])
        ws = np.diff(times) * levels
        assert variance == pytest.approx(float(ws @ np.minimum.outer(g, g) @ ws), rel=1e-9)


def test_grays_test_on_grid_counts_equals_r_cmprsk_cuminc() -> None:
    # R's cmprsk (Gray's own code) on the same patients with times at the end of their grid interval; the
    # reference values and the script that made them are in tests/query/data/gray_reference.*
    import csv
    import json

    from federation.query.central.survival import gray_test

    data = Path(__file__).parent / "data"
    with (data / "gray_reference.csv").open() as fh:
        rows = [{k: int(float(v)) for k, v in r.items()} for r in csv.DictReader(fh)]
    reference = json.loads((data / "gray_reference.json").read_text())
    t = np.array([r["days"] for r in rows], dtype=float)
    status = np.array([r["status"] for r in rows])
    group = np.array([r["group"] for r in rows]) - 1
    stratum = np.array([r["stratum"] for r in rows]) - 1
    shape = (4, 3, len(GRID) - 1)
    n, d1, d2 = np.zeros(shape, int), np.zeros(shape, int), np.zeros(shape, int)
    for s in range(4):
        for g in range(3):
            at = (stratum == s) & (group == g)
            n[s, g], _, _ = km_grid_counts(t[at], status[at] > 0, GRID)
            d1[s, g] = km_grid_counts(t[at], status[at] == 1, GRID)[1]
            d2[s, g] = km_grid_counts(t[at], status[at] == 2, GRID)[1]
    for cause, (mine, other) in {"1": (d1, d2), "2": (d2, d1)}.items():
        plain = gray_test(n.sum(axis=0, keepdims=True), mine.sum(axis=0, keepdims=True), other.sum(axis=0,
                                                                                                  keepdims=True))
        strat = gray_test(n, mine, other)
        for got, ref in ((plain, reference["plain"][cause]), (strat, reference["stratified"][cause])):
            assert got.df == ref["df"] == 2
            assert got.chi2 == pytest.approx(ref["stat"], rel=1e-9)
            assert got.p == pytest.approx(ref["pv"], rel=1e-7)


def test_rmst_differences_are_those_of_the_released_means() -> None:
    from scipy.stats import norm

    from federation.query.central.statistics.km import rmst_differences

    def curve(group: str, rmst: dict[str, object]) -> dict[str, object]:
        return {"group": [group], "combined": {"points": [], "rmst": rmst}}

    curves = [curve("A", {"horizon_days": 730.5, "days": 600.0, "se": 12.0, "ci95": [0, 0]}),
              curve("B", {"horizon_days": 730.5, "withheld": True, "reason": "no point"}),
              curve("C", {"horizon_days": 730.5, "days": 560.0, "se": 9.0, "ci95": [0, 0]})]
    (d,) = rmst_differences(curves)  # B is withheld: C against A only
    assert d["group"] == ["C"] and d["reference"] == ["A"] and d["difference_days"] == -40.0
    assert d["se"] == pytest.approx(15.0) and d["p"] == pytest.approx(2 * norm.sf(40 / 15), rel=1e-12)
    assert d["ci95"] == pytest.approx([-40 - norm.ppf(0.975) * 15, -40 + norm.ppf(0.975) * 15], rel=1e-9)
    assert rmst_differences(curves[:2]) == []
