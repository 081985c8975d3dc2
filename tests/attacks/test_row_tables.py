"""Differencing on tables of several rows per patient (treatments, quality of life): a set of cells holds
each patient once, however many cells their rows lie in (guard `distinct_patients`). The ninth red team's
attacks, on the v2 neuroblastoma study: after a result that splits one patient's rows into five or more
cells, "everyone minus two groups" gave that patient's treatment start days or quality-of-life scores.
Each attack first succeeds with the guard switched off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from federation.query import Filter, Query, run_local
from federation.query.guard import switched_off
from federation.query.model import Exists
from federation.settings import Settings
from tests.federated import NB03 as STUDY
from tests.federated import fresh, pooled_v2


def truth(settings: Settings, table: str, column: str, where: str) -> tuple[int, int, float]:
    """(patients, rows, mean of `column`) of the rows of `table` whose patient matches `where`, pooled."""
    (patients, rows, mean), = pooled_v2(settings, f"SELECT count(DISTINCT pid), count(*), avg(t.{column}) "
                                                  f"FROM {table} t JOIN patients p USING (pid) WHERE {where}")
    return int(patients), int(rows), float(mean)


def F(column: str, value: Any, op: str = "==") -> Filter:
    return Filter(column=column, op=op, value=value)  # type: ignore[arg-type]


def attack(settings: Settings, folder: Path, first: Query, means: list[Query], site: str,
           ask: list[Query] | None = None) -> tuple[int, float] | None:
    """Release `first` (it splits every patient's rows by a column), then the means (in the order `ask`, if
    given); "the first mean minus the others" as (rows, mean), or None when a result is refused."""
    s = fresh(settings, folder)
    assert run_local(first, s, "mallory").status == "released"
    got = {}
    for q in ask or means:
        r = run_local(q, s, "mallory")
        if r.status != "released":
            assert "isolate fewer than 5 patients" in r.reason
            return None
        got[q.fingerprint()] = r
    parts = []
    for q in means:
        cell = got[q.fingerprint()].payload["rows"][0]["per_site"][site]
        parts.append((cell["n"], cell["n"] * cell["mean"]))
    n = parts[0][0] - sum(p[0] for p in parts[1:])
    return n, (parts[0][1] - sum(p[1] for p in parts[1:])) / n


def whole_minus_parts(settings: Settings, folder: Path, order: list[Query], whole: Query, parts: list[Query],
                      read: Callable[[Query, Any], int]) -> int | None:
    """Release the queries in `order` (a fresh history in `folder`); the count `read` from `whole` minus those
    of `parts`, or None when a result is refused."""
    s = fresh(settings, folder)
    got = {}
    for q in order:
        r = run_local(q, s, "mallory")
        if r.status != "released":
            assert "isolate fewer than 5 patients" in r.reason
            return None
        got[q.fingerprint()] = read(q, r)
    return got[whole.fingerprint()] - sum(got[p.fingerprint()] for p in parts)


def test_everyone_minus_two_arms_does_not_give_one_patients_treatments(nb03: Settings, tmp_path: Path) -> None:
    patients, rows, mean = truth(nb03, "treatments", "start_day", "p.site_id = 'site-a' AND p.arm = 'NR'")
    assert patients == 1 and rows >= 5  # one patient, many rows (one per agent)
    by_agent = Query(study_id=STUDY, table="treatments", sites=["site-a"], group_by=["agent"])
    mean_q = dict(study_id=STUDY, table="treatments", sites=["site-a"], statistic="mean", column="start_day")
    means = [Query(**mean_q), Query(**mean_q, filters=[F("arm", "DIN")]),  # type: ignore[arg-type]
             Query(**mean_q, filters=[F("arm", "DIN-IL2")])]  # type: ignore[arg-type]
    with switched_off("distinct_patients", "cross_table"):
        leaked = attack(nb03, tmp_path / "off", by_agent, means, "site-a")
    assert leaked is not None and leaked[0] == rows and leaked[1] == pytest.approx(mean)
    with switched_off("cross_table"):  # (which refuses it too, as patients with treatments: its own test below)
        assert attack(nb03, tmp_path / "on", by_agent, means, "site-a") is None


def test_a_site_minus_its_two_sexes_does_not_give_one_patients_scores(nb03: Settings, tmp_path: Path) -> None:
    where = "p.site_id = 'site-b' AND p.arm = 'DIN-IL2' AND p.sex = 'U'"
    patients, rows, mean = truth(nb03, "quality_of_life", "total_score", where)
    assert patients == 1 and rows >= 5  # one patient's scores at five time points
    arm = [F("arm", "DIN-IL2")]
    qol = dict(study_id=STUDY, table="quality_of_life", sites=["site-b"], statistic="mean", column="total_score")
    by_time = Query(**qol, group_by=["timepoint"], filters=arm)  # type: ignore[arg-type]
    means = [Query(**qol, filters=arm), Query(**qol, filters=[*arm, F("sex", "F")]),  # type: ignore[arg-type]
             Query(**qol, filters=[*arm, F("sex", "M")])]  # type: ignore[arg-type]
    with switched_off("distinct_patients", "cross_table"):
        leaked = attack(nb03, tmp_path / "off", by_time, means, "site-b")
    assert leaked is not None and leaked[0] == rows and leaked[1] == pytest.approx(mean)
    with switched_off("cross_table"):
        assert attack(nb03, tmp_path / "on", by_time, means, "site-b") is None


def test_two_nested_means_do_not_give_one_patients_treatments(nb03: Settings, tmp_path: Path) -> None:
    patients, rows, mean = truth(nb03, "treatments", "start_day", "p.site_id = 'site-a' AND p.arm = 'NR'")
    by_agent = Query(study_id=STUDY, table="treatments", sites=["site-a"], group_by=["agent"])
    mean_q = dict(study_id=STUDY, table="treatments", sites=["site-a"], statistic="mean", column="start_day")
    # (the NR patient is a girl; "arm in [DIN, DIN-IL2]" alone leaves out too few for the sites' subset guard)
    girls = [F("sex", "F")]
    means = [Query(**mean_q, filters=girls),  # type: ignore[arg-type]
             Query(**mean_q, filters=[*girls, F("arm", ["DIN", "DIN-IL2"], "in")])]  # type: ignore[arg-type]
    with switched_off("distinct_patients", "cross_table"):
        leaked = attack(nb03, tmp_path / "off", by_agent, means, "site-a")
    assert leaked is not None and leaked[0] == rows and leaked[1] == pytest.approx(mean)
    with switched_off("cross_table"):  # (which refuses it too, as patients with treatments: its own test below)
        assert attack(nb03, tmp_path / "on", by_agent, means, "site-a") is None


def test_means_over_many_patients_per_cell_are_still_released(nb03: Settings, tmp_path: Path) -> None:
    """No needless loss: with every patient's rows split by time point, the means of large groups and their
    differences of many patients are released."""
    qol = dict(study_id=STUDY, table="quality_of_life", statistic="mean", column="total_score")
    by_time = Query(**qol, group_by=["timepoint"])  # type: ignore[arg-type]
    # (rightly refused after these: the boys (everyone minus the girls and boys is site-b's two sex-U patients'
    # scores), and a mean by arm (its NR cell at site-b gives the scores of three NR girls there, whose rows
    # lie in three classes of atoms, found by `span.patient_unions`))
    means = [Query(**qol), Query(**qol, filters=[F("sex", "F")]),  # type: ignore[arg-type]
             Query(**qol, filters=[F("arm", "DIN")])]  # type: ignore[arg-type]
    s = fresh(nb03, tmp_path / "h")
    for q in [by_time, *means]:
        r = run_local(q, s, "mallory")
        assert r.status == "released", r.reason


def test_five_classes_of_one_patients_scores_are_searched_as_one_union(nb03: Settings, tmp_path: Path) -> None:
    """The tenth red team: after a mean by time point, everyone (site-b, DIN-IL2) minus its girls early, its
    girls later and its boys is the one sex-U patient's five scores, which lie in five span classes (one per
    time point): more than the span check's unions of classes combine. Sums of squares come with them."""
    patients, rows, mean = truth(nb03, "quality_of_life", "total_score",
                                 "p.site_id = 'site-b' AND p.arm = 'DIN-IL2' AND p.sex = 'U'")
    assert patients == 1 and rows == 5
    arm, early = [F("arm", "DIN-IL2")], ["BASELINE", "ON_THERAPY"]
    qol = dict(study_id=STUDY, table="quality_of_life", sites=["site-b"], statistic="mean", column="total_score")
    by_time = Query(**qol, group_by=["timepoint"])  # type: ignore[arg-type]
    means = [Query(**qol, filters=arm),  # type: ignore[arg-type]
             Query(**qol, filters=[*arm, F("sex", "F"), F("timepoint", early, "in")]),  # type: ignore[arg-type]
             Query(**qol, filters=[*arm, F("sex", "F"), F("timepoint", early, "not in")]),  # type: ignore[arg-type]
             Query(**qol, filters=[*arm, F("sex", "M")])]  # type: ignore[arg-type]
    means = [*means[1:], means[0]]  # the parts first, then the whole
    with switched_off("patient_unions", "cross_table"):
        leaked = attack(nb03, tmp_path / "off", by_time, [means[-1], *means[:-1]], "site-b", ask=means)
    assert leaked is not None and leaked[0] == rows and leaked[1] == pytest.approx(mean)
    with switched_off("cross_table"):
        assert attack(nb03, tmp_path / "on", by_time, [means[-1], *means[:-1]], "site-b", ask=means) is None


@pytest.mark.parametrize(("patients_first", "by_category"), [(True, False), (False, False), (True, True),
                                                             (False, True)])
def test_counts_of_rows_and_of_patients_do_not_difference_across_tables(nb03: Settings, tmp_path: Path,
                                                                        patients_first: bool,
                                                                        by_category: bool) -> None:
    """The tenth red team: patients (site-b, DIN-IL2) with a hearing loss, minus the girls' and the boys'
    hearing-loss rows (one row per patient and category here), was the one sex-U patient's late effect: the
    results of each table were checked only against their own table's (guard `cross_table`). The same with
    the rows counted by category (the HEARING cells)."""
    (hearing,), = pooled_v2(nb03, "SELECT count(*) FROM late_effects l JOIN patients p USING (pid) WHERE "
                                    "p.site_id = 'site-b' AND p.arm = 'DIN-IL2' AND p.sex = 'U' "
                                    "AND l.category = 'HEARING'")
    assert hearing == 1
    base = dict(study_id=STUDY, sites=["site-b"])
    arm, hear = F("arm", "DIN-IL2"), F("category", "HEARING")
    patients = Query(**base, filters=[arm], exists=[Exists(table="late_effects", where=[hear])])  # type: ignore[arg-type]
    girls, boys = (Query(**base, table="late_effects", filters=[arm, F("sex", sex)],  # type: ignore[arg-type]
                         group_by=["category"]) if by_category else
                   Query(**base, table="late_effects", filters=[arm, hear, F("sex", sex)])  # type: ignore[arg-type]
                   for sex in ("F", "M"))
    order = [patients, girls, boys] if patients_first else [girls, boys, patients]

    def hearing_cell(q: Query, r: Any) -> int:
        cell = next(row for row in r.payload["rows"] if row["group"] == ["HEARING"]) if q.group_by else \
            r.payload["total"]
        return int(cell["per_site"]["site-b"])

    with switched_off("cross_table"):
        assert whole_minus_parts(nb03, tmp_path / "off", order, patients, [girls, boys], hearing_cell) == 1
    assert whole_minus_parts(nb03, tmp_path / "on", order, patients, [girls, boys], hearing_cell) is None


def test_rows_beyond_patients_do_not_tell_who_has_two(nb03: Settings, tmp_path: Path) -> None:
    """The eleventh red team: 49 cardiac or renal late effects, then 48 patients with one, is one patient with
    both. A count of rows exceeding its patients by 1..k-1 is small (guard `row_multiplicity`), in a total too."""
    (both,), = pooled_v2(nb03, "SELECT count(*) FROM (SELECT pid FROM late_effects WHERE category IN "
                                 "('CARDIAC', 'RENAL') GROUP BY pid HAVING count(*) > 1)")
    assert 1 <= both <= 4
    pair = F("category", ["CARDIAC", "RENAL"], "in")
    patients = Query(study_id=STUDY, exists=[Exists(table="late_effects", where=[pair])])  # type: ignore[arg-type]
    for rows in (Query(study_id=STUDY, table="late_effects", filters=[pair]),  # type: ignore[arg-type]
                 Query(study_id=STUDY, table="late_effects", filters=[pair], group_by=["sex"])):  # type: ignore[arg-type]
        def differenced(folder: Path, rows: Query = rows) -> int | None:
            s = fresh(nb03, folder)
            r, p = (run_local(q, s, "mallory") for q in (rows, patients))
            assert r.status == p.status == "released", (r.reason, p.reason)
            n_rows, n_patients = r.payload["total"]["combined"], p.payload["total"]["combined"]
            return None if isinstance(n_rows, dict) else int(n_rows - n_patients)

        with switched_off("row_multiplicity"):
            assert differenced(tmp_path / f"off-{len(rows.group_by)}") == both
        assert differenced(tmp_path / f"on-{len(rows.group_by)}") is None


@pytest.mark.parametrize("proportion_first", [True, False])
def test_a_proportion_of_rows_and_counts_of_patients_do_not_difference(nb03: Settings, tmp_path: Path,
                                                                       proportion_first: bool) -> None:
    """A proportion of hearing losses among the late effects (site-b, DIN-IL2) shows the hearing-loss rows
    (its x, one row per patient here), then the girls and the boys with a hearing loss: the one sex-U patient's
    hearing loss. A proportion's part on a row table is a shadow on patients too (guard `cross_table`)."""
    base = dict(study_id=STUDY, sites=["site-b"])
    arm, hear = F("arm", "DIN-IL2"), F("category", "HEARING")
    share = Query(**base, table="late_effects", statistic="proportion", column="category",  # type: ignore[arg-type]
                  value="HEARING", filters=[arm])
    girls, boys = (Query(**base, filters=[arm, F("sex", sex)],  # type: ignore[arg-type]
                         exists=[Exists(table="late_effects", where=[hear])]) for sex in ("F", "M"))
    order = [share, girls, boys] if proportion_first else [girls, boys, share]

    def count(q: Query, r: Any) -> int:
        return int(r.payload["rows"][0]["per_site"]["site-b"]["x"] if q is share else
                   r.payload["total"]["per_site"]["site-b"])

    (hearing,), = pooled_v2(nb03, "SELECT count(*) FROM late_effects l JOIN patients p USING (pid) WHERE p.site_id "
                                  "= 'site-b' AND p.arm = 'DIN-IL2' AND p.sex = 'U' AND l.category = 'HEARING'")
    with switched_off("cross_table"):
        assert whole_minus_parts(nb03, tmp_path / "off", order, share, [girls, boys], count) == hearing == 1
    assert whole_minus_parts(nb03, tmp_path / "on", order, share, [girls, boys], count) is None
