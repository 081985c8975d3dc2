"""The first late effect as an endpoint (`--endpoint late_effect`) goes through the same differencing as EFS
and OS: its curves' numbers at risk are parts in the history, and its cut points are the policy's. Each attack
first succeeds with the guard switched off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from federation.query import Filter, Query, run_local
from federation.query.guard import switched_off
from federation.settings import Settings
from tests.federated import NB03 as STUDY
from tests.federated import fresh, pooled_v2

YEAR = 365.25


def risk_table(r: Any) -> dict[int, Any]:
    assert r.status == "released", r.reason
    return {p["year"]: p["at_risk"] for p in r.payload["curves"][0]["combined"]["risk_table"]}


def test_two_late_effect_risk_tables_do_not_differ_by_a_few_patients(nb03: Settings, tmp_path: Path) -> None:
    """Yearly late-effect curves at site-c for everyone and for sex != U differ by 1..4 patients at some year:
    the sex-U patients still followed, without a late effect, then. Guarded, the second curve is released with
    those numbers at risk withheld."""
    kw: dict[str, Any] = dict(study_id=STUDY, statistic="km", endpoint="late_effect", grid_days=YEAR,
                              horizon_days=10 * YEAR, sites=["site-c"])
    queries = [Query(**kw), Query(**kw, filters=[Filter(column="sex", op="!=", value="U")])]

    with switched_off("differencing"):
        a, b = (risk_table(run_local(q, fresh(nb03, tmp_path / "off"), "m")) for q in queries)
    small = {y: a[y] - b[y] for y in a if isinstance(a[y], int) and isinstance(b.get(y), int)
             and 0 < a[y] - b[y] < 5}
    assert small, (a, b)
    for year, few in small.items():
        (truth,), = pooled_v2(nb03, "SELECT count(*) FROM patients WHERE site_id = 'site-c' AND sex = 'U' AND "
                                    f"late_effect_days >= {year * YEAR}")
        assert few == truth

    s = fresh(nb03, tmp_path / "on")
    first = risk_table(run_local(queries[0], s, "mallory"))
    second = run_local(queries[1], s, "mallory")
    assert any("withheld" in n and "differencing" in n for n in second.notes), second.notes
    b = risk_table(second)
    assert not [y for y in first if isinstance(first[y], int) and isinstance(b.get(y), int)
                and 0 < first[y] - b[y] < 5]
    assert set(small) <= {y for y, v in b.items() if v == {"suppressed": True}}


def test_a_late_effect_time_is_cut_only_at_the_policys_points(nb03: Settings, tmp_path: Path) -> None:
    """Patients whose first late effect (or its censoring) came before day d+1, minus those before day d, are
    the patients at day d: one patient's time. Guarded, d+1 is not a declared cut point."""
    (day,), = pooled_v2(nb03, "SELECT late_effect_days FROM patients WHERE site_id = 'site-c' GROUP BY 1 "
                              "HAVING count(*) = 1 ORDER BY abs(late_effect_days - 1000) LIMIT 1")
    before = [Query(study_id=STUDY, sites=["site-c"], filters=[Filter(column="late_effect_days", op="<", value=d)])
              for d in (day, day + 1)]

    def difference(s: Settings) -> int | None:
        a, b = (run_local(q, s, "mallory") for q in before)
        if "refused" in (a.status, b.status):
            assert "not a declared cut point of late_effect_days" in (a.reason + b.reason)
            return None
        return int(b.payload["total"]["combined"] - a.payload["total"]["combined"])

    with switched_off("cut_point", "differencing"):
        assert difference(fresh(nb03, tmp_path / "off")) == 1
    assert difference(fresh(nb03, tmp_path / "on")) is None


def test_three_cause_lists_do_not_give_a_rare_cause_twice(nb03: Settings, tmp_path: Path) -> None:
    """The thirteenth red team: cumulative incidences at site-a for the causes [X, Y], [X, Z] and [Y, Z] give
    (XY + XZ - YZ) / 2, the incidence of X alone: with the risk table, the two musculoskeletal first late
    effects of the second year. No two of the three differ by one cause; the three together count X twice
    (guard `twice`). Guarded, the third curve's point is withheld."""
    x, y, z = "MUSCULOSKELETAL", "ENDOCRINE", "HEARING"
    day = 2 * YEAR
    rows = pooled_v2(nb03, "SELECT late_effect_days, late_effect_event, first_late_effect FROM patients "
                           "WHERE site_id = 'site-a'")
    assert 1 <= sum(1 for t, e, c in rows if e and c == x and t < day) <= 4
    incidence, survival = 0.0, 1.0  # Aalen-Johansen of X on the yearly grid, pooled
    for start in (0.0, YEAR):
        at_risk = [r for r in rows if r[0] >= start]
        ended = [r for r in at_risk if r[1] and r[0] < start + YEAR]
        incidence += survival * sum(1 for r in ended if r[2] == x) / len(at_risk)
        survival *= 1 - len(ended) / len(at_risk)
    queries = [Query(study_id=STUDY, sites=["site-a"], statistic="cif", endpoint="late_effect", cause=c,
                     grid_days=YEAR, horizon_days=6 * YEAR) for c in ([x, y], [x, z], [y, z])]

    def at_day(folder: Path) -> list[float | None]:
        s = fresh(nb03, folder)
        out = []
        for q in queries:
            r = run_local(q, s, "mallory")
            assert r.status == "released", r.reason
            out.append(next((p["incidence"] for p in r.payload["curves"][0]["combined"]["points"]
                             if p["day"] == day), None))
        return out

    with switched_off("twice"):
        xy, xz, yz = at_day(tmp_path / "off")
    assert None not in (xy, xz, yz) and (xy + xz - yz) / 2 == pytest.approx(incidence) and incidence > 0  # type: ignore[operator]
    assert at_day(tmp_path / "on")[2] is None
