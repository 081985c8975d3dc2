"""Differencing through any number of results: what a set of released cells pins down, by linear algebra.

Pairs and triples (`differencing`) are searched over the whole history. Longer combinations are checked
around the cells that were *hidden*: a cell a result suppressed (1..k-1 patients, or hidden so that such a
cell cannot be derived) must stay underivable whatever is released later. The red team's A2 was of this
kind: everyone's mean, the mean by age group (hiding a one-patient group and, to protect it, a second
group at the same site) and then the mean filtered to that second group gave
`everyone - shown groups - filtered group` = the one patient, four results and five cells.

For a *focus* (a result with hidden cells) and the results around it (the new one, and results on the same
rows by other group-by columns, whose cells add up to its totals), or for a *filter family* (the new
result and recent results filtering only on the same columns: everyone minus `arm == DD4A`, `EE4A` and
`M` is arm NR, with nothing hidden anywhere), the released cells are rows of a 0/1 matrix
over atoms. A set of atoms S is derivable exactly when its indicator lies in the row space: when it is
orthogonal to the null space. Atoms that no cell tells apart (identical columns) merge into classes first,
so the matrices stay small. The new result leaks when, with it, a set of 1..k-1 patients becomes derivable
that was not before: a hidden cell of the focus, or a class of atoms; for the analyst, and for each site
insider (who knows their own rows and removes them).

Exact, without bounds: a set whose size is only narrowed, not pinned, is not reported (the LP audit of each
result covers bounds within it; across results this is stated as open in decision 0009).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import null_space

TOL = 1e-8


@dataclass(frozen=True)
class SpanLeak:
    """A set of 1..k-1 patients the new cells make derivable, and for whom."""

    units: float
    insider: str | None  # the site whose insider derives it, or None for any analyst
    what: str  # "a hidden cell" or "a set of patients no single cell shows"


def derivable(rows: np.ndarray, targets: np.ndarray, unsure: bool = True) -> np.ndarray:
    """For 0/1 `rows` (cells x atoms) and 0/1 `targets` (sets x atoms): which sets are exact linear
    combinations of the rows. If the decomposition fails (LAPACK's divide-and-conquer SVD can fail to
    converge; the slower QR-iteration one is tried next), every set is answered `unsure`: callers pass
    the answer that makes the guard refuse rather than release."""
    if not len(targets):
        return np.zeros(0, dtype=bool)
    if not len(rows):
        return np.asarray(~targets.any(axis=1))
    classes, inverse = np.unique(rows.T, axis=0, return_inverse=True)  # atoms no row tells apart
    inverse = inverse.ravel()
    onehot = np.zeros((rows.shape[1], len(classes)))
    onehot[np.arange(rows.shape[1]), inverse] = 1.0
    per_class = targets.astype(float) @ onehot
    size = onehot.sum(axis=0)
    whole = np.asarray(np.all((per_class < 0.5) | (np.abs(per_class - size) < 0.5), axis=1))  # never splits a class
    t = (per_class > 0.5).astype(float)
    free = _null_space(classes.astype(float).T)  # (classes, nullity): combinations every row is blind to
    if free is None:
        return np.full(len(targets), unsure)
    if free.shape[1] == 0:
        return whole
    return np.asarray(whole & (np.abs(t @ free).max(axis=1) < TOL))


def _null_space(a: np.ndarray) -> np.ndarray | None:
    for driver in ("gesdd", "gesvd"):
        try:
            return np.asarray(null_space(a, lapack_driver=driver))
        except (np.linalg.LinAlgError, ValueError):
            continue
    return None


def new_leak(before: np.ndarray, new: np.ndarray, targets: np.ndarray, weight: np.ndarray, site_of: np.ndarray,
             sites: list[str], k: int) -> SpanLeak | None:
    """The first set of 1..k-1 patients that `before` + `new` (cells x atoms) make derivable and `before` alone
    did not: among `targets` (e.g. hidden cells) and the classes of atoms of `before` + `new`; for the
    analyst, then for an insider at each site (whose own atoms are known, so left out)."""
    after = np.vstack([before, new]) if len(before) else new
    used = np.asarray(after.any(axis=0), dtype=bool)
    views: list[tuple[str | None, np.ndarray]] = [(None, np.zeros(len(used), dtype=bool))]
    views += [(site, site_of == s) for s, site in enumerate(sites) if (site_of[used] == s).any()]
    for who, known in views:
        cols = used & ~known
        if not cols.any():
            continue
        a, b = after[:, cols], before[:, cols] if len(before) else np.zeros((0, int(cols.sum())))
        w = weight[cols]
        _, inverse = np.unique(a.T, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        class_sets = inverse[None, :] == np.arange(inverse.max() + 1)[:, None]  # (classes, atoms)
        # atoms no cell covers and the viewer does not know: a target holding any of them is never derivable
        unseen = np.asarray(targets[:, ~used & ~known].any(axis=1), dtype=bool)
        hidden_sets = targets[:, cols] & ~unseen[:, None]
        for what, sets in (("a hidden cell", hidden_sets), ("a set of patients no single cell shows", class_sets)):
            units = sets.astype(float) @ w
            small = (units > 0.5) & (units < k - 0.5)
            if not small.any():
                continue
            cand = sets[small]
            now = derivable(a, cand)
            if not now.any():
                continue
            was = derivable(b, cand[now], unsure=False)
            if (~was).any():
                return SpanLeak(units=float(units[small][now][~was][0]), insider=who, what=what)
    return None
