"""Differencing across released results, on *atoms*: the sets of rows that no released subset tells apart.

Each site answers `HistoryAtoms` for the new query and every earlier footprint that involves it: its rows
grouped by (group-by values, membership in each released subset at the version it was released from).
Rows are matched across versions by identity (a patient's pseudonym; an event row's pseudonym and
content), so a re-upload that adds one patient is one atom of one row. Every released cell of every
result (combined over its sites, and per site when per-site values were released) is then a 0/1 vector
over the atoms; a set of atoms is sized in patients, each counted once however many atoms hold their rows
(`Units`: in the row tables a patient has rows in several atoms).

A new result isolates a few patients when, with what was released before, it yields a vector that is a
small non-empty set:
- **pairs**: one cell nested in another with fewer than k rows between them (`e - q` or `q - e`),
  also as seen by a **site insider** who removes their own site's rows from the difference;
- **triples**: `q + a - b`, `a + b - q`, `q - a - b` or `a - b - q` equal to a 0/1 vector of 1..k-1 rows
  (or a 0/2 vector: twice such a set, `TwiceGuard`),
  per site as well as combined (e.g.
  `age < 2`, `age >= 1.5` and everyone give the bin [1.5, 2)); found by a size window on sorted totals,
  then checked exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from federation.query.guard import Guard


@dataclass(frozen=True)
class Leak:
    """A small set the new result would make derivable, and the earlier results involved."""

    new: int  # index of the new result's vector
    earlier: tuple[int, ...]  # indexes of the earlier vectors
    how: str


@dataclass
class Vectors:
    """Released cells as rows of a sparse 0/1 matrix over atoms; `owner[i]` names the result of row i."""

    matrix: sparse.csr_matrix
    owner: list[int]
    per_site: list[bool]
    cond: list[frozenset[str]] = field(default_factory=list)  # each cell's conditions (filters, split, group)
    where: list[str] = field(default_factory=list)  # each cell's site ("" for a combined cell)


class DistinctPatientsGuard(Guard):
    """A set of atoms counts each patient once, however many of its atoms hold the patient's rows (tables of
    several rows per patient): otherwise a patient split over five cells weighs as five."""


EPS = 1e-6


@dataclass
class Units:
    """Patients in sets of atoms. Each atom knows its distinct patients; a patient whose rows lie in several
    atoms (a quality-of-life score per time point, a treatment per agent) is in each of them, so the sum over
    a set's atoms over-counts: the ninth red team took one patient's five scores as "five patients" that way.
    `patterns` (patients x atoms, one row per distinct set of atoms, `counts` patients each, from the sites'
    `Atoms.patterns`) give a set's exact count; `lower` is an additive lower bound (each patient's unit
    shared among their atoms) for the searches that rely on sums: a set of fewer than k patients has a lower
    bound of at most k - 1, so screening on it misses none, and every candidate is then counted exactly."""

    upper: np.ndarray  # distinct patients of each atom (sums over-count patients in several atoms)
    patterns: sparse.csr_matrix | None = None  # (patterns, atoms): the atoms of patients in two or more
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # patients per pattern
    lower: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.upper = np.asarray(self.upper, dtype=float)
        if self.patterns is not None and (self.patterns.shape[0] == 0 or not DistinctPatientsGuard.enabled()):
            self.patterns = None
        if self.patterns is None:
            self.lower = self.upper
            return
        per = np.maximum(np.asarray(self.patterns.sum(axis=1)).ravel(), 1.0)  # atoms per pattern
        share = self.counts * (1.0 - 1.0 / per)  # what each pattern's patients over-count per atom
        self.lower = self.upper - np.asarray(self.patterns.T @ share).ravel()

    @classmethod
    def additive(cls, weight: np.ndarray) -> Units:
        return cls(upper=np.asarray(weight, dtype=float))

    @property
    def exact_sums(self) -> bool:
        return self.patterns is None

    def take(self, cols: np.ndarray) -> Units:
        """The same over the atoms `cols` only (a pattern keeps the atoms among them)."""
        if self.patterns is None:
            return Units(upper=self.upper[cols])
        sub = self.patterns[:, cols]
        return Units(upper=self.upper[cols], patterns=sub, counts=self.counts)

    def of(self, sets: np.ndarray | sparse.spmatrix) -> np.ndarray:
        """Distinct patients of each set (rows of a sets x atoms 0/1 matrix, or one 0/1 vector)."""
        m = sparse.csr_matrix(sets, dtype=float) if sparse.issparse(sets) \
            else sparse.csr_matrix(np.atleast_2d(np.asarray(sets, dtype=float)))
        total = np.asarray(m @ self.upper).ravel()
        if self.patterns is not None:
            hits = (self.patterns @ m.T).toarray()  # (patterns, sets): atoms of the set each pattern has
            total -= self.counts @ np.maximum(hits - 1.0, 0.0)  # a patient in h atoms of the set counted once
        return total


def maybe_small(lower: np.ndarray, k: int) -> np.ndarray:
    """Sets whose additive lower bound allows 1..k-1 patients (non-empty sets bound above 0): to check exactly."""
    return (lower > EPS) & (lower < k - 1 + EPS)


class EmptyCombinationGuard(Guard):
    """Three results that combine into an empty set are refused like three that combine into 1..k-1 patients,
    unless they are empty by definition (`structure.is_disjoint_union`): otherwise the refusal tells which."""


TRIPLE = ("three cells, of this result and earlier ones, add up, or one minus the others comes, to a set of fewer "
          "than k patients (possibly none)")
NESTED = "a cell of one lies inside a cell of the other with fewer than k patients between them (possibly none)"


def is_small(x: np.ndarray, k: int) -> np.ndarray:
    return (x > 0.5) & (x < k - 0.5)


def pair_leaks(new: Vectors, pool: Vectors, units: Units, site_of: np.ndarray, n_sites: int, k: int
               ) -> list[Leak]:
    """Nested cells whose difference is 1..k-1 patients, for the analyst and for every site insider."""
    if pool.matrix.shape[0] == 0 or new.matrix.shape[0] == 0:
        return []
    P = pool.matrix.astype(np.float64)
    Q = new.matrix.astype(np.float64)
    common = (P @ Q.T).toarray()  # atoms in both
    nested_e = (np.asarray(Q.sum(axis=1)).ravel()[None, :] - common < 0.5) \
        & (np.asarray(P.sum(axis=1)).ravel()[:, None] - common > 0.5)  # q inside e: e - q is derivable
    nested_q = (np.asarray(P.sum(axis=1)).ravel()[:, None] - common < 0.5) \
        & (np.asarray(Q.sum(axis=1)).ravel()[None, :] - common > 0.5)  # e inside q: q - e is derivable
    w = units.lower  # additive; exact when no patient has rows in two atoms, else a bound checked below
    inter = (P.multiply(w) @ Q.T).toarray()  # |e n q|, shape (pool, new)
    only_e = np.asarray(P @ w).ravel()[:, None] - inter
    only_q = np.asarray(Q @ w).ravel()[None, :] - inter
    leak = (nested_e & maybe_small(only_e, k)) | (nested_q & maybe_small(only_q, k))
    for s in range(n_sites):  # an insider at site s knows their own rows of the difference
        ws = w * (site_of == s)
        inter_s = (P.multiply(ws) @ Q.T).toarray()
        e_s = np.asarray(P @ ws).ravel()[:, None] - inter_s
        q_s = np.asarray(Q @ ws).ravel()[None, :] - inter_s
        leak |= (nested_e & maybe_small(only_e - e_s, k)) | (nested_q & maybe_small(only_q - q_s, k))
    out = []
    for i, j in zip(*np.nonzero(leak), strict=True):
        if not units.exact_sums:
            e, q = P[i].toarray().ravel() > 0.5, Q[j].toarray().ravel() > 0.5
            diff = (e & ~q) if nested_e[i, j] else (q & ~e)
            views = np.vstack([diff] + [diff & (site_of != s) for s in range(n_sites)])
            if not is_small(units.of(views), k).any():
                continue  # fewer than k by the bound only: its patients have rows in several of its atoms
        out.append(Leak(new=int(j), earlier=(int(i),), how=NESTED))
    return out


Union = Callable[[tuple[str, int], tuple[str, int], tuple[str, int]], bool]


def triple_leaks(new: Vectors, pool: Vectors, units: Units, k: int, budget: int = 2_000_000,
                 union: Union | None = None, also_new: np.ndarray | None = None) -> list[Leak]:
    """`q + a - b`, `a + b - q`, `q - a - b` and `a - b - q` that are 0/1 vectors of 0..k-1 rows, for every
    new cell q and cells a, b of which at least one is earlier (the other may be another new cell: an earlier
    count minus two groups of a new mean); combined and per-site cells alike. An empty one is a leak too (the
    answer must not tell "none" from "a few"), unless `union` says it is empty by definition: called with
    (whole, x, y) as ("new" or "pool", index), true when whole is x and y apart whatever the data. Three new
    cells are the suppression audit's business (one result), and so are earlier cells the new result shows
    again (`also_new`: a curve's number at risk at day 0 is its group's count)."""
    n_pool, n_new = pool.matrix.shape[0], new.matrix.shape[0]
    if not n_pool or not n_new:
        return []
    ext = sparse.vstack([pool.matrix, new.matrix]).astype(bool).tocsr()  # earlier cells, then the new ones
    w = units.lower  # additive: the windows below on its sums miss no set of fewer than k patients
    sizes = np.asarray(ext.astype(np.float64) @ w).ravel()
    atoms_in = np.asarray(ext.sum(axis=1)).ravel()  # atoms per cell (to tell one cell inside another)
    order = np.argsort(sizes, kind="stable")
    sorted_sizes = sizes[order]
    dense = ext.toarray()  # cells x atoms, bool
    own = np.concatenate([also_new if also_new is not None and len(also_new) else np.zeros(n_pool, dtype=bool),
                          np.ones(n_new, dtype=bool)])  # cells the new result shows
    out: list[Leak] = []
    checked = 0

    def ref(i: int) -> tuple[str, int]:
        return ("pool", i) if i < n_pool else ("new", i - n_pool)

    for j in range(n_new):
        me = n_pool + j
        q = dense[me]
        nq = float(w[q].sum())
        common_q = dense[:, q].sum(axis=1)  # atoms of a in q, for every a
        for pattern in ("q+a-b", "a+b-q", "q-a-b", "a-b-q"):
            for a in range(len(sizes)):
                if a == me:
                    continue
                na = sizes[a]
                if pattern == "q-a-b" and common_q[a] != atoms_in[a]:
                    continue  # a must lie inside q
                if pattern == "a-b-q" and common_q[a] != atoms_in[me]:
                    continue  # q must lie inside a
                # the derived set has 0..k-1 patients, so a bound of 0..k-1 (twice that where it is counted
                # twice: `TwiceGuard`): a window on b's
                m = TwiceGuard.slack(k)
                lo, hi = {"q+a-b": (nq + na - m, nq + na), "a+b-q": (nq - na, nq - na + m),
                          "q-a-b": (nq - na - m, nq - na), "a-b-q": (na - nq - m, na - nq)
                          }[pattern]
                first, last = np.searchsorted(sorted_sizes, [lo - EPS, hi + EPS])
                for b in order[first:last]:
                    if b == a or b == me or (own[a] and own[b]):
                        continue
                    checked += 1
                    if checked > budget:
                        raise TooMuchHistory()
                    va, vb = dense[a].astype(int), dense[b].astype(int)
                    v = {"q+a-b": q + va - vb, "a+b-q": va + vb - q, "q-a-b": q - va - vb,
                         "a-b-q": va - vb - q}[pattern]
                    if v.min() < 0 or v.max() > 2 or (v.max() == 2 and (v == 1).any()):
                        continue
                    if v.max() == 2 and not TwiceGuard.enabled():
                        continue
                    n = float(units.of(v > 0)[0])
                    if n < 0.5 and union is not None:
                        whole, x, y = {"q+a-b": (ref(int(b)), ("new", j), ref(a)),
                                       "a+b-q": (("new", j), ref(a), ref(int(b))),
                                       "q-a-b": (("new", j), ref(a), ref(int(b))),
                                       "a-b-q": (ref(a), ref(int(b)), ("new", j))}[pattern]
                        if union(whole, x, y):
                            continue  # empty by definition: it tells nothing
                    if n < k - 0.5 and (n > 0.5 or union is not None):
                        # one text whichever pattern it was (`cite` names the results in one order): the empty
                        # set and a set of a few often match different patterns
                        out.append(Leak(new=j, earlier=tuple(i for i in (a, int(b)) if i < n_pool), how=TRIPLE))
                        return out
    return out


class TwiceGuard(Guard):
    """Three cells that overlap two by two (X+Y, X+Z, Y+Z) give twice a set: `a + b - q` = 2X. The triples
    take a combination whose every atom is counted twice like one counted once (the thirteenth red team:
    three cumulative incidences with cause lists [X, Y], [X, Z], [Y, Z] gave X's events)."""

    @classmethod
    def slack(cls, k: int) -> int:
        """How far the sizes of a combination may sum: k-1 patients, or twice that with this guard on."""
        return 2 * (k - 1) if cls.enabled() else k - 1


class TooMuchHistory(Exception):
    """More candidate combinations than the guard checks in one query: it refuses rather than guess."""
