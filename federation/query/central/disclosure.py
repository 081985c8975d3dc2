"""Disclosure control of released counts: primary suppression, complementary
suppression, and an audit by linear programming that no suppressed count can
be pinned down from what is released.

The released counts of one query form a table E[site + combined, row + margin,
col + margin]: every site's cells, row and column totals and grand total,
and the same for the combined (summed) table. An analyst who sees the
unsuppressed entries knows linear equations over the hidden cells (each
released margin is the sum of its cells; each combined cell is the sum of the
sites' cells). A suppressed count is protected when, over all non-negative
tables consistent with what is released, it can still vary by at least k:
the audit computes its minimum and maximum with an LP (scipy HiGHS) and keeps
suppressing until every hidden small count is protected.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from federation.query.columns import EmptyCellGuard
from federation.query.guard import Guard, QueryRefused


class ComplementarySuppressionGuard(Guard):
    """Hide further cells until no suppressed count can be derived from what is released (LP audit)."""


class PatientUnitsGuard(Guard):
    """In an event table a cell is small by its distinct patients, not its rows (five rows of one patient are
    one person's values)."""


class SiteInsiderGuard(Guard):
    """A combined count is hidden when the other sites' part of it is 1..k-1 for some site: that site knows
    its own contribution and would subtract it."""


@dataclass
class Released:
    """Counts as released: `values` with NaN where suppressed, and why each entry is hidden."""

    values: np.ndarray  # float, shape (S+1, R+1, C+1); NaN = suppressed or not part of the release
    primary: np.ndarray  # bool: hidden because 0 <= n < k (an empty cell is small)
    complementary: np.ndarray  # bool: hidden so that a primary cell cannot be derived

    @property
    def n_suppressed(self) -> int:
        return int(self.primary.sum() + self.complementary.sum())


def extend(cells: np.ndarray) -> np.ndarray:
    """(S, R, C) base counts -> (S+1, R+1, C+1) with margins; index S is the combined table."""
    s, r, c = cells.shape
    e = np.zeros((s + 1, r + 1, c + 1), dtype=float)
    e[:s, :r, :c] = cells
    e[s, :r, :c] = cells.sum(axis=0)
    e[:, r, :] = e[:, :r, :].sum(axis=1)
    e[:, :, c] = e[:, :, :c].sum(axis=2)
    return e


def _lines(shape: tuple[int, int, int], released: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """Every group of entries that sums to another released-or-hidden entry (margin last)."""
    S1, R1, C1 = shape
    out = []
    for r, c in itertools.product(range(R1), range(C1)):
        out.append([(s, r, c) for s in range(S1)])
    for s, c in itertools.product(range(S1), range(C1)):
        out.append([(s, r, c) for r in range(R1)])
    for s, r in itertools.product(range(S1), range(R1)):
        out.append([(s, r, c) for c in range(C1)])
    return [line for line in out if any(released[i] for i in line)]


def suppress(cells: np.ndarray, k_site: list[int], k_combined: int, *, col_margin: bool = True,
             row_margin: bool = True, max_rounds: int = 50, time_limit_s: float = 20.0,
             units: np.ndarray | None = None, margins: np.ndarray | None = None) -> Released:
    """Primary and complementary suppression of a (sites, rows, cols) table of counts.

    `col_margin`/`row_margin` False when those totals are not part of the release (e.g. a count by one
    dimension has no column totals). Entries not released are kept out of the analyst's equations.
    `units`, for event tables: the distinct patients of each cell (same shape as `cells`); a cell of many
    rows but 1..k-1 patients is a primary cell too. `margins` (with `units`; `guards.RowMultiplicityGuard`):
    the distinct patients of every entry of the extended table, NaN where not known; then totals and margins
    are small by patients too, and so is an entry whose rows exceed its patients by 1..k-1.
    """
    e = extend(cells)
    S1, R1, C1 = e.shape
    part = np.ones(e.shape, dtype=bool)  # entries that are part of the release
    if not col_margin:
        part[:, :, C1 - 1] = False
    if not row_margin:
        part[:, R1 - 1, :] = False
    k = np.array(list(k_site) + [k_combined], dtype=float)[:, None, None] * np.ones(e.shape)
    low = 0 if EmptyCellGuard.enabled() else 1  # an empty cell is small: 0 and 1..k-1 look the same
    primary = part & (e >= low) & (e < k)
    if units is not None and PatientUnitsGuard.enabled():  # patients per cell; combined: the sites' sum
        u = np.full(e.shape, np.nan)
        u[:-1, :-1, :-1] = units
        u[-1, :-1, :-1] = units.sum(axis=0)
        if margins is not None:
            u = np.where(np.isnan(u), margins, u)
        known = part & ~np.isnan(u)
        uu = np.nan_to_num(u)
        primary |= known & (uu >= low) & (uu < k)
        if margins is not None:  # rows beyond patients: how many extra rows a few patients have
            primary |= known & (e - uu >= 1) & (e - uu < k)
    n = S1 - 1  # the combined table's index, and the number of sites
    if SiteInsiderGuard.enabled() and n > 1:  # the combined table as each site's insider sees it
        rest = e[n][None, :, :] - e[:n]
        primary[n] |= part[n] & ((rest >= low) & (rest < k[n])).any(axis=0)
    hidden = primary.copy()
    if not ComplementarySuppressionGuard.enabled():
        return Released(values=np.where(hidden | ~part, np.nan, e), primary=primary,
                        complementary=np.zeros(e.shape, dtype=bool))
    deadline = time.monotonic() + time_limit_s
    for _ in range(max_rounds):
        _complement_lines(e, part, hidden)
        weak = _audit(cells, e, part, hidden, primary, k, deadline)
        if not weak:
            break
        for idx in weak:
            _widen(e, part, hidden, idx)
    else:  # pragma: no cover - safety net: hide every per-site entry, keep the combined table
        hidden[:-1] |= part[:-1]
        _complement_lines(e, part, hidden)
    values = np.where(hidden | ~part, np.nan, e)
    return Released(values=values, primary=primary, complementary=hidden & ~primary & part)


def _complement_lines(e: np.ndarray, part: np.ndarray, hidden: np.ndarray) -> None:
    """No line of released entries may have exactly one hidden entry: hide the smallest other non-zero one.
    Across sites (a combined entry and its sites' parts), no released combined entry may have exactly two
    hidden parts either: each of those sites' insiders knows their own and would get the other's."""
    changed = True
    while changed:
        changed = _insider_pairs(e, part, hidden) if SiteInsiderGuard.enabled() else False
        for line in _lines(e.shape, part):
            members = [i for i in line if part[i]]
            if len(members) < len(line):
                continue  # a member is not released at all: this sum is not an equation the analyst has
            n_hidden = sum(1 for i in members if hidden[i])
            if n_hidden != 1:
                continue
            candidates = [i for i in members if not hidden[i] and e[i] > 0]
            if not candidates:
                candidates = [i for i in members if not hidden[i]]
            if candidates:
                pick = min(candidates, key=lambda i: (e[i], i))
                hidden[pick] = True
                changed = True


def _insider_pairs(e: np.ndarray, part: np.ndarray, hidden: np.ndarray) -> bool:
    """Hide a third site's part (the smallest non-zero) wherever a released combined entry has exactly two
    hidden site parts; the combined entry itself when no third part can be. True if anything changed."""
    n = e.shape[0] - 1
    changed = False
    for r, c in itertools.product(range(e.shape[1]), range(e.shape[2])):
        if not part[n, r, c] or hidden[n, r, c]:
            continue
        sites = [s for s in range(n) if part[s, r, c]]
        if sum(1 for s in sites if hidden[s, r, c]) != 2:
            continue
        third = [s for s in sites if not hidden[s, r, c] and e[s, r, c] > 0]
        pick = (min(third, key=lambda s: (e[s, r, c], s)), r, c) if third else (n, r, c)
        hidden[pick] = True
        changed = True
    return changed


def _coef(idx: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Entry `idx` of the extended table as a linear form over the base cells (index S/R/C = a total)."""
    S, R, C = shape
    s, r, c = idx
    m = np.zeros(shape)
    m[slice(None) if s == S else slice(s, s + 1), slice(None) if r == R else slice(r, r + 1),
      slice(None) if c == C else slice(c, c + 1)] = 1.0
    return m.ravel()


def _lp_range(obj: np.ndarray, rows: list[np.ndarray], rhs: list[float]) -> tuple[float, float]:
    """Minimum and maximum of `obj . x` over x >= 0 with rows . x = rhs (max is inf when unbounded)."""
    a_eq = np.array(rows) if rows else None
    b_eq = np.array(rhs) if rows else None
    bounds = [(0, None)] * len(obj)
    lo = linprog(obj, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    hi = linprog(-obj, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    return (float(lo.fun) if lo.success else 0.0), (float(-hi.fun) if hi.success else float("inf"))


def _audit(cells: np.ndarray, e: np.ndarray, part: np.ndarray, hidden: np.ndarray, primary: np.ndarray,
           k: np.ndarray, deadline: float = float("inf")) -> list[tuple[int, int, int]]:
    """Primary entries whose feasible range, given everything released, is narrower than k."""
    if not primary.any():
        return []
    shape = cells.shape
    known = list(zip(*np.nonzero(part & ~hidden), strict=True))
    rows = [_coef(idx, shape) for idx in known]
    rhs = [float(e[idx]) for idx in known]
    weak = []
    for idx in zip(*np.nonzero(primary), strict=True):
        if time.monotonic() > deadline:
            raise QueryRefused("disclosure control could not protect this table's small cells in time",
                               "group by fewer or coarser columns, or filter first")
        lo, hi = _lp_range(_coef(idx, shape), rows, rhs)
        if hi - lo < k[idx] - 1e-9:
            weak.append((int(idx[0]), int(idx[1]), int(idx[2])))
    return weak


def _widen(e: np.ndarray, part: np.ndarray, hidden: np.ndarray, idx: tuple[int, int, int]) -> None:
    """Hide one more entry in a line through `idx`: the smallest released non-zero one."""
    best = None
    for line in _lines(e.shape, part):
        if idx not in line:
            continue
        for i in line:
            if part[i] and not hidden[i] and e[i] > 0 and (best is None or (e[i], i) < (e[best], best)):
                best = i
    if best is None:
        for line in _lines(e.shape, part):
            if idx in line:
                for i in line:
                    if part[i] and not hidden[i]:
                        best = i
                        break
    if best is not None:
        hidden[best] = True


def range_of(released: Released, cells_shape: tuple[int, int, int], idx: tuple[int, int, int],
             insider: tuple[int, np.ndarray] | None = None) -> tuple[float, float]:
    """What an analyst can infer about entry `idx` from the release (for tests and audits); with `insider`
    (a site and its own cells), what that site's insider can."""
    known = list(zip(*np.nonzero(~np.isnan(released.values)), strict=True))
    rows = [_coef(i, cells_shape) for i in known]
    rhs = [float(released.values[i]) for i in known]
    if insider is not None:
        site, own = insider
        for r, c in np.ndindex(own.shape):
            rows.append(_coef((site, r, c), cells_shape))
            rhs.append(float(own[r, c]))
    return _lp_range(_coef(idx, cells_shape), rows, rhs)
