"""The differencing check in batches (issue 8, item 3: "it must stay fast as history grows"). A query related
to more earlier results than one atom-space request holds (`summaries.MAX_EARLIER`) used to be refused for
capacity; it is now checked batch by batch (`guards.plan_batches`), and must decide exactly as one batch
would: the same refusals, the same per-site values withheld, the same releases."""

from __future__ import annotations

from typing import Any

import pytest

from federation.query import Filter, Query, run_local
from federation.query.central import guards
from federation.query.guard import QueryRefused
from federation.settings import Settings
from tests.attacks.test_no_needless_loss import GUIDE, withheld
from tests.federated import STUDY, close_cut_points, elsewhere

AGE = "age_at_diagnosis_years"


def decision(r: Any) -> tuple[str, bool, int]:
    return r.status, "differencing" in r.reason, withheld(r)


def test_a_check_in_many_batches_decides_as_one_batch(fresh_audit: Settings, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    a, b = close_cut_points(fresh_audit, site="site-a")
    at_a = {"study_id": STUDY, "sites": ["site-a"]}
    queries = [
        *GUIDE,
        *(Query(study_id=STUDY, group_by=["sex"], filters=[Filter(column=AGE, op=">=", value=2 + i / 2)])
          for i in range(8)),
        Query(**at_a),  # type: ignore[arg-type]
        Query(**at_a, filters=[Filter(column=AGE, op="<", value=b)]),  # type: ignore[arg-type]
        Query(**at_a, filters=[Filter(column=AGE, op=">=", value=a)]),  # type: ignore[arg-type]  # a triple: refused
        Query(**at_a, filters=[Filter(column=AGE, op="<", value=a)]),  # type: ignore[arg-type]  # a pair: refused
        Query(study_id=STUDY, group_by=["arm"], sites=["site-b", "site-c", "site-d", "site-e", "site-f"]),
        Query(study_id=STUDY, statistic="mean", column="os_days", group_by=["arm"]),
        Query(study_id=STUDY, group_by=["stage"], filters=[Filter(column="arm", op="!=", value="NR")]),
    ]
    one = [run_local(q, elsewhere(fresh_audit, "one-batch"), "ana") for q in queries]
    assert {r.status for r in one} == {"released", "refused"}  # the sequence has leaks to find

    sizes: list[int] = []
    plan = guards.plan_batches

    def smallest(n: int, together: set[int], groups: list[tuple[int, list[int]]], capacity: int,
                 everywhere: set[int] | None = None, keys: list[Any] | None = None) -> list[Any]:
        """The smallest batches the plan allows: the triple candidates and the cells in every batch, or the
        largest span group with them (counted in footprints, not in the subsets the sites are asked about)."""
        every = everywhere or set()
        least = len(every) + max([1, len(together - every),
                                  *(len({i for i in [f, *m] if i >= 0} - every) for f, m in groups)])
        batches = plan(n, together, groups, max(least, 2 * len(every)), everywhere=every)
        sizes.append(len(batches))
        return batches

    monkeypatch.setattr(guards, "plan_batches", smallest)
    monkeypatch.setattr(guards, "MAX_BATCHES", 10_000)
    many = [run_local(q, fresh_audit, "ana") for q in queries]
    # several queries really were checked in more than one batch (most candidates of a short history are
    # triple candidates, which stay together)
    assert sum(1 for n in sizes if n >= 2) >= 3, sizes
    differ = [(i, x.reason, y.reason) for i, (x, y) in enumerate(zip(many, one, strict=True))
              if decision(x) != decision(y)]
    assert not differ, differ


def test_a_batch_plan_keeps_triples_and_span_groups_whole() -> None:
    together = {0, 1, 2}
    groups = [(-1, [3, 4, 5]), (6, [6, 7]), (-2, [2, 8, 9, 10])]
    batches = guards.plan_batches(30, together, groups, 5)
    assert all(len(b.members) <= 5 for b in batches)
    assert together <= batches[0].members  # triple candidates and cells with the same patients together
    for g, (focus, around) in enumerate(groups):  # every span group inside the one batch that checks it
        (home,) = [b for b in batches if g in b.groups]
        assert {i for i in [focus, *around] if i >= 0} <= home.members
    assert set().union(*(b.members for b in batches)) == set(range(30))  # every candidate in some batch
    assert len(batches) == 7  # 30 candidates, 5 a batch, and one duplicate (2 is in the first batch and in group 2's)


@pytest.mark.parametrize(("together", "groups", "n"), [(set(range(6)), [], 6), (set(), [(-2, list(range(6)))], 6),
                                                      (set(), [], 5 * 20 + 1)])
def test_a_plan_beyond_capacity_is_refused(together: set[int], groups: list[tuple[int, list[int]]], n: int) -> None:
    with pytest.raises(QueryRefused, match="more earlier results than the differencing check compares"):
        guards.plan_batches(n, together, groups, 5)


def test_cells_that_may_decide_for_the_same_patients_join_every_batch() -> None:
    batches = guards.plan_batches(20, {0, 1}, [], 6, everywhere={2, 3})
    assert all({2, 3} <= b.members and len(b.members) <= 6 for b in batches)
    assert {0, 1} <= batches[0].members and set().union(*(b.members for b in batches)) == set(range(20))
    # more than half a batch of them: they join the first batch only (a batch without them refuses more)
    (only,) = [b for b in guards.plan_batches(20, {0}, [], 6, everywhere={1, 2, 3, 4}) if {1, 2, 3, 4} & b.members]
    assert {0, 1, 2, 3, 4} <= only.members


def test_footprints_on_the_same_rows_count_once_in_a_batch() -> None:
    # a span group of 9 footprints, 8 of them counts of everyone by different groupings (one subset and version):
    # the sites are asked about 2 subsets, so it fits a batch of 3
    keys: list[object] = ["everyone"] * 8 + ["age < 2", "sex == F", "sex == M"]
    batches = guards.plan_batches(11, set(), [(-2, list(range(9)))], 3, keys=keys)
    assert len(batches) == 2 and set(range(9)) <= batches[0].members
    assert all(len({keys[i] for i in b.members}) <= 3 for b in batches)
    with pytest.raises(QueryRefused):
        guards.plan_batches(11, set(), [(-2, list(range(11)))], 3, keys=keys)
