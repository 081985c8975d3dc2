"""Channels through the statistics themselves (issue 8, items 6 to 10): the same cells hidden in every
statistic, Kaplan-Meier grids, regression cells, quantile bounds and event tables. Each attack first
succeeds with its guard switched off."""

from __future__ import annotations

import math
from typing import Any

import pytest

from federation.query import Filter, Query, run_local
from federation.query.guard import switched_off
from federation.settings import Settings
from tests.federated import STUDY, elsewhere, pooled


def test_a_mean_does_not_show_the_n_that_the_count_hid(fresh_audit: Settings) -> None:
    count = run_local(Query(study_id=STUDY, group_by=["arm"]), fresh_audit, "mallory")
    cells = {r["group"][0]: r["per_site"]["site-a"] for r in count.payload["rows"]}
    assert cells["NR"] == {"suppressed": True}
    partner = next(arm for arm, v in cells.items() if arm != "NR" and v == {"suppressed": True})  # complementary
    total_a = count.payload["total"]["per_site"]["site-a"]
    mean = Query(study_id=STUDY, group_by=["arm"], statistic="mean", column="os_days")

    def recovered(r: Any) -> int | None:
        ns = {row["group"][0]: row["per_site"]["site-a"].get("n") for row in r.payload["rows"]}
        if ns.get(partner) is None:
            return None
        return total_a - sum(n or 0 for arm, n in ns.items() if arm != "NR")

    with switched_off("shared_suppression"):
        assert recovered(run_local(mean, elsewhere(fresh_audit, "unguarded"), "mallory")) == 1  # NR's one patient
    safe = run_local(mean, fresh_audit, "mallory")
    assert safe.status == "released" and recovered(safe) is None


def test_an_event_table_cell_of_one_or_two_patients_is_hidden_however_many_rows(fresh_audit: Settings) -> None:
    root = f"{fresh_audit.storage.root}/harmonized/site-f/{STUDY}/data/*"
    (rows, patients), = pooled(fresh_audit, f"""SELECT count(*), count(DISTINCT t.pid)
                                 FROM read_parquet('{root}/treatments.parquet') t
                                 JOIN read_parquet('{root}/diagnoses.parquet') d USING (pid) WHERE d.stage = 'V'""")
    assert rows >= 5 and 0 < patients < 5
    q = Query(study_id=STUDY, table="treatments", sites=["site-f"], statistic="mean", column="dose",
              group_by=["stage"])
    with switched_off("patient_units"):
        leaked = run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory")
    v = next(r for r in leaked.payload["rows"] if r["group"] == ["V"])["combined"]
    assert v["n"] >= 5 and "variance" in v  # a mean and a variance of one or two patients' doses
    safe = run_local(q, fresh_audit, "mallory")
    assert next(r for r in safe.payload["rows"] if r["group"] == ["V"])["combined"] == {"suppressed": True}
    by_stage = Query(study_id=STUDY, table="treatments", sites=["site-f"], group_by=["stage"])
    count = run_local(by_stage, elsewhere(fresh_audit, "count"), "mallory")
    assert next(r for r in count.payload["rows"] if r["group"] == ["V"])["combined"] == {"suppressed": True}
    # after the mean (which counts the rows with a dose: `valued_rows`), the count of all rows by stage would
    # tell how many rows have none, of a few patients in some stage
    after = run_local(by_stage, fresh_audit, "mallory")
    assert after.status == "refused" and "isolate fewer than 5 patients" in after.reason


def test_a_kaplan_meier_grid_is_the_policys_not_the_analysts(fresh_audit: Settings) -> None:
    daily = Query(study_id=STUDY, statistic="km", endpoint="os", grid_days=1.0, horizon_days=400.0)
    with switched_off("km_grid"):
        leaked = run_local(daily, elsewhere(fresh_audit, "unguarded"), "mallory")
    assert leaked.status == "released"
    days = {p["day"] for p in leaked.payload["curves"][0]["combined"]["points"]}
    assert any(d % 30.4375 for d in days)  # points on single days: events and censorings day by day
    refused = run_local(daily, fresh_audit, "mallory")
    assert refused.status == "refused" and "not one the policy declares" in refused.reason
    assert "30.4375" in refused.suggestion


def _one_level(settings: Settings) -> tuple[str, str, int, int]:
    """A site and risk group with 1..4 deaths among at least 5 patients there."""
    rows = pooled(settings, "SELECT site_id, risk_group, count(*), count(*) FILTER (WHERE os_event) "
                            "FROM unit_patients WHERE risk_group IS NOT NULL GROUP BY ALL ORDER BY ALL")
    site, level, n, deaths = next(r for r in rows if r[2] >= 5 and 0 < r[3] < 5)
    return site, level, n, deaths


def test_a_regression_does_not_invert_to_a_small_outcome_cell(fresh_audit: Settings) -> None:
    site, level, n, deaths = _one_level(fresh_audit)
    q = Query(study_id=STUDY, sites=[site], statistic="logistic", outcome=Filter(column="os_event", op="==",
                                                                                  value=True),
              covariates=["risk_group"])
    with switched_off("site_model"):
        leaked = run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory")
    assert leaked.status == "released", leaked.reason
    coef = {c["term"]: c["estimate"] for c in leaked.payload["coefficients"]}
    logit = coef["(intercept)"] + coef.get(f"risk_group[{level}]", 0.0)
    assert round(n / (1 + math.exp(-logit))) == deaths  # the estimate gives "deaths among n" exactly
    refused = run_local(q, fresh_audit, "mallory")
    assert refused.status == "refused" and "outcome x category cell" in refused.reason


def test_quantile_bounds_come_from_the_policy_not_the_data(fresh_audit: Settings) -> None:
    from federation.query.policy import ConsortiumDisclosurePolicy
    from federation.query.site import summaries as sm
    from federation.query.site.partial import SiteTask, answer_task

    ages = [v for (v,) in pooled(fresh_audit, "SELECT age_at_diagnosis_years FROM patients")]
    for where in ([], [Filter(column="sex", op="==", value="F")]):
        r = run_local(Query(study_id=STUDY, statistic="quantiles", column="age_at_diagnosis_years",
                            probs=[0.25, 0.5, 0.75], filters=where), fresh_audit, "mallory")
        for q in r.payload["rows"][0]["combined"]["quantiles"].values():
            lo, hi = q["bin"]
            assert q["error_bound"] == pytest.approx(0.5) and (lo * 2).is_integer() and (hi * 2).is_integer()
        assert str(min(ages)) not in str(r.payload) and str(max(ages)) not in str(r.payload)
    # the search a site answers is on declared cut points only: a bisection grid would find the minimum
    probe = sm.CountAtOrBelow(column="age_at_diagnosis_years", thresholds=[min(ages) - 1e-9, min(ages)])
    task = SiteTask(study_id=STUDY, thresholds=ConsortiumDisclosurePolicy(), requests=[probe])
    site = pooled(fresh_audit, f"SELECT site_id FROM patients WHERE age_at_diagnosis_years = {min(ages)}")[0][0]
    with switched_off("cut_point"):
        (counts,) = answer_task(fresh_audit, site, task).answers
    assert isinstance(counts, sm.AtOrBelow) and counts.counts[1] - counts.counts[0] >= 1
    (refused,) = answer_task(fresh_audit, site, task).answers
    assert isinstance(refused, sm.Refusal) and "declared cut points" in refused.reason


def test_a_proportion_does_not_show_the_count_a_count_hid(fresh_audit: Settings) -> None:
    # red-team review: count by arm hides site-a's NR cell (1) and its partners; proportions of two arms
    # without a group-by showed the partners' counts, and the total gave NR
    count = run_local(Query(study_id=STUDY, group_by=["arm"]), fresh_audit, "mallory")
    cells = {r["group"][0]: r["per_site"]["site-a"] for r in count.payload["rows"]}
    hidden = [arm for arm, v in cells.items() if arm != "NR" and isinstance(v, dict)]
    shown = sum(v for v in cells.values() if isinstance(v, int))
    total = count.payload["total"]["per_site"]["site-a"]

    def recovered(settings: Settings) -> int | None:
        xs = []
        for arm in hidden:
            r = run_local(Query(study_id=STUDY, statistic="proportion", column="arm", value=arm), settings, "eve")
            x = r.payload["rows"][0]["per_site"]["site-a"]
            if not isinstance(x, dict) or "x" not in x:
                return None
            xs.append(x["x"])
        return total - shown - sum(xs)

    with switched_off("shared_suppression"):
        assert recovered(elsewhere(fresh_audit, "unguarded")) == 1
    assert recovered(fresh_audit) is None


def test_a_kaplan_meier_curve_does_not_show_the_count_a_count_hid(fresh_audit: Settings) -> None:
    # found by the span check: count by arm hides site-a's NR cell (1) and its partners; a curve by arm showed
    # each partner's number at risk at day 0 (its count), and the site total then gave NR's one patient
    count = run_local(Query(study_id=STUDY, group_by=["arm"]), fresh_audit, "mallory")
    cells = {r["group"][0]: r["per_site"]["site-a"] for r in count.payload["rows"]}
    total = count.payload["total"]["per_site"]["site-a"]
    km = Query(study_id=STUDY, statistic="km", endpoint="efs", group_by=["arm"])

    def recovered(r: Any) -> int | None:
        start = {c["group"][0]: c["per_site"]["site-a"]["points"][:1] for c in r.payload["curves"]}
        shown = {arm: v if isinstance(v, int) else (start[arm] or [{}])[0].get("at_risk") for arm, v in cells.items()
                 if arm != "NR"}
        if not all(isinstance(n, int) for n in shown.values()):
            return None
        return total - sum(shown.values())  # type: ignore[arg-type]

    with switched_off("shared_suppression", "differencing"):
        assert recovered(run_local(km, elsewhere(fresh_audit, "unguarded"), "mallory")) == 1
    safe = run_local(km, fresh_audit, "mallory")
    assert safe.status == "released" and recovered(safe) is None
    assert not any("withheld" in n for n in safe.notes)  # hidden like the count, not by the differencing guard


def test_a_survival_test_does_not_compare_a_group_too_small_to_show(fresh_audit: Settings) -> None:
    # site-a has one NR patient: NR against EE4A there, the NR curve is hidden (and EE4A's with it, as the count
    # by arm hides it); a log-rank test of the two would tell whether the one NR patient had an event (a single
    # event among few at risk gives chi2 well above 1; no event, chi2 = E below 1)
    q = Query(study_id=STUDY, statistic="km", endpoint="efs", group_by=["arm"], sites=["site-a"],
              filters=[Filter(column="arm", op="in", value=["NR", "EE4A"])])
    truth = pooled(fresh_audit, "SELECT efs_event FROM patients WHERE arm = 'NR' AND site_id = 'site-a'")
    assert len(truth) == 1

    def guess(r: Any) -> bool | None:
        test = r.payload["tests"]["logrank"]
        return None if test.get("withheld") else test["chi2"] > 1

    with switched_off("shown_groups"):
        unguarded = run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory")
        assert guess(unguarded) is truth[0][0] and ["NR"] in unguarded.payload["tests"]["logrank"]["groups"]
    safe = run_local(q, fresh_audit, "mallory")
    assert safe.status == "released" and guess(safe) is None
    assert safe.payload["tests"]["logrank_stratified_by_site"].get("withheld")


def test_a_survival_test_does_not_move_with_the_curves_horizon(fresh_audit: Settings) -> None:
    # a curve shows a point only after k events; a test over the curve's own horizon, asked at every month,
    # would tell in which month between two shown points the groups' events fell (and, by the sign of the
    # change, in which group)
    def run(settings: Settings, months: int) -> Any:
        q = Query(study_id=STUDY, statistic="km", endpoint="efs", group_by=["histology_risk"],
                  horizon_days=months * 30.4375)
        return run_local(q, settings, "mallory")

    def hidden_steps(settings: Settings) -> int:
        """Months after which the test changed while no curve showed a point in that month."""
        found, before = 0, None
        for months in range(12, 31):
            r = run(settings, months)
            chi2 = r.payload["tests"]["logrank"]["chi2"]
            end = months * 30.4375
            shown = any(end - 30.4375 < pt["day"] <= end + 1e-6 for c in r.payload["curves"]
                        for pt in c["combined"]["points"])
            if before is not None and chi2 != before and not shown:
                found += 1
            before = chi2
        return found

    with switched_off("whole_follow_up"):
        assert hidden_steps(elsewhere(fresh_audit, "unguarded")) >= 2
    assert hidden_steps(fresh_audit) == 0


def test_a_cumulative_incidence_does_not_step_over_a_few_competing_events(fresh_audit: Settings) -> None:
    # the cause's incidence, the competing events' and the event-free survival add up to one: a point released
    # after k relapses but 1..k-1 deaths in remission would show those deaths (d = n (F'o - Fo) / S over a step
    # of one grid interval from a point showing its number at risk)
    q = Query(study_id=STUDY, statistic="cif", endpoint="efs", cause=["RELAPSE", "PROGRESSION"])
    rows = pooled(fresh_audit, "SELECT efs_days FROM unit_patients WHERE efs_event AND first_event IN "
                               "('DEATH', 'SECOND_MALIGNANCY')")

    def small_steps(r: Any) -> list[tuple[float, int]]:
        """(day, competing events in the grid interval before it) read off the curves, where 1..k-1."""
        pts = r.payload["curves"][0]["combined"]["points"]
        found = []
        for a, b in zip(pts, pts[1:], strict=False):
            if abs(b["day"] - a["day"] - q.grid_days) < 1e-6 and isinstance(a["at_risk"], int):
                survival = 1 - a["incidence"] - a["competing"]
                d = round(a["at_risk"] * (b["competing"] - a["competing"]) / survival)
                if 0 < d < 5:
                    found.append((b["day"], d))
        return found

    with switched_off("competing_step"):
        leaked = small_steps(run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory"))
    assert leaked
    for day, d in leaked:  # each is the true number of deaths in remission or second cancers in that month
        assert d == sum(1 for (t,) in rows if day - q.grid_days - 1e-6 <= t < day - 1e-6)
    assert small_steps(run_local(q, fresh_audit, "mallory")) == []


def test_a_restricted_mean_does_not_split_a_step_of_its_curve(fresh_audit: Settings) -> None:
    # the eighth red team's A1: the area to two consecutive shown points two months apart is w S (2 - d / n)
    # when computed on every grid interval, which gives d, the events of the hidden first month
    W = 30.4375

    def split_months(settings: Settings) -> list[tuple[int, int]]:
        """(recovered events in the hidden month, true events there) for steps of two months."""
        def km(horizon: float) -> Any:
            return run_local(Query(study_id=STUDY, statistic="km", endpoint="efs", horizon_days=horizon), settings,
                             "mallory").payload["curves"][0]["combined"]

        points = km(120 * W)["points"]
        found = []
        for a, b in zip(points, points[1:], strict=False):
            if a["day"] > 0 and abs(b["day"] - a["day"] - 2 * W) < 1e-6 and isinstance(a["at_risk"], int):
                area = km(b["day"])["rmst"]["days"] - km(a["day"])["rmst"]["days"]
                d = round(a["at_risk"] * (2 - area / (W * a["survival"])))
                truth = pooled(settings, f"SELECT count(*) FROM unit_patients WHERE efs_event AND efs_days >= "
                                         f"{a['day']} AND efs_days < {a['day'] + W}")[0][0]
                found.append((d, truth))
            if len(found) == 3:
                break
        return found

    with switched_off("rmst_of_shown_curve"):
        leaked = split_months(elsewhere(fresh_audit, "unguarded"))
        assert leaked and all(d == truth and 0 < d < 5 for d, truth in leaked)
    safe = split_months(fresh_audit)
    assert safe and all(d == 0 for d, _ in safe) and any(truth > 0 for _, truth in safe)  # the area shows no split


def test_a_survival_test_does_not_compare_curves_that_show_no_step(fresh_audit: Settings) -> None:
    # the eighth red team's B1: at site-d, stage IV, girls and boys (9 and 7) have one event between them; both
    # curves show only day 0, and the log-rank chi2 of one event is the other group's number at risk over its
    # own (7/9 for a girl's event, 9/7 for a boy's), and a cause-specific test with df 0 says "no such event"
    q = Query(study_id=STUDY, statistic="km", endpoint="efs", group_by=["sex"], sites=["site-d"],
              filters=[Filter(column="stage", op="==", value="IV"), Filter(column="sex", op="in", value=["F", "M"])])
    truth = pooled(fresh_audit, "SELECT sex FROM unit_patients WHERE site_id = 'site-d' AND stage = 'IV' AND "
                                "sex IN ('F', 'M') AND efs_event")
    sizes = dict(pooled(fresh_audit, "SELECT sex, count(*) FROM unit_patients WHERE site_id = 'site-d' AND "
                                     "stage = 'IV' AND sex IN ('F', 'M') GROUP BY 1"))
    assert len(truth) == 1

    def whose(r: Any) -> str | None:
        test = r.payload["tests"]["logrank"]
        if test.get("withheld"):
            return None
        return "F" if test["chi2"] == pytest.approx(sizes["M"] / sizes["F"]) else "M"

    with switched_off("shown_groups"):
        unguarded = run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory")
        assert all(len(c["combined"]["points"]) == 1 for c in unguarded.payload["curves"])
        assert whose(unguarded) == truth[0][0]
    safe = run_local(q, fresh_audit, "mallory")
    assert safe.status == "released" and whose(safe) is None


def test_a_cumulative_incidence_does_not_show_the_survival_between_two_kaplan_meier_points(
        fresh_audit: Settings) -> None:
    # the eighth red team's C1: 1 - F - G at a point of the incidence curves is the event-free survival on a day
    # the Kaplan-Meier curve of the same girls shows no point; from its last point (and number at risk) it gives
    # the events between: one girl's death. Every point's events before it are now a part in the history.
    flt = [Filter(column="sex", op="==", value="F")]
    W = 30.4375

    def hidden_steps(settings: Settings) -> list[tuple[int, int]]:
        km = run_local(Query(study_id=STUDY, statistic="km", endpoint="efs", filters=flt, horizon_days=120 * W),
                       settings, "mallory").payload["curves"][0]["combined"]["points"]
        cif = run_local(Query(study_id=STUDY, statistic="cif", endpoint="efs", cause=["RELAPSE", "PROGRESSION"],
                              filters=flt, horizon_days=120 * W), settings, "mallory").payload
        shown = {round(p["day"] / W): p for p in km}
        found = []
        for p in cif["curves"][0]["combined"]["points"][1:] if cif else []:
            m = round(p["day"] / W)
            before = shown.get(m - 1)
            if m not in shown and before is not None and isinstance(before["at_risk"], int):
                d = round(before["at_risk"] * (1 - (1 - p["incidence"] - p["competing"]) / before["survival"]))
                truth = pooled(settings, f"SELECT count(*) FROM unit_patients WHERE sex = 'F' AND efs_event AND "
                                         f"efs_days >= {before['day']} AND efs_days < {p['day']}")[0][0]
                found.append((d, truth))
        return found

    with switched_off("differencing"):
        leaked = hidden_steps(elsewhere(fresh_audit, "unguarded"))
        assert any(0 < d < 5 and d == truth for d, truth in leaked)
    assert not any(0 < d < 5 for d, _ in hidden_steps(fresh_audit))
