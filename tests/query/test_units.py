"""`differencing.Units`: patients in sets of atoms when a patient's rows lie in several atoms, against a
count of the patients themselves."""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy import sparse

from federation.query.central.differencing import Units, maybe_small


def space(rng: np.random.Generator, n_patients: int, n_atoms: int) -> tuple[list[set[int]], Units]:
    """Patients with rows in 1..4 random atoms, and the Units the sites' replies would give."""
    spread = [set(rng.choice(n_atoms, size=int(rng.integers(1, 5)), replace=False).tolist())
              for _ in range(n_patients)]
    upper = np.zeros(n_atoms)
    for atoms in spread:
        upper[list(atoms)] += 1
    patterns = Counter(tuple(sorted(a)) for a in spread if len(a) > 1)
    rows = list(patterns)
    m = sparse.csr_matrix((np.ones(sum(len(r) for r in rows)), np.concatenate([list(r) for r in rows]),
                           np.cumsum([0] + [len(r) for r in rows])), shape=(len(rows), n_atoms))
    return spread, Units(upper=upper, patterns=m, counts=np.asarray([patterns[r] for r in rows], dtype=float))


def test_a_set_counts_each_patient_once_and_the_bound_never_exceeds_it() -> None:
    rng = np.random.default_rng(7)
    spread, units = space(rng, 60, 25)
    sets = rng.random((300, 25)) < rng.random((300, 1)) * 0.4
    truth = np.asarray([sum(bool(a & set(np.nonzero(s)[0].tolist())) for a in spread) for s in sets])
    assert (units.of(sets) == truth).all()
    lower = sets.astype(float) @ units.lower
    assert (lower <= truth + 1e-9).all()
    assert (sets.astype(float) @ units.upper >= truth).all() and (sets.astype(float) @ units.upper > truth).any()
    # the screen misses no set of 1..4 patients
    small = (truth >= 1) & (truth <= 4)
    assert small.any() and maybe_small(lower, 5)[small].all()
    # over some atoms only (`take`), the same
    cols = np.sort(rng.choice(25, size=12, replace=False))
    sub = units.take(cols)
    assert (sub.of(sets[:, cols]) == [sum(bool(a & set(cols[np.nonzero(s)[0]].tolist())) for a in spread)
                                      for s in sets[:, cols]]).all()
    assert (sets[:, cols].astype(float) @ sub.lower <= sub.of(sets[:, cols]) + 1e-9).all()


def test_without_patterns_a_set_is_the_sum_of_its_atoms() -> None:
    units = Units.additive(np.array([3.0, 1.0, 7.0]))
    assert units.exact_sums and list(units.of(np.array([[1, 0, 1], [0, 1, 0]], dtype=bool))) == [10.0, 1.0]
