"""A statistic counts the rows where its columns have a value: a mean, sum, variance or quantile its column's,
a model its complete cases. The twelfth red team found that the history sized those results by every row of
their subset, so two of them (or one beside a count) differing by a few rows without a value went unseen.
Guard `valued_rows`: the footprint names the columns that must have a value. Each attack first succeeds with
the guard switched off."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.query import Filter, Query, run_local
from federation.query.guard import switched_off
from federation.settings import Settings
from tests.federated import NB03 as STUDY
from tests.federated import fresh, pooled_v2


def released(settings: Settings, folder: Path, *queries: Query) -> list[dict] | None:  # type: ignore[type-arg]
    """The payloads of `queries` asked in order of one fresh history, or None when one is refused."""
    s = fresh(settings, folder)
    out = []
    for q in queries:
        r = run_local(q, s, "mallory")
        if r.status != "released":
            assert "isolate fewer than 5 patients" in r.reason, r.reason
            return None
        out.append(r.payload)
    return out


def test_two_means_of_a_sparse_column_do_not_give_one_patients_grade(nb03: Settings, tmp_path: Path) -> None:
    """An ototoxicity grade is given on hearing losses only: between two onset cut points at site-a lie 12
    late effects of 9 patients, but one graded row; the two means' n and sums gave its grade."""
    early, late = 609, 883  # days at months 20 and 29
    where = f"site_id = 'site-a' AND onset_day >= {early} AND onset_day < {late}"
    (grade, graded), = pooled_v2(nb03, f"SELECT max(ototoxicity_grade), count(ototoxicity_grade) FROM late_effects "
                                       f"WHERE {where}")
    (patients,), = pooled_v2(nb03, f"SELECT count(DISTINCT pid) FROM late_effects WHERE {where}")
    assert graded == 1 and patients >= 5  # one grade, among enough patients for every other guard
    base = dict(study_id=STUDY, table="late_effects", statistic="mean", column="ototoxicity_grade", sites=["site-a"])
    means = [Query(**base, filters=[Filter(column="onset_day", op="<", value=d)])  # type: ignore[arg-type]
             for d in (late, early)]

    def leaked(folder: Path) -> tuple[int, float] | None:
        got = released(nb03, folder, *means)
        if got is None:
            return None
        a, b = (p["rows"][0]["combined"] for p in got)
        return a["n"] - b["n"], a["n"] * a["mean"] - b["n"] * b["mean"]

    with switched_off("valued_rows"):
        off = leaked(tmp_path / "off")
    assert off is not None and off[0] == 1 and off[1] == pytest.approx(grade)
    assert leaked(tmp_path / "on") is None


def test_a_count_minus_a_models_n_is_not_the_missing_group(nb03: Settings, tmp_path: Path) -> None:
    """A model is fitted on complete cases: site-a's patients minus a logistic model's n on risk group and age
    were the 3 patients whose risk group is missing (a cell a count by risk group hides)."""
    (missing,), = pooled_v2(nb03, "SELECT count(*) FROM patients p JOIN diagnoses d USING (pid) "
                                  "WHERE p.site_id = 'site-a' AND d.risk_group IS NULL")
    assert 1 <= missing <= 4
    count = Query(study_id=STUDY, sites=["site-a"])
    model = Query(study_id=STUDY, sites=["site-a"], statistic="logistic",
                  outcome=Filter(column="efs_event", op="==", value=True),
                  covariates=["risk_group", "age_at_diagnosis_years"])
    with switched_off("valued_rows"):
        got = released(nb03, tmp_path / "off", count, model)
    assert got is not None and got[0]["total"]["combined"] - got[1]["n"] == missing
    assert released(nb03, tmp_path / "on", count, model) is None


def test_a_proportion_minus_a_cox_model_does_not_give_one_patients_event(nb03: Settings, tmp_path: Path) -> None:
    """At site-b, among patients neither white nor Hispanic, one has no risk group: a proportion of EFS events
    minus a Cox model's n and events (complete cases) told that this patient had an event."""
    flt = [Filter(column="race", op="!=", value="WHITE"), Filter(column="ethnicity", op="!=", value="HISPANIC")]
    truth = pooled_v2(nb03, "SELECT p.efs_event FROM patients p JOIN diagnoses d USING (pid) WHERE p.site_id = "
                            "'site-b' AND p.race <> 'WHITE' AND p.ethnicity <> 'HISPANIC' AND d.risk_group IS NULL")
    assert len(truth) == 1
    share = Query(study_id=STUDY, sites=["site-b"], filters=flt, statistic="proportion", column="efs_event",
                  value=True)
    cox = Query(study_id=STUDY, sites=["site-b"], filters=flt, statistic="cox", endpoint="efs",
                covariates=["risk_group", "age_at_diagnosis_years"])
    with switched_off("valued_rows"):
        got = released(nb03, tmp_path / "off", share, cox)
    assert got is not None
    p = got[0]["rows"][0]["combined"]
    assert (p["n"] - got[1]["n"], p["x"] - got[1]["events"]) == (1, int(truth[0][0]))
    assert released(nb03, tmp_path / "on", share, cox) is None


def test_means_and_models_on_complete_columns_are_still_released(nb03: Settings, tmp_path: Path) -> None:
    """No needless loss: a mean of a column every row has, then a count and a model on columns without a
    missing value, are released as before."""
    got = released(nb03, tmp_path, Query(study_id=STUDY, statistic="mean", column="age_at_diagnosis_years"),
                   Query(study_id=STUDY), Query(study_id=STUDY, statistic="logistic",
                                                outcome=Filter(column="efs_event", op="==", value=True),
                                                covariates=["age_at_diagnosis_years"]))
    assert got is not None and got[2]["n"] == got[1]["total"]["combined"]


def test_a_present_filter_is_guarded_like_any_other(nb03: Settings, tmp_path: Path) -> None:
    """`column is present` (the footprints' condition) is a filter an analyst may use too: site-a's patients
    minus those whose risk group is present are the 3 without one: it leaves too few out there (and the
    pair differs by too few)."""
    from federation.cli import parse_filter

    (missing,), = pooled_v2(nb03, "SELECT count(*) FROM patients p JOIN diagnoses d USING (pid) "
                                  "WHERE p.site_id = 'site-a' AND d.risk_group IS NULL")
    assert 1 <= missing <= 4
    present = Filter.model_validate(parse_filter("risk_group is present"))
    assert present.describe() == "risk_group is present"
    with pytest.raises(ValueError, match="give it the value true"):
        Filter(column="risk_group", op="present", value=False)
    count, known = Query(study_id=STUDY, sites=["site-a"]), Query(study_id=STUDY, sites=["site-a"], filters=[present])
    with switched_off("subset", "site_subset", "differencing"):
        got = released(nb03, tmp_path / "off", count, known)
    assert got is not None and got[0]["total"]["combined"] - got[1]["total"]["combined"] == missing
    r = run_local(known, fresh(nb03, tmp_path / "on"), "mallory")
    assert r.status == "refused" and "leaves fewer than 5 out" in r.reason
