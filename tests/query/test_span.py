"""The span check: which sets of atoms released cells pin down exactly, and which the new cells newly pin
down for an analyst or a site insider (`federation.query.central.span`), on small hand-made tables."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from federation.query.central.differencing import Units
from federation.query.central.runner import released_cells
from federation.query.central.span import column_classes, derivable, new_leak, small_unions
from federation.query.guard import QueryRefused


def rows(*cells: list[int]) -> np.ndarray:
    return np.array(cells, dtype=bool)


def test_a_bin_between_two_half_lines_and_the_whole_is_derivable() -> None:
    # atoms: below a, [a, b), from b; cells: everyone, < b, >= a
    shown = rows([1, 1, 1], [1, 1, 0], [0, 1, 1])
    assert derivable(shown, rows([0, 1, 0]))[0]
    assert not derivable(shown[:2], rows([0, 1, 0]))[0]  # two of them only give its complement's parts


def test_atoms_no_cell_tells_apart_are_one_class() -> None:
    shown = rows([1, 1, 0, 0], [1, 1, 1, 1])
    assert derivable(shown, rows([1, 1, 0, 0], [0, 0, 1, 1])).all()
    assert not derivable(shown, rows([1, 0, 0, 0]))[0]  # splits a class: never pinned down


def test_a_complement_released_later_gives_the_primary_cell() -> None:
    # one site; atoms: groups g1 (30), g2 (40), g3 (1 patient, primary), g4 (12, hidden as its complement)
    weight = np.array([30.0, 40.0, 1.0, 12.0])
    units = Units.additive(weight)
    site_of = np.zeros(4, dtype=int)
    before = rows([1, 1, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0])  # the site total, and the groups shown
    hidden = rows([0, 0, 1, 0], [0, 0, 0, 1])
    assert new_leak(before, rows([0, 0, 1, 1]), hidden, units, site_of, ["s"], 5) is None  # g3+g4: known already
    leak = new_leak(before, rows([0, 0, 0, 1]), hidden, units, site_of, ["s"], 5)  # g4 filtered: g3 follows
    assert leak is not None and leak.units == 1.0 and leak.what == "a hidden cell" and leak.insider is None
    # a set pinned down before the new cells is not the new result's doing
    assert new_leak(np.vstack([before, rows([0, 0, 0, 1])]), rows([1, 1, 0, 0]), hidden, units, site_of, ["s"],
                    5) is None


def test_an_insider_removes_their_own_rows() -> None:
    # two sites, one group each side hidden; atoms: (site 0, small), (site 0, big), (site 1, small), (site 1, big)
    weight = np.array([2.0, 30.0, 3.0, 40.0])
    units = Units.additive(weight)
    site_of = np.array([0, 0, 1, 1])
    before = rows([1, 1, 0, 0], [0, 0, 1, 1])  # each site's total
    new = rows([1, 0, 1, 0])  # the combined small group (5 patients: shown as at least k)
    hidden = rows([1, 0, 0, 0], [0, 0, 1, 0])
    assert new_leak(before, new, hidden, units, site_of, ["a", "b"], 5) is not None  # insider a gets b's 3
    leak = new_leak(before, new, hidden, units, site_of, ["a", "b"], 5)
    assert leak is not None and leak.insider in ("a", "b")
    # without the insiders' knowledge the two small cells stay hidden from an outside analyst
    assert not derivable(np.vstack([before, new]), hidden).any()


def test_the_cells_a_result_hid_are_read_from_what_it_shows() -> None:
    count = {"statistic": "count", "dims": ["arm"], "rows": [
        {"group": ["NR"], "combined": 45, "per_site": {"site-a": {"suppressed": True}, "site-b": 44}},
        {"group": ["M"], "combined": {"suppressed": True}, "per_site": {"site-a": 9, "site-b": 7}}],
        "total": {"combined": 105, "per_site": {"site-a": 10, "site-b": {"suppressed": True}}}}
    levels, hidden = released_cells(count)
    assert levels == [["arm"], []]
    assert sorted(map(str, hidden)) == sorted(map(str, [["site-a", ["arm"], ["NR"]], ["", ["arm"], ["M"]],
                                                         ["site-b", [], []]]))
    crosstab = {"statistic": "crosstab", "rows_dim": "stage", "cols_dim": "sex", "rows": ["I", "total"],
                "cols": ["F", "total"], "combined": [[{"suppressed": True}, 8], [9, 20]], "per_site": {}}
    levels, hidden = released_cells(crosstab)
    assert levels == [["stage", "sex"], ["stage"], ["sex"], []] and hidden == [["", ["stage", "sex"], ["I", "F"]]]
    km = {"statistic": "km", "dims": ["arm"], "curves": [
        {"group": ["NR"], "combined": {"points": [{"day": 0.0, "at_risk": {"suppressed": True}}]},
         "per_site": {"site-a": {"points": [], "withheld": True},
                      "site-b": {"points": [{"day": 0.0, "at_risk": 40}, {"day": 30.0, "at_risk": 38}]}}}]}
    assert released_cells(km) == ([["arm"]], [["", ["arm"], ["NR"]], ["site-a", ["arm"], ["NR"]]])
    assert released_cells({"statistic": "logistic", "coefficients": []}) == ([[]], [])
    # every statistic of rows records what it hid (the seventh red team's V1: a variance recorded nothing)
    for kind in ("sum", "mean", "variance", "proportion", "quantiles"):
        rows_ = [{"group": ["NR"], "combined": {"suppressed": True}, "per_site": {}}]
        assert released_cells({"statistic": kind, "dims": ["arm"], "rows": rows_}) == ([["arm"]], [["", ["arm"],
                                                                                                  ["NR"]]])
    with pytest.raises(QueryRefused, match="cannot record"):  # a shape it does not know is never released
        released_cells({"statistic": "median-polish", "dims": ["arm"], "table": []})


def test_a_decomposition_that_fails_never_lets_a_result_through(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from federation.query.central import span

    def fails(*_a: object, **_k: object) -> None:
        raise np.linalg.LinAlgError("SVD did not converge")

    shown = rows([1, 1, 1], [1, 1, 0], [0, 1, 1])
    monkeypatch.setattr(span, "svd", fails)
    assert derivable(shown, rows([1, 0, 0])).all()  # unsure: "derivable", so the guard refuses
    assert not derivable(shown, rows([1, 0, 0]), unsure=False).any()  # and "was not derivable before"
    weight, site_of = np.array([30.0, 2.0, 30.0]), np.zeros(3, dtype=int)
    units = Units.additive(weight)
    assert new_leak(shown[:1], shown[1:], rows([0, 1, 0]), units, site_of, ["s"], 5) is not None


def test_a_matrix_on_which_the_fast_decomposition_fails_is_still_decided() -> None:
    # cells x classes of a real service run (tests/service after the DAG tests): LAPACK's gesdd did not converge
    from pathlib import Path

    data = np.load(Path(__file__).parent / "data" / "gesdd-does-not-converge.npz")
    shown = np.unpackbits(data["bits"], axis=1)[:, :int(data["shape"][1])].astype(bool)
    one_atom = np.zeros((1, shown.shape[1]), dtype=bool)
    one_atom[0, 0] = True
    assert derivable(shown, shown[:3]).all()  # a shown cell is derivable from the shown cells
    assert derivable(shown, one_atom, unsure=True)[0] == derivable(shown, one_atom, unsure=False)[0]  # decided


def test_the_parts_of_groups_a_result_shows_counts_of_are_read_too() -> None:
    from federation.query import Filter, Query
    from federation.query.central.runner import released_splits

    prop = Query(study_id="PONC-WT-01", statistic="proportion", column="efs_event", value=True, group_by=["arm"])
    hidden = [["site-a", ["arm"], ["NR"]]]
    assert released_splits(prop, {"statistic": "proportion", "rows": []}, hidden) == [
        {"split": [{"column": "efs_event", "op": "==", "value": True}], "hidden": hidden}]
    outcome = Filter(column="efs_event", op="==", value=True)
    logit = Query(study_id="PONC-WT-01", statistic="logistic", outcome=outcome, covariates=["sex"])
    assert released_splits(logit, {"statistic": "logistic"}, []) == [{"split": [outcome.model_dump()], "hidden": []}]
    assert released_splits(logit, {}, []) == []  # refused: nothing shown
    km = Query(study_id="PONC-WT-01", statistic="km", endpoint="os", grid_days=365.25, horizon_days=1461.0,
               group_by=["arm"])
    # two sites; year 1: both shown; year 2: site-b's number hidden, and its step spans two years
    payload = {"statistic": "km", "dims": ["arm"], "curves": [{"group": ["NR"], "combined": {
        "points": [{"day": 0.0, "at_risk": 40}, {"day": 365.25, "at_risk": 30}, {"day": 730.5, "at_risk": 20}],
        "risk_table": [{"year": 0, "at_risk": 40}, {"year": 1, "at_risk": 30}, {"year": 2, "at_risk": 20},
                       {"year": 3, "at_risk": {"suppressed": True}}]},
        "per_site": {"site-b": {"points": [{"day": 0.0, "at_risk": 20}, {"day": 730.5, "at_risk": 9}]}}}]}
    parts = {json_of(p["split"]): p["hidden"] for p in released_splits(km, payload, [])}
    assert parts == {
        json_of([{"column": "os_days", "op": ">=", "value": 365.25}]): [["site-b", ["arm"], ["NR"]]],
        json_of([{"column": "os_days", "op": ">=", "value": 730.5}]): [],
        # events before every point a curve shows (site-b's two-year step too: across longer steps the survival
        # ratio narrows them to the count, the eighth red team's C1/D1), hidden where a curve shows no point there
        json_of([{"column": "os_event", "op": "==", "value": True}, {"column": "os_days", "op": "<", "value": 365.25}]):
            [["site-b", ["arm"], ["NR"]]],
        json_of([{"column": "os_event", "op": "==", "value": True}, {"column": "os_days", "op": "<", "value": 730.5}]):
            []}


def json_of(x: object) -> str:
    import json

    return json.dumps(x, sort_keys=True)


def test_a_curve_withholds_what_shows_a_part_at_one_time() -> None:
    from federation.query import Filter, Query
    from federation.query.central.guards import part_name, withhold_time
    from federation.query.central.history import Footprint

    q = Query(study_id="PONC-WT-01", statistic="km", endpoint="os", grid_days=365.25, horizon_days=1461.0)

    def payload() -> dict:  # type: ignore[type-arg]
        return {"statistic": "km", "grid_days": 365.25, "curves": [{"group": [], "combined": {
            "points": [{"day": 0.0, "at_risk": 40}, {"day": 365.25, "at_risk": 30}, {"day": 730.5, "at_risk": 20}],
            "risk_table": [{"year": 0, "at_risk": 40}, {"year": 1, "at_risk": 30}, {"year": 2, "at_risk": 20}]},
            "per_site": {}}]}

    at_risk = Footprint.of(q, {"site-a": 1}, True, split=[Filter(column="os_days", op=">=", value=365.25)])
    p = payload()
    assert withhold_time(p, at_risk) and part_name(at_risk) == "the number at risk at day 365.25"
    curve = p["curves"][0]["combined"]
    assert [x["at_risk"] for x in curve["points"]] == [40, {"suppressed": True}, 20]
    assert [x["at_risk"] for x in curve["risk_table"]] == [40, {"suppressed": True}, 20]
    assert not withhold_time(p, at_risk)  # nothing left to withhold there: the query is refused instead
    events = Footprint.of(q, {"site-a": 1}, True, split=[Filter(column="os_event", op="==", value=True),
                                                          Filter(column="os_days", op="<", value=730.5)])
    p = payload()
    assert withhold_time(p, events) and [x["day"] for x in p["curves"][0]["combined"]["points"]] == [0.0, 365.25]
    prop = Query(study_id="PONC-WT-01", statistic="proportion", column="efs_event", value=True)
    x = Footprint.of(prop, {"site-a": 1}, True, split=[Filter(column="efs_event", op="==", value=True)])
    assert not withhold_time({"statistic": "proportion", "rows": []}, x)


def test_a_union_of_two_classes_neither_pinned_down_alone_is_found() -> None:
    # the seventh red team's U1, in atoms: a0 and a1 one patient each, a2 and a3 ten each; everyone, everyone
    # but a0 and a1, and a result holding a0 and a3 (which splits a0 from a1 without pinning either)
    weight, site_of = np.array([1.0, 1.0, 10.0, 10.0]), np.zeros(4, dtype=int)
    units = Units.additive(weight)
    before = rows([0, 0, 1, 1], [1, 0, 0, 1])
    union = small_unions(np.vstack([before, rows([1, 1, 1, 1])]), weight, 5)
    assert union is not None and union.tolist() == [[True, True, False, False]]
    assert not derivable(np.vstack([before, rows([1, 1, 1, 1])]), rows([1, 0, 0, 0], [0, 1, 0, 0])).any()
    leak = new_leak(before, rows([1, 1, 1, 1]), np.zeros((0, 4), dtype=bool), units, site_of, ["s"], 5)
    assert leak is not None and leak.units == 2.0 and leak.what == "a set of patients no single cell shows"
    # a union of k or more, or one known before the new cells, is no leak
    assert new_leak(before, rows([1, 1, 1, 1]), np.zeros((0, 4), dtype=bool),
                    Units.additive(np.array([3.0, 2.0, 10, 10])), site_of, ["s"], 5) is None
    known = np.vstack([before, rows([1, 1, 0, 0])])
    assert new_leak(known, rows([1, 1, 1, 1]), np.zeros((0, 4), dtype=bool), units, site_of, ["s"], 5) is None


def test_unions_of_three_and_four_classes_are_found_and_nothing_else() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        # six one-patient atoms and two large ones; random cells; compare with every union by brute force
        weight = np.array([1.0] * 6 + [20.0, 20.0])
        shown = rng.random((5, 8)) < 0.5
        shown[0] = True
        got = small_unions(shown, weight, 5)
        assert got is not None
        inverse = column_classes(shown)
        classes = [np.nonzero(inverse == c)[0] for c in range(inverse.max() + 1)]
        small = [c for c in classes if 0 < weight[c].sum() < 5]
        want = set()
        for r in (2, 3, 4):
            for combo in combinations(range(len(small)), r):
                atoms = np.concatenate([small[i] for i in combo])
                if weight[atoms].sum() < 5:
                    target = np.zeros((1, 8), dtype=bool)
                    target[0, atoms] = True
                    if derivable(shown, target)[0]:
                        want.add(tuple(sorted(atoms.tolist())))
        assert {tuple(np.nonzero(r)[0].tolist()) for r in got} == want
