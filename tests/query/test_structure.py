"""What results are by definition (`central/structure.py`): the no-oracle rules release an empty combination
only when it is empty whatever the data, and check empty cells through hypothetical patients."""

from __future__ import annotations

import json

import pytest

from federation.query.central.structure import CellDef, is_disjoint_union, phantoms
from federation.query.policy import load_query_policy

STUDY = "PONC-WT-01"
BOTH = (("site-a", 1), ("site-b", 1))


def f(column: str, op: str, value: object) -> str:
    return json.dumps({"column": column, "op": op, "value": value}, sort_keys=True)


def cell(*cond: str, site: str = "", versions: tuple[tuple[str, int], ...] = BOTH) -> CellDef:
    return CellDef(cond=frozenset(cond), site=site, versions=versions)


AGE = "age_at_diagnosis_years"


@pytest.mark.parametrize(("whole", "x", "y", "expected"), [
    (cell(), cell(f(AGE, "<", 2)), cell(f(AGE, ">=", 2)), True),  # age is never missing
    (cell(), cell(f(AGE, "<", 2)), cell(f(AGE, ">=", 2.5)), False),  # a gap: [2, 2.5)
    (cell(), cell(f("sex", "==", "M")), cell(f("sex", "!=", "M")), True),  # sex is required
    (cell(), cell(f("race", "==", "WHITE")), cell(f("race", "!=", "WHITE")), False),  # race may be missing
    (cell(f("arm", "==", "NR")), cell(f("arm", "==", "NR"), site="site-a"), cell(f("arm", "==", "NR"),
                                                                                  site="site-b"), True),
    (cell(), cell(f("sex", "==", "M"), versions=(("site-a", 2), ("site-b", 1))), cell(f("sex", "!=", "M")),
     False),  # two versions of site-a: which rows they share is data
    (cell(f("arm", "in", ["EE4A", "DD4A"])), cell(f("arm", "==", "EE4A")), cell(f("arm", "==", "DD4A")), True),
    (cell(f("efs_days", "<", 730)), cell(f("efs_days", "<", 365)),
     cell(f("efs_days", ">=", 365), f("efs_days", "<", 730)), True),
    (cell(), cell("exists X"), cell(f("sex", "==", "M")), False),
    (cell(), cell(f("histology_icdo3", "==", "8960/3")), cell(f("histology_icdo3", "!=", "8960/3")), False),
])
def test_a_union_by_definition(whole: CellDef, x: CellDef, y: CellDef, expected: bool) -> None:
    assert is_disjoint_union(STUDY, "patients", whole, x, y) is expected


def test_the_policys_groups_are_the_values_a_column_can_take() -> None:
    """histology_risk FAVORABLE and UNFAVORABLE make up everyone under the policy (it offers no other group:
    a site holding another value takes no part in results grouped by it), not under the dictionary."""
    x, y = cell(f("histology_risk", "==", "FAVORABLE")), cell(f("histology_risk", "==", "UNFAVORABLE"))
    assert not is_disjoint_union(STUDY, "patients", cell(), x, y)
    assert is_disjoint_union(STUDY, "patients", cell(), x, y, load_query_policy())


def test_an_empty_cell_could_hold_a_patient_of_each_kind_the_cells_around_it_tell_apart() -> None:
    hidden = cell(f("arm", "==", "NR"), site="site-a")
    rows = [cell(site="site-a"), cell(f("sex", "==", "F"), site="site-a"), cell(f("arm", "==", "M"), site="site-a")]
    kinds = phantoms(STUDY, "patients", hidden, rows)
    assert kinds is not None
    assert sorted(inside for _, inside in kinds) == [[True, False, False], [True, True, False]]  # by sex
    assert phantoms(STUDY, "patients", cell(f("arm", "==", "NR"), f("arm", "==", "M")), rows) == []  # none
