"""An empty cell looks like a small one (issue 8, item 1, for groups): a result's groups are the dictionary's
levels, never the data's, and a cell of 0 is hidden like a cell of 1..k-1.

Before, a group with no row was simply missing from a result while a group of 1..k-1 rows was shown hidden:
the crosstab arm x stage at site-a, which has a single NR patient, showed one NR row, at that patient's stage;
and counts by arm in windows of EFS showed the NR row only in the window holding that patient's EFS (no
refusal, nothing small released)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from federation.query import Filter, Query, run_local
from federation.query.columns import declared_levels
from federation.query.guard import switched_off
from federation.query.policy import load_query_policy
from federation.settings import Settings
from tests.federated import STUDY, elsewhere, pooled

HIDDEN = {"suppressed": True}


def shown_groups(r: Any, site: str) -> dict[tuple[Any, ...], Any]:
    return {tuple(row["group"]): row["per_site"][site] for row in r.payload["rows"]}


def test_a_crosstab_does_not_show_a_lone_patients_stage(fresh_audit: Settings) -> None:
    (stage,), = pooled(fresh_audit, "SELECT stage FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    q = Query(study_id=STUDY, group_by=["arm", "stage"], sites=["site-a"])
    with switched_off("empty_cell"):
        open_ = run_local(q, fresh_audit.model_copy(update={"audit_log": fresh_audit.audit_log.with_name("o.jsonl")}),
                          "mallory")
    nr = [g for g in shown_groups(open_, "site-a") if g[0] == "NR"]
    assert nr == [("NR", stage)]  # the attack: the only NR group is the patient's stage

    r = run_local(q, fresh_audit, "mallory")
    assert r.status == "released", r.reason
    groups = shown_groups(r, "site-a")
    stages = declared_levels(load_query_policy(), STUDY, "patients", "stage")
    assert stages == ["I", "II", "III", "IV", "V"]  # the study's stages, from the registry
    assert [g for g in groups if g[0] == "NR"] == [("NR", s) for s in stages]  # every stage, whatever the data
    assert all(groups[("NR", s)] == HIDDEN for s in stages)
    # a group of 0 is hidden like one of 1..k-1, and still cannot be derived from the totals
    truth = dict(((a, s), n) for a, s, n in pooled(
        fresh_audit, "SELECT arm, stage, count(*) FROM unit_patients WHERE site_id = 'site-a' GROUP BY ALL"))
    empty = [g for g in groups if g not in truth]
    assert empty and all(groups[g] == HIDDEN for g in empty)
    assert all(v == truth[g] for g, v in groups.items() if v != HIDDEN)  # what is shown is exact


def test_windows_of_a_count_by_arm_do_not_find_a_lone_patients_efs(fresh_audit: Settings) -> None:
    (efs,), = pooled(fresh_audit, "SELECT efs_days FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    windows = [(0, 365), (365, 730), (730, 1096), (1096, 1461), (1461, 1826), (1826, 3652)]

    def ask(settings: Settings) -> list[Any]:
        out = []
        for lo, hi in windows:
            r = run_local(Query(study_id=STUDY, group_by=["arm"], sites=["site-a"],
                                filters=[Filter(column="efs_days", op=">=", value=lo),
                                         Filter(column="efs_days", op="<", value=hi)]), settings, "mallory")
            out.append(shown_groups(r, "site-a").get(("NR",)) if r.status == "released" else "refused")
        return out

    with switched_off("empty_cell"):
        seen = ask(fresh_audit.model_copy(update={"audit_log": fresh_audit.audit_log.with_name("o.jsonl")}))
    holding = [w for w, v in zip(windows, seen, strict=True) if v == HIDDEN]
    assert len(holding) == 1 and holding[0][0] <= efs < holding[0][1]  # the attack: the NR row shows where

    seen = ask(fresh_audit)
    assert {str(v) for v in seen} <= {str(HIDDEN), "refused"} and HIDDEN in seen
    # released windows all look the same, with or without the patient (refusals come from the subset guard,
    # on the window's size at site-a, not on the NR patient)
    released = [w for w, v in zip(windows, seen, strict=True) if v != "refused"]
    assert any(lo <= efs < hi for lo, hi in released) and any(not lo <= efs < hi for lo, hi in released)


def test_groups_are_the_dictionarys_narrowed_by_the_querys_own_filters(fresh_audit: Settings) -> None:
    r = run_local(Query(study_id=STUDY, group_by=["arm"], filters=[Filter(column="arm", op="!=", value="NR")]),
                  fresh_audit, "ana")
    assert r.status == "released", r.reason
    assert [row["group"] for row in r.payload["rows"]] == [["EE4A"], ["DD4A"], ["M"]]  # the registry's order
    races = declared_levels(load_query_policy(), STUDY, "patients", "race")
    assert races is not None and races[-1] == "(missing)"  # an optional column may be empty


@pytest.mark.parametrize("column", ["histology_icdo3", "site_id"])
def test_a_column_without_a_closed_list_of_values_cannot_be_grouped_by(fresh_audit: Settings, column: str) -> None:
    r = run_local(Query(study_id=STUDY, group_by=[column]), fresh_audit, "ana")
    assert r.status == "refused"
    with switched_off("empty_cell"):
        assert run_local(Query(study_id=STUDY, group_by=[column]), fresh_audit, "ana").status == "released"


def test_a_model_does_not_tell_an_empty_category_from_a_small_one(fresh_audit: Settings) -> None:
    """A model's categories were the data's: a site with a few patients of unknown sex took no part (a small
    cell), while a site with none did, so the sites taking part told which sites have no such patient. Now
    the categories are the dictionary's, and an empty category is an empty cell: every site answers alike."""
    unknown = dict(pooled(fresh_audit, "SELECT site_id, count(*) FILTER (WHERE sex = 'U') FROM unit_patients "
                                       "GROUP BY 1"))
    none, few = {s for s, n in unknown.items() if n == 0}, {s for s, n in unknown.items() if 0 < n < 5}
    assert none and few
    q = Query(study_id=STUDY, statistic="logistic", outcome=Filter(column="efs_event", op="==", value=True),
              covariates=["sex", "age_at_diagnosis_years"])
    with switched_off("empty_cell"):
        r = run_local(q, fresh_audit.model_copy(update={"audit_log": fresh_audit.audit_log.with_name("o.jsonl")}),
                      "mallory")
    assert r.status == "released" and set(r.sites) == none  # the attack: taking part means "no such patient"

    r = run_local(q, fresh_audit, "mallory")
    assert r.status == "refused" and set(r.excluded) == set(unknown)
    assert len(set(r.excluded.values())) == 1  # one text for every site, empty or small
    narrowed = q.model_copy(update={"filters": [Filter(column="sex", op="!=", value="U")]})
    r = run_local(narrowed, fresh_audit, "ana")
    assert r.status == "released", r.reason
    assert [c["term"] for c in r.payload["coefficients"]] == ["(intercept)", "sex[F]", "age_at_diagnosis_years"]


def test_three_counts_do_not_tell_an_empty_set_from_a_small_one(fresh_audit: Settings) -> None:
    """Everyone at a site, then its boys, then its girls: the three leave that site's patients of unknown sex.
    With 1..k-1 of them the girls are refused (a triple), and with none they were released, so the answer
    told a site with no such patient from one with a few (a fact about the data no single result shows).
    Now an empty combination is refused like a small one unless it is empty by definition."""
    unknown = dict(pooled(fresh_audit, "SELECT site_id, count(*) FILTER (WHERE sex = 'U') FROM unit_patients "
                                       "GROUP BY 1"))
    none = next(s for s, n in sorted(unknown.items()) if n == 0)
    few = next(s for s, n in sorted(unknown.items()) if 0 < n < 5)

    def girls_after_all_and_boys(site: str, settings: Settings) -> tuple[str, list[str]]:
        run_local(Query(study_id=STUDY, sites=[site]), settings, "mallory")
        boys = run_local(Query(study_id=STUDY, sites=[site], filters=[Filter(column="sex", op="==", value="M")]),
                         settings, "mallory")
        assert boys.status == "released", boys.reason
        r = run_local(Query(study_id=STUDY, sites=[site], filters=[Filter(column="sex", op="==", value="F")]),
                      settings, "mallory")
        return r.status, [n.replace(site, "SITE") for n in [r.reason, *r.notes]]

    def fresh(name: str) -> Settings:
        return fresh_audit.model_copy(update={"audit_log": fresh_audit.audit_log.with_name(name)})

    with switched_off("empty_combination"):
        assert girls_after_all_and_boys(none, fresh("o1.jsonl"))[0] == "released"  # the attack: 0 ...
        assert girls_after_all_and_boys(few, fresh("o2.jsonl"))[0] == "refused"  # ... against a few
    empty, small = girls_after_all_and_boys(none, fresh("a.jsonl")), girls_after_all_and_boys(few, fresh("b.jsonl"))
    assert empty == small and empty[0] == "refused" and "possibly none" in empty[1][0]


def test_results_that_are_apart_by_definition_are_released(fresh_audit: Settings) -> None:
    """The rule costs nothing where the combination is empty whatever the data: everyone, then the patients
    under 2, then those 2 and over (age is never missing); a column that may be empty is not such a case."""
    age = "age_at_diagnosis_years"
    for q in (Query(study_id=STUDY), Query(study_id=STUDY, filters=[Filter(column=age, op="<", value=2)]),
              Query(study_id=STUDY, filters=[Filter(column=age, op=">=", value=2)]),
              Query(study_id=STUDY, filters=[Filter(column="arm", op="in", value=["EE4A", "DD4A"])]),
              Query(study_id=STUDY, filters=[Filter(column="arm", op="in", value=["M", "NR"])])):
        r = run_local(q, fresh_audit, "ana")
        assert r.status == "released" and not any("withheld" in n for n in r.notes), (q.describe(), r.reason)


def test_a_hidden_cell_pinned_down_empty_is_refused_like_one_of_a_few(fresh_audit: Settings) -> None:
    """Fifth red team, A1: a count by arm at site-a where S hides NR and, to protect it, one more arm; a count
    where S and arm == that arm then pins NR down. With one patient it was refused ("pin down a hidden
    cell"), with none it was released and showed 0: two queries told whether the NR patient is in S (their
    sex, stage, EFS years, race, ...). An empty hidden cell now gets a hypothetical patient of each kind it
    could hold by definition, and is refused alike."""
    def probe(sex: str, settings: Settings) -> tuple[str, str]:
        where = [Filter(column="sex", op="==", value=sex)]
        by_arm = run_local(Query(study_id=STUDY, group_by=["arm"], sites=["site-a"], filters=where), settings,
                           "mallory")
        assert by_arm.status == "released", by_arm.reason
        cells = {row["group"][0]: row["combined"] for row in by_arm.payload["rows"]}
        (other,) = [a for a, v in cells.items() if v == HIDDEN and a != "NR"]
        r = run_local(Query(study_id=STUDY, sites=["site-a"], filters=[*where, Filter(column="arm", op="==",
                                                                                      value=other)]), settings, "eve")
        return r.status, r.reason

    (sex,), = pooled(fresh_audit, "SELECT sex FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    other = "M" if sex == "F" else "F"
    with switched_off("empty_combination"):
        assert probe(other, elsewhere(fresh_audit, "o1.jsonl"))[0] == "released"  # the attack: none in S ...
        assert probe(sex, elsewhere(fresh_audit, "o2.jsonl"))[0] == "refused"  # ... against one
    empty, one = probe(other, elsewhere(fresh_audit, "a.jsonl")), probe(sex, elsewhere(fresh_audit, "b.jsonl"))
    assert empty == one and empty[0] == "refused" and "possibly none" in empty[1]


def test_four_counts_that_come_to_nobody_are_refused_like_four_that_come_to_one(fresh_audit: Settings) -> None:
    """Fifth red team, A1b: at site-a, everyone in S, then S in arm DD4A, EE4A and M: the first minus the three
    others is NR in S. With the NR patient in S the last was refused (a filter family pins down one patient),
    with none it was released: four ordinary counts told whether the patient is in S, with nothing hidden
    anywhere. Each kind of patient the family's cells tell apart that no patient is of is now checked as if
    one were there."""
    def family(sex: str, settings: Settings) -> tuple[str, str]:
        where = [Filter(column="sex", op="==", value=sex)]
        for arm in (None, "DD4A", "EE4A"):
            r = run_local(Query(study_id=STUDY, sites=["site-a"], filters=where + (
                [Filter(column="arm", op="==", value=arm)] if arm else [])), settings, "mallory")
            assert r.status == "released", r.reason
        last = run_local(Query(study_id=STUDY, sites=["site-a"], filters=[*where, Filter(column="arm", op="==",
                                                                                         value="M")]), settings, "eve")
        return last.status, last.reason

    (sex,), = pooled(fresh_audit, "SELECT sex FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    other = "M" if sex == "F" else "F"
    with switched_off("empty_combination"):
        assert family(other, elsewhere(fresh_audit, "o1.jsonl"))[0] == "released"  # the attack: none ...
        assert family(sex, elsewhere(fresh_audit, "o2.jsonl"))[0] == "refused"  # ... against one
    none, one = family(other, elsewhere(fresh_audit, "a.jsonl")), family(sex, elsewhere(fresh_audit, "b.jsonl"))
    assert none == one and none[0] == "refused" and "possibly none" in none[1]


def test_a_site_with_values_outside_the_policys_groups_takes_no_part(fresh_audit: Settings, tmp_path: Any) -> None:
    """Where the policy offers fewer groups than the dictionary declares (here sex M and F only), a site whose
    data holds another value takes no part in results grouped by that column, decided on its whole table.
    Without that, the result depends on whether the query's subset holds such a row: the service refuses a
    value outside its list (a safety net for unvalidated data), so counts by sex of site-b's arms told which
    arm its patients of unknown sex are in."""
    import yaml

    policy = yaml.safe_load(Path(fresh_audit.query_policy).read_text(encoding="utf-8"))
    policy.setdefault("group_levels", {}).setdefault("default", {})["sex"] = ["M", "F"]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    narrowed = fresh_audit.model_copy(update={"query_policy": path})
    with_u = {a for (a,) in pooled(fresh_audit, "SELECT DISTINCT arm FROM unit_patients WHERE site_id = 'site-b' "
                                                "AND sex = 'U'")}
    arms = {a for (a,) in pooled(fresh_audit, "SELECT DISTINCT arm FROM unit_patients WHERE site_id = 'site-b'")}
    assert with_u and arms - with_u

    def by_arm(settings: Settings) -> dict[str, str]:
        return {arm: run_local(Query(study_id=STUDY, group_by=["sex"], sites=["site-b"],
                                     filters=[Filter(column="arm", op="==", value=arm)]), settings, "m").status
                for arm in sorted(arms)}

    with switched_off("site_group_levels"):
        seen = by_arm(narrowed.model_copy(update={"audit_log": tmp_path / "o.jsonl"}))
    assert {a for a, status in seen.items() if status == "refused"} == with_u  # the attack: refusal = a U there
    assert set(by_arm(narrowed.model_copy(update={"audit_log": tmp_path / "a.jsonl"})).values()) == {"refused"}

    unknown = dict(pooled(fresh_audit, "SELECT site_id, count(*) FILTER (WHERE sex = 'U') FROM unit_patients "
                                       "GROUP BY 1"))
    r = run_local(Query(study_id=STUDY, group_by=["sex"]), narrowed, "ana")
    assert r.status == "released", r.reason
    assert set(r.sites) == {s for s, n in unknown.items() if n == 0}
    assert set(r.excluded) == {s for s, n in unknown.items() if n > 0}
    assert all("outside the groups the query policy offers" in why for why in r.excluded.values())
