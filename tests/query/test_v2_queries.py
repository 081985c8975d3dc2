"""Queries over dictionary v2's tables (PONC-NB-03): marker status, exists filters on biomarkers, agent
classes, late effects, quality of life; each equal to the pooled computation, through the same disclosure
control; a v1 study says what it does not collect."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation.query import Filter, Query, run_local
from federation.query.guard import switched_off
from federation.query.model import Exists
from federation.settings import Settings
from federation.synth import synthesize
from tests.federated import NB03 as STUDY
from tests.federated import fresh, publish
from tests.federated import pooled_v2 as pooled


def combined(r: Any) -> dict[str, Any]:
    assert r.status == "released", r.reason
    return {row["group"][0]: row["combined"] for row in r.payload["rows"]}


def test_counts_by_marker_status_agent_class_and_late_effect_equal_pooled(nb03: Settings, tmp_path: Path) -> None:
    checks = [
        (Query(study_id=STUDY, group_by=["mycn_status"]), "SELECT mycn_status, count(*) FROM patients GROUP BY 1"),
        (Query(study_id=STUDY, table="treatments", group_by=["agent_class"]),
         "SELECT agent_class, count(*) FROM treatments GROUP BY 1"),
        (Query(study_id=STUDY, table="late_effects", group_by=["category"]),
         "SELECT category, count(*) FROM late_effects GROUP BY 1"),
        (Query(study_id=STUDY, group_by=["arm"], exists=[Exists(table="biomarkers", where=[
            Filter(column="gene", op="==", value="MYCN"), Filter(column="result", op="==", value="DETECTED")])]),
         "SELECT arm, count(*) FROM patients WHERE pid IN (SELECT pid FROM biomarkers WHERE gene = 'MYCN' AND "
         "result = 'DETECTED') GROUP BY 1"),
    ]
    for i, (q, sql) in enumerate(checks):
        # each on its own history: asked after the count by mycn_status, the count by arm of the MYCN-amplified
        # is rightly refused (a small arm of them would lie inside the DETECTED cell with few patients between)
        s = fresh(nb03, tmp_path / str(i))
        truth = dict(pooled(nb03, sql))
        released = combined(run_local(q, s, "t"))
        shown = {k: v for k, v in released.items() if isinstance(v, int)}
        assert shown, q.describe()
        assert all(truth[k] == v for k, v in shown.items()), q.describe()
        assert all(v >= 5 for v in shown.values())


def test_quality_of_life_over_time_equals_pooled(nb03: Settings, tmp_path: Path) -> None:
    q = Query(study_id=STUDY, table="quality_of_life", statistic="mean", column="total_score", group_by=["timepoint"])
    shown = combined(run_local(q, fresh(nb03, tmp_path), "t"))
    truth = {t: (n, m) for t, n, m in pooled(nb03, "SELECT timepoint, count(*), avg(total_score) FROM quality_of_life "
                                                   "GROUP BY 1")}
    assert {"BASELINE", "ON_THERAPY", "END_OF_THERAPY", "FOLLOW_UP_1Y"} <= {k for k, v in shown.items()
                                                                           if "mean" in v}
    for point, v in shown.items():
        if "mean" in v:
            assert v["n"] == truth[point][0] and v["mean"] == pytest.approx(truth[point][1], rel=1e-12)
    assert shown["ON_THERAPY"]["mean"] < shown["BASELINE"]["mean"] < shown["FOLLOW_UP_2Y"]["mean"]


def test_efs_by_mycn_status_with_its_log_rank_test_equals_pooled(nb03: Settings, tmp_path: Path) -> None:
    from statsmodels.duration.survfunc import survdiff

    q = Query(study_id=STUDY, statistic="km", endpoint="efs", group_by=["mycn_status"])
    r = run_local(q, fresh(nb03, tmp_path), "t")
    assert r.status == "released", r.reason
    test = r.payload["tests"]["logrank"]
    groups = [g[0] for g in test["groups"]]
    assert {"DETECTED", "NOT_DETECTED"} <= set(groups)
    rows = pooled(nb03, "SELECT efs_days, efs_event, mycn_status FROM patients")
    keep = [row for row in rows if row[2] in groups]
    t = np.array([a for a, _, _ in keep], dtype=float)
    e = np.array([b for _, b, _ in keep], dtype=bool)
    grid = np.arange(0.0, test["follow_up_days"] + q.grid_days, q.grid_days)
    beyond = t >= grid[-1]
    rounded = np.where(beyond, grid[-1] + q.grid_days, grid[np.minimum(np.searchsorted(grid, t, side="right"),
                                                                       len(grid) - 1)])
    chi2, p = survdiff(rounded, (e & ~beyond).astype(int), np.array([groups.index(g) for _, _, g in keep]))
    assert test["chi2"] == pytest.approx(chi2, rel=1e-9) and test["p"] == pytest.approx(p, rel=1e-7)
    medians = {c["group"][0]: c["combined"]["median"]["day"] for c in r.payload["curves"]
               if "median" in c["combined"]}
    assert medians["DETECTED"] < medians["NOT_DETECTED"]  # MYCN amplification: worse event-free survival
    assert p < 1e-4


def test_cumulative_incidence_of_late_effects_by_radiotherapy_equals_pooled(nb03: Settings, tmp_path: Path) -> None:
    """The first late effect (any category) with death competing, by exposure to radiotherapy: Aalen-Johansen
    equal to statsmodels' on the pooled patients (times at the end of their grid interval), and Gray's test."""
    from statsmodels.duration.survfunc import CumIncidenceRight

    categories = [c for c in ("CARDIAC", "HEARING", "ENDOCRINE", "RENAL", "NEUROCOGNITIVE", "SECOND_NEOPLASM",
                              "PULMONARY", "FERTILITY", "MUSCULOSKELETAL", "OTHER")]
    q = Query(study_id=STUDY, statistic="cif", endpoint="late_effect", cause=categories,
              group_by=["had_radiotherapy"])
    r = run_local(q, fresh(nb03, tmp_path), "t")
    assert r.status == "released", r.reason
    rows = pooled(nb03, "SELECT late_effect_days, late_effect_event, first_late_effect, had_radiotherapy "
                        "FROM patients")
    t = np.array([a for a, *_ in rows], dtype=float)
    e = np.array([b for _, b, *_ in rows], dtype=bool)
    of_cause = np.array([c in categories for _, _, c, _ in rows])
    exposed = np.array([x for *_, x in rows], dtype=bool)
    assert (of_cause == (e & ~np.isin([c for _, _, c, _ in rows], ["DEATH"]))).all()  # death competes
    grid = np.arange(0.0, q.horizon_days + q.grid_days, q.grid_days)
    beyond = t >= grid[-1]
    rounded = np.where(beyond, grid[-1] + q.grid_days, grid[np.minimum(np.searchsorted(grid, t, side="right"),
                                                                       len(grid) - 1)])
    status = np.where(e & ~beyond, np.where(of_cause, 1, 2), 0)
    checked = 0
    for curve in r.payload["curves"]:
        at = exposed == curve["group"][0]
        ref = CumIncidenceRight(rounded[at], status[at])
        for pt in curve["combined"]["points"][1:]:
            i = np.searchsorted(ref.times, pt["day"] + 1e-9, side="right") - 1
            assert pt["incidence"] == pytest.approx(ref.cinc[0][i], abs=1e-12)
            assert pt["competing"] == pytest.approx(ref.cinc[1][i], abs=1e-12)
            checked += 1
    assert checked >= 4  # a point needs k late effects and k deaths since the previous one
    assert "gray" in r.payload["tests"] and r.payload["tests"]["gray"]["p"] is not None
    # a category of its own: the first late effect being a hearing loss, the others and death competing
    one = run_local(q.model_copy(update={"cause": ["HEARING"], "group_by": []}), fresh(nb03, tmp_path / "h"), "t")
    assert one.status == "released", one.reason
    assert "as the first late effect" in one.query.describe()


def test_a_v1_study_says_the_v2_tables_and_columns_are_not_collected(nb03: Settings, tmp_path: Path) -> None:
    s = fresh(nb03, tmp_path)
    for q, what in [(Query(study_id="PONC-WT-01", table="biomarkers"), "biomarkers is not collected"),
                    (Query(study_id="PONC-WT-01", exists=[Exists(table="late_effects")]), "late_effects is not"),
                    (Query(study_id="PONC-WT-01", group_by=["mycn_status"]), "mycn_status is not collected"),
                    (Query(study_id="PONC-WT-01", statistic="cif", endpoint="late_effect", cause=["HEARING"]),
                     "is not collected")]:
        r = run_local(q, s, "t")
        assert r.status == "refused" and what in r.reason and "v1" in r.reason


def test_a_rare_alteration_at_one_site_is_a_small_cell(nb03: Settings, tmp_path: Path) -> None:
    # ALK mutations are rare: at some site the ALK-mutated patients are 1..4; counted by alk_status, that cell is
    # hidden, and without complementary suppression it follows from the site's total minus its other cells
    q = Query(study_id=STUDY, group_by=["alk_status"])
    truth = dict(((s, v), n) for s, v, n in pooled(nb03, "SELECT site_id, alk_status, count(*) FROM patients "
                                                          "GROUP BY ALL"))
    rare = [site for site in ("site-a", "site-b", "site-c") if 0 < truth.get((site, "DETECTED"), 0) < 5]
    assert rare, "the data has a site with 1..4 ALK-mutated patients"

    def recovered(r: Any, site: str) -> int | None:
        """The site's DETECTED count by subtraction: from its total and its other cells, or from the combined
        DETECTED count and the other sites'."""
        rows = {row["group"][0]: row for row in r.payload["rows"]}
        total = r.payload["total"]["per_site"][site]
        others = [row["per_site"][site] for k, row in rows.items() if k != "DETECTED"]
        if isinstance(total, int) and all(isinstance(v, int) for v in others):
            return total - sum(others)
        detected = rows["DETECTED"]
        elsewhere = [v for s, v in detected["per_site"].items() if s != site]
        if isinstance(detected["combined"], int) and all(isinstance(v, int) for v in elsewhere):
            return detected["combined"] - sum(elsewhere)
        return None

    with switched_off("complementary_suppression"):
        naive = run_local(q, nb03.model_copy(update={"audit_log": tmp_path / "naive.jsonl"}), "mallory")
        assert any(recovered(naive, site) == truth[(site, "DETECTED")] for site in rare)
    safe = run_local(q, fresh(nb03, tmp_path), "mallory")
    assert safe.status == "released" and all(recovered(safe, site) is None for site in rare)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """PONC-NB-03 with site-a and site-b on dictionary v2 and site-c still exporting v1 (`also_accepts`)."""
    import shutil

    os.environ.setdefault("FEDERATION_PSEUDONYM_KEY", "test-consortium-key-0123456789")
    root = tmp_path_factory.mktemp("mixed")
    written = synthesize(root / "exports", 2, STUDY, 150, dt.date(2025, 6, 30), seed=8)
    v1 = synthesize(root / "v1", 3, STUDY, 150, dt.date(2025, 6, 30), seed=8, dictionary="1")[2]
    shutil.copy(root / "v1" / "sites" / "site-c.yaml", root / "exports" / "sites" / "site-c.yaml")
    return publish(root, [*written, v1])


def test_v1_and_v2_sites_answer_together_on_shared_columns_and_v1_says_not_collected(
        mixed: Settings, tmp_path: Path) -> None:
    s = fresh(mixed, tmp_path)
    # a shared column: every site takes part, and the combined count is the pooled one
    r = run_local(Query(study_id=STUDY, group_by=["sex"]), s, "t")
    assert r.status == "released" and set(r.sites) == {"site-a", "site-b", "site-c"} and not r.excluded
    assert r.payload["total"]["combined"] == pooled(mixed, "SELECT count(*) FROM patients")[0][0]
    # a v2 column or table: site-c takes no part and the result says why ("not collected", not a count of 0)
    for q, what in [(Query(study_id=STUDY, group_by=["mycn_status"]), "mycn_status"),
                    (Query(study_id=STUDY, table="late_effects", group_by=["category"]), "late_effects"),
                    (Query(study_id=STUDY, exists=[Exists(table="biomarkers", where=[
                        Filter(column="gene", op="==", value="MYCN"),
                        Filter(column="result", op="==", value="DETECTED")])]), "biomarkers")]:
        r = run_local(q, fresh(mixed, tmp_path / what), "t")  # each on its own history (the exists filter
        assert r.status == "released", r.reason            # and the count by mycn_status hold the same patients)
        assert set(r.sites) == {"site-a", "site-b"} and "site-c" not in str(r.payload.get("rows"))
        assert "not collected" in r.excluded["site-c"] and "v1" in r.excluded["site-c"] and what in r.excluded[
            "site-c"]
    v2_patients = pooled(mixed, "SELECT count(*) FROM patients WHERE site_id <> 'site-c'")[0][0]
    r = run_local(Query(study_id=STUDY, group_by=["mycn_status"]), s, "t")
    assert r.payload["total"]["combined"] == v2_patients
    from federation.query.render import to_text

    assert "site-c: not collected" in to_text(r)


def test_a_late_effect_curve_is_plotted_as_such_and_a_hidden_group_says_why(nb03: Settings, tmp_path: Path) -> None:
    from federation.query.render import figure, survival_summary

    r = run_local(Query(study_id=STUDY, statistic="km", endpoint="late_effect", group_by=["sex"]),
                  fresh(nb03, tmp_path), "t")
    assert r.status == "released", r.reason
    ax = figure(r).axes[0]
    assert ax.get_ylabel() == "late-effect-free survival"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    withheld = {c["group"][0] for c in r.payload["curves"] if c["combined"].get("withheld")}
    assert "U" in withheld and {f"{g} (withheld by disclosure control)" for g in withheld} <= set(labels), labels
    assert any(line.startswith("median late-effect-free survival") for line in survival_summary(r.payload))
