"""Refusals are not an oracle, and continuous columns are filtered only at declared cut points (issue 8,
items 1 and 2). Each attack is first shown to work with its guards switched off."""

from __future__ import annotations

import json
from typing import Any

import pytest

from federation.query import Filter, Query, run_local
from federation.query.guard import switched_off
from federation.settings import Settings
from tests.federated import STUDY, pooled

AGE = "age_at_diagnosis_years"


def _answer(settings: Settings, x: float, analyst: str) -> tuple[Any, ...]:
    """Everything an analyst sees of `count where age < x` at site-a, except the audit entry's number."""
    r = run_local(Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column=AGE, op="<", value=x)]),
                  settings, analyst)
    return r.status, r.reason, r.suggestion, json.dumps(r.payload, sort_keys=True), sorted(r.excluded.items())


def _bisect(settings: Settings, analyst: str) -> float:
    """Find the youngest age at site-a by asking whether `age < x` answers like `age < 0` (nobody)."""
    nobody = _answer(settings, 0.0, analyst)
    lo, hi = 0.0, 22.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if _answer(settings, mid, analyst) == nobody:
            lo = mid
        else:
            hi = mid
    return hi


def test_bisection_on_a_threshold_finds_an_age_only_with_the_oracle_open(fresh_audit: Settings) -> None:
    youngest = min(v for (v,) in pooled(fresh_audit, f"SELECT {AGE} FROM patients WHERE site_id = 'site-a'"))
    # the oracle: an empty subset answered differently from a small one; with arbitrary thresholds,
    # bisection pins the youngest patient's age to many decimals
    with switched_off("cut_point", "subset", "site_subset", "differencing", "empty_cell"):
        assert _bisect(fresh_audit, "mallory") == pytest.approx(youngest, abs=1e-6)
    # with the subset guards on (cut points still off), 0 rows and 1..k-1 rows answer identically
    with switched_off("cut_point"):
        nobody, two = _answer(fresh_audit, 0.0, "eve"), _answer(fresh_audit, youngest + 1e-6, "eve")
        assert nobody == two and nobody[0] == "refused" and "possibly none" in str(nobody[4])
        assert _bisect(fresh_audit, "eve") == pytest.approx(22.0, abs=1e-6)  # learns nothing
    # and with every guard on, the threshold must be a declared cut point
    r = run_local(Query(study_id=STUDY, filters=[Filter(column=AGE, op="<", value=youngest)]), fresh_audit, "eve")
    assert r.status == "refused" and "not a declared cut point" in r.reason and "use 0 or 0.5" in r.suggestion


def test_a_refusal_names_no_count(fresh_audit: Settings) -> None:
    # a site with a filter that keeps few rows, and one that leaves few out: the same text, no count in it
    n = pooled(fresh_audit, f"SELECT count(*) FROM patients WHERE site_id = 'site-a' AND {AGE} < 0.5")[0][0]
    assert n == 2
    keeps_few = run_local(Query(study_id=STUDY, filters=[Filter(column=AGE, op="<", value=0.5)]), fresh_audit, "e")
    leaves_few = run_local(Query(study_id=STUDY, filters=[Filter(column=AGE, op=">=", value=0.5)]), fresh_audit, "e")
    assert keeps_few.excluded["site-a"] == leaves_few.excluded["site-a"]
    assert "2" not in keeps_few.excluded["site-a"]


@pytest.mark.parametrize(("column", "op", "value", "says"), [
    (AGE, "==", 3.5, "compare it with < or >="),
    (AGE, "<=", 3.5, "compare it with < or >="),
    (AGE, "<", 3.4521, "use 3 or 3.5"),
    ("os_days", "<", 364, "use 335 or 365"),
    ("os_days", ">=", 400.5, "use 396 or 426"),
])
def test_a_continuous_filter_off_the_declared_cut_points_is_refused(federated: Settings, column: str, op: str,
                                                                    value: float, says: str) -> None:
    q = Query(study_id=STUDY, filters=[Filter(column=column, op=op, value=value)])  # type: ignore[arg-type]
    with switched_off("cut_point", "subset", "site_subset", "differencing"):
        assert run_local(q, federated, "mallory").status == "released"
    r = run_local(q, federated, "eve")
    assert r.status == "refused" and "cut point" in r.reason or "compare it with" in r.reason
    assert says in r.reason + r.suggestion


def test_cut_points_hold_for_outcomes_proportions_and_exists_filters(federated: Settings) -> None:
    refused = [
        Query(study_id=STUDY, statistic="logistic", covariates=["sex"],
              outcome=Filter(column="os_days", op="<", value=1000)),
        Query(study_id=STUDY, statistic="proportion", column=AGE, value=3.4521),
        Query(study_id=STUDY, exists=[{"table": "treatments",  # type: ignore[list-item]
                                       "where": [{"column": "dose", "op": ">=", "value": 12.34}]}]),
    ]
    for q in refused:
        r = run_local(q, federated, "eve")
        assert r.status == "refused" and ("cut point" in r.reason or "compare it with" in r.reason), r.reason
    ok = run_local(Query(study_id=STUDY, filters=[Filter(column="os_days", op="<", value=1826)]), federated, "eve")
    assert ok.status == "released", ok.reason
