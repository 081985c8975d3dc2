"""One differencing history for every analyst, site selection and version (issue 8, items 3, 4 and 5).
Each attack first succeeds with the differencing guard switched off, on a service of its own."""

from __future__ import annotations

import datetime as dt
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation.query import Filter, Query, run_local
from federation.query.guard import switched_off
from federation.settings import Settings
from tests.federated import STUDY, close_cut_points, elsewhere, pooled

AGE = "age_at_diagnosis_years"


def total(r: Any, site: str | None = None) -> int:
    assert r.status == "released", r.reason
    value = r.payload["total"]["combined"] if site is None else r.payload["total"]["per_site"][site]
    assert isinstance(value, int), value
    return value


def hits(r: Any) -> int:
    """A released proportion's combined x (rows with column == value)."""
    assert r.status == "released", r.reason
    return int(r.payload["rows"][0]["combined"]["x"])


def test_colluding_analysts_share_one_history(fresh_audit: Settings) -> None:
    a, b = close_cut_points(fresh_audit, site="site-a")
    first = Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column=AGE, op="<", value=a)])
    second = Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column=AGE, op="<", value=b)])
    few = pooled(fresh_audit, f"SELECT count(*) FROM patients WHERE site_id = 'site-a' AND {AGE} >= {a} "
                              f"AND {AGE} < {b}")[0][0]
    unguarded = elsewhere(fresh_audit, "unguarded")
    with switched_off("differencing"):
        assert total(run_local(second, unguarded, "trent")) - total(run_local(first, unguarded, "mallory")) == few

    assert run_local(first, fresh_audit, "mallory").status == "released"
    for i in range(25):  # harmless queries in between do not push the first one out of view (no lookback)
        run_local(Query(study_id=STUDY, group_by=["sex"], filters=[Filter(column=AGE, op=">=", value=2 + i / 2)]),
                  fresh_audit, "mallory")
    refused = run_local(second, fresh_audit, "trent")  # another identity of the same person, or a colluder
    assert refused.status == "refused" and "differencing" in refused.reason
    assert "another analyst (audit #1)" in refused.reason and str(a) not in refused.reason  # nothing of theirs


def test_non_nested_filters_with_everyone_do_not_isolate_a_bin(fresh_audit: Settings) -> None:
    a, b = close_cut_points(fresh_audit, site="site-a")
    queries = [Query(study_id=STUDY, sites=["site-a"]),
               Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column=AGE, op="<", value=b)]),
               Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column=AGE, op=">=", value=a)])]
    few = pooled(fresh_audit, f"SELECT count(*) FROM patients WHERE site_id = 'site-a' AND {AGE} >= {a} "
                              f"AND {AGE} < {b}")[0][0]
    assert 0 < few < 5
    with switched_off("differencing"):
        everyone, below_b, from_a = (run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory") for q in queries)
    assert total(below_b) + total(from_a) - total(everyone) == few  # the bin [a, b) by q + a - b

    assert [run_local(q, fresh_audit, "mallory").status for q in queries[:2]] == ["released", "released"]
    refused = run_local(queries[2], fresh_audit, "mallory")
    assert refused.status == "refused" and "three cells, of this result and earlier ones, add up" in refused.reason
    assert "your earlier result #1" in refused.reason and "your earlier result #2" in refused.reason


def test_all_sites_and_all_but_one_do_not_give_a_sites_withheld_cell(fresh_audit: Settings) -> None:
    everyone = Query(study_id=STUDY, group_by=["arm"])
    sites = sorted(s for (s,) in pooled(fresh_audit, "SELECT DISTINCT site_id FROM patients"))
    all_but_a = Query(study_id=STUDY, group_by=["arm"], sites=[s for s in sites if s != "site-a"])
    with switched_off("differencing"):
        x, y = (run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory") for q in (everyone, all_but_a))
    nr = {r["group"][0]: r for r in x.payload["rows"]}["NR"]
    assert nr["per_site"]["site-a"] == {"suppressed": True}  # hidden in the first result...
    nr_without = {r["group"][0]: r for r in y.payload["rows"]}["NR"]
    assert nr["combined"] - nr_without["combined"] == 1  # ... and recovered by the two site selections

    assert run_local(everyone, fresh_audit, "mallory").status == "released"
    refused = run_local(all_but_a, fresh_audit, "mallory")
    assert refused.status == "refused" and "differencing" in refused.reason


def test_a_site_insider_cannot_subtract_its_own_rows(fresh_audit: Settings) -> None:
    # "not F" and "M" at site-c and site-f differ by their patients of unknown sex: enough together, but
    # site-c knows its own, and the rest is site-f's few
    unknown = dict(pooled(fresh_audit, "SELECT site_id, count(*) FROM patients WHERE sex = 'U' GROUP BY 1"))
    assert unknown["site-c"] + unknown.get("site-f", 0) >= 5 and 0 < unknown.get("site-f", 0) < 5
    pair = [Query(study_id=STUDY, sites=["site-c", "site-f"], filters=[Filter(column="sex", op="!=", value="F")]),
            Query(study_id=STUDY, sites=["site-c", "site-f"], filters=[Filter(column="sex", op="==", value="M")])]
    with switched_off("differencing"):
        first, second = (run_local(q, elsewhere(fresh_audit, "unguarded"), "insider-c") for q in pair)
    assert total(first) - total(second) - unknown["site-c"] == unknown["site-f"]

    assert run_local(pair[0], fresh_audit, "insider-c").status == "released"
    refused = run_local(pair[1], fresh_audit, "insider-c")
    assert refused.status == "refused" and "differencing" in refused.reason


@pytest.fixture()
def two_versions(federated: Settings, tmp_path: Path) -> tuple[Settings, str]:
    """site-a publishes a second version without its last patient: (settings, that patient's pid)."""
    from federation.ingest.landing import upload_export
    from federation.ingest.pipeline import ingest_all
    from federation.storage import open_store

    shutil.copytree(federated.storage.root, tmp_path / "storage")
    storage = federated.storage.model_copy(update={"root": tmp_path / "storage"})
    settings = federated.model_copy(update={"storage": storage, "audit_log": tmp_path / "audit.jsonl"})
    export = tmp_path / "export"
    shutil.copytree(federated.sites_dir.parent / "site-a" / STUDY, export)
    def pid_column(header: str) -> int:
        return header.split(",").index("patient_id")

    lines = (export / "patients.csv").read_text().splitlines()
    gone = lines[-1].split(",")[pid_column(lines[0])]
    for csv in export.glob("*.csv"):
        lines = csv.read_text().splitlines()
        i = pid_column(lines[0])
        csv.write_text("\n".join([lines[0], *(x for x in lines[1:] if x.split(",")[i] != gone)]) + "\n")
    upload_export(open_store(settings.storage), settings.storage, "site-a", STUDY, "1", export,
                  now=dt.datetime(2025, 7, 1, tzinfo=dt.UTC), upload_id="u-second")
    ingest_all(settings, progress=lambda _m: None)
    return settings, gone


def test_two_versions_do_not_give_the_patient_between_them(two_versions: tuple[Settings, str]) -> None:
    settings, _ = two_versions
    ages = [v for (v,) in pooled(settings, f"SELECT {AGE} FROM read_parquet('{settings.storage.root}/harmonized/"
                                           f"site-a/{STUDY}/data/*/patients.parquet', filename=true) "
                                           "WHERE filename NOT LIKE '%u-second%'")]
    later = {v for (v,) in pooled(settings, f"SELECT {AGE} FROM read_parquet('{settings.storage.root}/harmonized/"
                                            f"site-a/{STUDY}/data/u-second/patients.parquet')")}
    (gone_age,) = [v for v in ages if v not in later] or [None]
    mean = Query(study_id=STUDY, sites=["site-a"], statistic="mean", column=AGE)
    v1, v2 = mean.model_copy(update={"versions": {"site-a": 1}}), mean.model_copy(update={"versions": {"site-a": 2}})

    def sum_of(r: Any) -> float:
        assert r.status == "released", r.reason
        row = r.payload["rows"][0]["combined"]
        return float(row["mean"] * row["n"])

    with switched_off("differencing"):
        old, new = (run_local(q, elsewhere(settings, "unguarded"), "mallory") for q in (v1, v2))
    assert sum_of(old) - sum_of(new) == pytest.approx(gone_age)  # that patient's age, to the last decimal

    assert run_local(v1, settings, "mallory").status == "released"
    refused = run_local(v2, settings, "mallory")  # pinned or latest: the same check
    assert refused.status == "refused" and "differencing" in refused.reason
    assert run_local(mean, settings, "trent").status == "refused"


def test_a_site_insider_cannot_subtract_its_own_cell_from_a_combined_one() -> None:
    from federation.query.central import disclosure as dc

    # two sites with 3 patients each in a group: both per-site cells hidden, their sum of 6 is not small
    cells = np.array([[[3], [40]], [[3], [50]]], dtype=float)
    with switched_off("site_insider"):
        naive = dc.suppress(cells, [5, 5], 5, col_margin=False)
    assert np.isnan(naive.values[0, 0, 0]) and np.isnan(naive.values[1, 0, 0])
    assert naive.values[2, 0, 0] - 3 == 3  # site 0 knows its own 3: site 1 has 3
    safe = dc.suppress(cells, [5, 5], 5, col_margin=False)
    assert np.isnan(safe.values[2, 0, 0])
    # and the hidden combined cell cannot be derived from the totals either
    lo, hi = dc.range_of(safe, cells.shape, (2, 0, 0))
    assert hi - lo >= 5


def test_per_site_triples_and_a_subset_asked_last_are_checked(fresh_audit: Settings) -> None:
    # red-team review: everyone, age >= 4 and age < 3.5 give the bin [3.5, 4) at one site from per-site
    # values (the combined bin is large), and in any order
    site_a = pooled(fresh_audit, f"SELECT count(*) FROM patients WHERE site_id = 'site-a' AND {AGE} >= 3.5 "
                                 f"AND {AGE} < 4")[0][0]
    assert 0 < site_a < 5
    queries = [Query(study_id=STUDY), Query(study_id=STUDY, filters=[Filter(column=AGE, op=">=", value=4.0)]),
               Query(study_id=STUDY, filters=[Filter(column=AGE, op="<", value=3.5)])]

    def derived(rs: list[Any]) -> Any:
        values = [r.payload["total"]["per_site"]["site-a"] for r in rs]
        return values[0] - values[1] - values[2] if all(isinstance(v, int) for v in values) else None

    with switched_off("differencing"):
        assert derived([run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory") for q in queries]) == site_a
    assert derived([run_local(q, fresh_audit, "mallory") for q in queries]) is None
    # the subset asked last, at one site (so combined = that site): a - b - q
    one = [q.model_copy(update={"sites": ["site-a"]}) for q in queries]
    results = [run_local(q, elsewhere(fresh_audit, "one-site"), "mallory") for q in one]
    assert [r.status for r in results[:2]] == ["released", "released"] and results[2].status == "refused"


A2_SITES = ["site-b", "site-c", "site-d", "site-e"]
ONE_EACH = ["site-c", "site-d", "site-e"]  # one patient aged 10-14 at each


def by_group(r: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    assert r.status == "released", r.reason
    return {tuple(row["group"]): {"combined": row["combined"], **row["per_site"]} for row in r.payload["rows"]}


def a2_ages(everyone: Any, grouped: Any, filtered: Any, groups: list[str]) -> dict[str, float]:
    """The red team's A2: everyone's mean at a site, minus the groups the mean by age group showed, minus a
    filtered mean of a group it hid as a complement, leaves the one patient it hid as primary."""
    found = {}
    whole, parts, extra = by_group(everyone)[()], by_group(grouped), by_group(filtered)[()]
    for site in ONE_EACH:
        cells = [parts[(g,)][site] for g in groups] + [extra[site]]
        if any("mean" not in c for c in [whole[site], *cells]):
            continue
        n = whole[site]["n"] - sum(c["n"] for c in cells)
        if n == 1:
            found[site] = round(whole[site]["n"] * whole[site]["mean"] - sum(c["n"] * c["mean"] for c in cells), 4)
    return found


def test_a_cell_hidden_as_a_complement_is_not_released_later(fresh_audit: Settings) -> None:
    """A2: four results, five cells. The mean by age group hides each 10-14 patient and, as its complement, the
    site's <1 group; a later mean filtered to <1 must not show what the grouped mean hid."""
    truth = dict(pooled(fresh_audit, f"SELECT site_id, round({AGE}, 4) FROM unit_patients "
                                     "WHERE age_group = '10-14'"))
    queries = [Query(study_id=STUDY, statistic="mean", column=AGE, sites=A2_SITES),
               Query(study_id=STUDY, statistic="mean", column=AGE, group_by=["age_group"], sites=A2_SITES),
               Query(study_id=STUDY, statistic="mean", column=AGE, sites=ONE_EACH,
                     filters=[Filter(column="age_group", op="==", value="<1")])]
    with switched_off("differencing"):
        unguarded = [run_local(q, elsewhere(fresh_audit, "unguarded"), "mallory") for q in queries]
    assert a2_ages(*unguarded, groups=["1-4", "5-9"]) == {s: truth[s] for s in ONE_EACH}  # three patients' ages

    everyone, grouped = (run_local(q, fresh_audit, "mallory") for q in queries[:2])
    assert by_group(grouped)[("<1",)]["site-c"] == {"suppressed": True}  # the complement of site-c's one patient
    last = run_local(queries[2], fresh_audit, "eve")  # another identity
    assert last.status == "refused" and "pin down a hidden cell" in last.reason and "audit #2" in last.reason


def test_a_hidden_cell_is_not_released_through_a_union_of_groups(fresh_audit: Settings) -> None:
    """The cross-family variant: `age_group in [1-4, 5-9, 10-14]` minus the shown 1-4 and 5-9 cells."""
    grouped = Query(study_id=STUDY, statistic="mean", column=AGE, group_by=["age_group"], sites=A2_SITES)
    union = Query(study_id=STUDY, statistic="mean", column=AGE, sites=ONE_EACH,
                  filters=[Filter(column="age_group", op="in", value=["1-4", "5-9", "10-14"])])

    def ages(g: Any, u: Any) -> dict[str, float]:
        parts, whole = by_group(g), by_group(u)[()]
        out = {}
        for site in ONE_EACH:
            cells = [parts[(x,)][site] for x in ("1-4", "5-9")]
            if all("mean" in c for c in [whole[site], *cells]) and whole[site]["n"] - sum(c["n"] for c in cells) == 1:
                out[site] = whole[site]["n"] * whole[site]["mean"] - sum(c["n"] * c["mean"] for c in cells)
        return out

    with switched_off("differencing"):
        unguarded = elsewhere(fresh_audit, "unguarded")
        assert len(ages(run_local(grouped, unguarded, "m"), run_local(union, unguarded, "m"))) == 3
    first = run_local(grouped, fresh_audit, "mallory")
    second = run_local(union, fresh_audit, "mallory")
    assert first.status == "released"
    assert second.status == "refused" and "your earlier result #1" in second.reason


def test_a_new_result_hides_what_earlier_results_would_give_away(fresh_audit: Settings) -> None:
    """A2 asked the other way round: the filtered mean first; then the mean by age group would hide the 10-14
    patients and <1 as their complement, but the <1 cells were already shown."""
    queries = [Query(study_id=STUDY, statistic="mean", column=AGE, sites=A2_SITES),
               Query(study_id=STUDY, statistic="mean", column=AGE, sites=ONE_EACH,
                     filters=[Filter(column="age_group", op="==", value="<1")]),
               Query(study_id=STUDY, statistic="mean", column=AGE, group_by=["age_group"], sites=A2_SITES)]
    with switched_off("differencing"):
        everyone, filtered, grouped = (run_local(q, elsewhere(fresh_audit, "unguarded"), "m") for q in queries)
    assert len(a2_ages(everyone, grouped, filtered, groups=["1-4", "5-9"])) == 3

    everyone, filtered = (run_local(q, fresh_audit, "mallory") for q in queries[:2])
    grouped = run_local(queries[2], fresh_audit, "mallory")
    # refused, not only per-site withheld: site-b's insider knows its own <1 patients, and the combined
    # 1-4 and 5-9 cells with everyone's means and the filtered ones would leave the three 10-14 patients
    assert grouped.status == "refused" and "pin down a hidden cell" in grouped.reason
    assert "your earlier result #1" in grouped.reason and "your earlier result #2" in grouped.reason


def differences(results: list[Any], signs: tuple[int, ...], sites: list[str],
                cells: list[dict[str, Any]] | None = None) -> dict[str, tuple[int, float]]:
    """Per site, the n and the sum of a signed combination of cells (ungrouped means, or `cells`) that are
    all shown."""
    out = {}
    cells = cells or [by_group(r)[()] for r in results]
    for site in sites:
        if all("mean" in c[site] for c in cells):
            out[site] = (sum(sg * c[site]["n"] for sg, c in zip(signs, cells, strict=True)),
                         round(sum(sg * c[site]["n"] * c[site]["mean"] for sg, c in zip(signs, cells, strict=True)), 4))
    return out


def test_two_categorical_filters_and_everyone_do_not_isolate_a_group(fresh_audit: Settings) -> None:
    """Red team T1: everyone - `age_group in [<1, 1-4]` - `age_group == 5-9` = the 10-14 patients (a triple
    through categorical filters, which the triple search once left out)."""
    queries = [Query(study_id=STUDY, statistic="mean", column=AGE),
               Query(study_id=STUDY, statistic="mean", column=AGE,
                     filters=[Filter(column="age_group", op="in", value=["<1", "1-4"])]),
               Query(study_id=STUDY, statistic="mean", column=AGE,
                     filters=[Filter(column="age_group", op="==", value="5-9")])]
    truth = dict(pooled(fresh_audit, f"SELECT site_id, round({AGE}, 4) FROM unit_patients WHERE age_group = '10-14'"))
    with switched_off("differencing"):
        unguarded = [run_local(q, elsewhere(fresh_audit, "unguarded"), "m") for q in queries]
    assert differences(unguarded, (1, -1, -1), ONE_EACH) == {s: (1, truth[s]) for s in ONE_EACH}

    guarded = [run_local(q, fresh_audit, who) for q, who in zip(queries, ["mallory", "eve", "trent"], strict=True)]
    assert [r.status for r in guarded[:2]] == ["released", "released"]
    last = guarded[2]
    assert last.status == "refused" or differences(guarded, (1, -1, -1), ONE_EACH) == {}
    assert "differencing" in (last.reason + " ".join(last.notes))


def test_four_filtered_results_do_not_isolate_a_group(fresh_audit: Settings) -> None:
    """Red team Q1: `arm == DD4A`, `EE4A`, `M`, then everyone: four results, nothing hidden, site-a's one NR
    patient is everyone minus the three (the filter family's span check)."""
    sites = sorted(s for (s,) in pooled(fresh_audit, "SELECT DISTINCT site_id FROM patients"))
    queries = [Query(study_id=STUDY, statistic="mean", column=AGE, filters=[Filter(column="arm", op="==", value=a)])
               for a in ("DD4A", "EE4A", "M")] + [Query(study_id=STUDY, statistic="mean", column=AGE)]
    ((nr_age,),) = pooled(fresh_audit, f"SELECT round({AGE}, 4) FROM unit_patients WHERE site_id = 'site-a' "
                                       "AND arm = 'NR'")
    with switched_off("differencing"):
        unguarded = [run_local(q, elsewhere(fresh_audit, "unguarded"), "m") for q in queries]
    assert differences(unguarded[::-1], (1, -1, -1, -1), sites)["site-a"] == (1, nr_age)

    guarded = [run_local(q, fresh_audit, "mallory") for q in queries]
    assert [r.status for r in guarded] == ["released"] * 4
    assert any("per-site values are withheld" in n for n in guarded[3].notes)
    assert "site-a" not in differences(guarded[::-1], (1, -1, -1, -1), sites)


def test_a_filter_reaching_outside_a_result_with_hidden_cells_is_checked(fresh_audit: Settings) -> None:
    """Red team O1: `age_group != 5-9` (T), the same by age group (hides 10-14 and <1), `age_group == 5-9` (E),
    then `age_group in [<1, 5-9]` (N): T - (1-4) - N + E = the 10-14 patients."""
    rest = [Filter(column="age_group", op="!=", value="5-9")]
    queries = [Query(study_id=STUDY, statistic="mean", column=AGE, filters=rest, sites=A2_SITES),
               Query(study_id=STUDY, statistic="mean", column=AGE, group_by=["age_group"], filters=rest,
                     sites=A2_SITES),
               Query(study_id=STUDY, statistic="mean", column=AGE, sites=A2_SITES,
                     filters=[Filter(column="age_group", op="==", value="5-9")]),
               Query(study_id=STUDY, statistic="mean", column=AGE, sites=A2_SITES,
                     filters=[Filter(column="age_group", op="in", value=["<1", "5-9"])])]

    def ages(rs: list[Any]) -> dict[str, tuple[int, float]]:
        t, grouped, e, n = rs
        cells = [by_group(t)[()], by_group(grouped)[("1-4",)], by_group(n)[()], by_group(e)[()]]
        return differences(rs, (1, -1, -1, 1), ONE_EACH, cells=cells)

    truth = dict(pooled(fresh_audit, f"SELECT site_id, round({AGE}, 4) FROM unit_patients WHERE age_group = '10-14'"))
    with switched_off("differencing"):
        unguarded = [run_local(q, elsewhere(fresh_audit, "unguarded"), "m") for q in queries]
    assert ages(unguarded) == {s: (1, truth[s]) for s in ONE_EACH}

    guarded = [run_local(q, fresh_audit, "mallory") for q in queries]
    assert [r.status for r in guarded[:3]] == ["released"] * 3
    assert guarded[3].status == "refused" and "pin down" in guarded[3].reason


def test_two_proportions_do_not_differ_by_a_few_events(fresh_audit: Settings) -> None:
    """Red team P1: a proportion's x (`efs_event == True`) at site-c for everyone and for histology_risk !=
    UNFAVORABLE: the subsets are 26 apart, the events 1 (a crosstab hides that cell)."""
    where = [Filter(column="histology_risk", op="!=", value="UNFAVORABLE")]
    queries = [Query(study_id=STUDY, statistic="proportion", column="efs_event", value=True, sites=["site-c"]),
               Query(study_id=STUDY, statistic="proportion", column="efs_event", value=True, sites=["site-c"],
                     filters=where)]
    ((few,),) = pooled(fresh_audit, "SELECT sum(efs_event::int) FROM unit_patients WHERE site_id = 'site-c' "
                                    "AND histology_risk = 'UNFAVORABLE'")
    assert 0 < few < 5

    with switched_off("differencing"):
        a, b = (run_local(q, elsewhere(fresh_audit, "unguarded"), "m") for q in queries)
    assert hits(a) - hits(b) == few

    assert run_local(queries[0], fresh_audit, "mallory").status == "released"
    refused = run_local(queries[1], fresh_audit, "eve")
    assert refused.status == "refused" and "differencing" in refused.reason


def test_two_logistic_models_do_not_differ_by_a_few_events(fresh_audit: Settings) -> None:
    """Red team P2: a saturated logistic model (efs_event on sex) inverts to its event counts; two at site-c
    on subsets 26 apart differ by the events among UNFAVORABLE histology (and D5: with the second outcome
    written `efs_event != False`)."""

    base = [Filter(column="sex", op="!=", value="U")]
    outcome = Filter(column="efs_event", op="==", value=True)
    queries = [Query(study_id=STUDY, statistic="logistic", outcome=outcome, covariates=["sex"], sites=["site-c"],
                     filters=base + extra)
               for extra in ([], [Filter(column="histology_risk", op="!=", value="UNFAVORABLE")])]
    ((few,),) = pooled(fresh_audit, "SELECT sum(efs_event::int) FROM unit_patients WHERE site_id = 'site-c' "
                                    "AND histology_risk = 'UNFAVORABLE' AND sex != 'U'")
    assert 0 < few < 5

    def events(r: Any) -> float:  # n and events of each sex from the intercept, its se and the slope
        assert r.status == "released", r.reason
        c = {t["term"]: t for t in r.payload["coefficients"]}
        b0, se0 = c["(intercept)"]["estimate"], c["(intercept)"]["se"]
        (b1,) = [t["estimate"] for name, t in c.items() if name != "(intercept)"]
        p0, p1 = 1 / (1 + math.exp(-b0)), 1 / (1 + math.exp(-(b0 + b1)))
        n0 = 1 / (se0 ** 2 * p0 * (1 - p0))
        return n0 * p0 + (r.payload["n"] - n0) * p1

    with switched_off("differencing"):
        a, b = (run_local(q, elsewhere(fresh_audit, "unguarded"), "m") for q in queries)
    assert round(events(a) - events(b), 6) == few

    assert run_local(queries[0], fresh_audit, "mallory").status == "released"
    refused = run_local(queries[1], fresh_audit, "eve")
    assert refused.status == "refused" and "differencing" in refused.reason
    # red team D5: the same outcome written another way is the same patients (compared by rows, not text)
    alias = queries[1].model_copy(update={"outcome": Filter(column="efs_event", op="!=", value=False)})
    refused = run_local(alias, fresh_audit, "trent")
    assert refused.status == "refused" and "differencing" in refused.reason


def test_two_risk_tables_do_not_differ_by_a_few_patients(fresh_audit: Settings) -> None:
    """Red team K1: yearly Kaplan-Meier risk tables at site-c for everyone and for histology_risk !=
    UNFAVORABLE differ by 1..4 patients at some year: UNFAVORABLE patients still followed then. Guarded,
    the second curve is released with its numbers at risk at those years withheld (and said so)."""
    kw: dict[str, Any] = dict(study_id=STUDY, statistic="km", endpoint="efs", grid_days=365.25,
                              horizon_days=7305.0, sites=["site-c"])
    queries = [Query(**kw), Query(**kw, filters=[Filter(column="histology_risk", op="!=", value="UNFAVORABLE")])]

    def table(r: Any) -> dict[int, Any]:
        assert r.status == "released", r.reason
        return {p["year"]: p["at_risk"] for p in r.payload["curves"][0]["combined"]["risk_table"]}

    with switched_off("differencing"):
        a, b = (table(run_local(q, elsewhere(fresh_audit, "unguarded"), "m")) for q in queries)
    small = {y: a[y] - b[y] for y in a if isinstance(a[y], int) and isinstance(b.get(y), int)
             and 0 < a[y] - b[y] < 5}
    assert small, (a, b)
    for year, few in small.items():
        truth = pooled(fresh_audit, "SELECT count(*) FROM unit_patients WHERE site_id = 'site-c' AND histology_risk "
                                    f"= 'UNFAVORABLE' AND efs_days >= {year * 365.25}")
        assert few == truth[0][0]

    first = table(run_local(queries[0], fresh_audit, "mallory"))
    second = run_local(queries[1], fresh_audit, "eve")  # released, with the numbers that would leak withheld
    withheld = [n for n in second.notes if "withheld" in n and "differencing" in n]
    assert withheld and "another analyst (audit #1)" in withheld[0]
    b = table(second)
    assert not [y for y in first if isinstance(first[y], int) and isinstance(b.get(y), int)
                and 0 < first[y] - b[y] < 5]
    assert {y for y in small} <= {y for y, v in b.items() if v == {"suppressed": True}}
    again = run_local(queries[0], fresh_audit, "mallory")  # the same curve again adds nothing: released whole
    assert again.status == "released" and table(again) == first, again.reason


def test_a_curves_numbers_at_risk_at_two_times_and_a_count_do_not_give_a_patient(fresh_audit: Settings) -> None:
    """Red team D1: a yearly curve at site-a shows at risk at years y and y+1; their difference minus a count
    of everyone but arm NR leaving in that year is site-a's one NR patient (a triple of two parts of
    different times and a whole result)."""
    ((days,),) = pooled(fresh_audit, "SELECT efs_days FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    year = int(days // 365.25)
    km = Query(study_id=STUDY, statistic="km", endpoint="efs", grid_days=365.25, horizon_days=3652.5, sites=["site-a"])
    window = [Filter(column="arm", op="!=", value="NR"),
              Filter(column="efs_days", op="<", value=round((year + 1) * 365.25))]
    window += [Filter(column="efs_days", op=">=", value=round(year * 365.25))] if year else []
    count = Query(study_id=STUDY, sites=["site-a"], filters=window)

    def at_risk(r: Any) -> dict[int, Any]:
        assert r.status == "released", r.reason
        return {p["year"]: p["at_risk"] for p in r.payload["curves"][0]["combined"]["risk_table"]}

    with switched_off("differencing"):
        curve = at_risk(run_local(km, elsewhere(fresh_audit, "unguarded"), "m"))
        leaving = total(run_local(count, elsewhere(fresh_audit, "unguarded"), "m"))
    assert curve[year] - curve[year + 1] - leaving == 1

    assert at_risk(run_local(km, fresh_audit, "mallory"))[year + 1] == curve[year + 1]
    refused = run_local(count, fresh_audit, "eve")
    assert refused.status == "refused" and "differencing" in refused.reason


def test_a_refusal_does_not_tell_whether_a_patient_lies_between_two_results(fresh_audit: Settings) -> None:
    """Red team D6: a count of everyone but arm NR in a follow-up window, then the same without the filter,
    was refused exactly when site-a's NR patient was in the window (1 between them) and released when not
    (0): a binary search found the patient's month. Now both are refused, with the same reason, also when the
    wider window carries a filter that keeps every row (E1)."""
    ((days,),) = pooled(fresh_audit, "SELECT efs_days FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    def cut(month: int) -> int:
        return round(30.4375 * month)

    holding = next(m for m in range(0, 120, 6) if cut(m) <= days < cut(m + 24))  # a two-year window holding it
    empty = next(m for m in range(0, 120, 6) if cut(m) > days)  # one after it: nobody of arm NR there

    def pair(start: int, settings: Settings, extra: list[Filter] | None = None) -> list[Any]:
        window = [Filter(column="efs_days", op=">=", value=cut(start)),
                  Filter(column="efs_days", op="<", value=cut(start + 24))]
        return [run_local(Query(study_id=STUDY, sites=["site-a"], filters=f), settings, "mallory")
                for f in ([Filter(column="arm", op="!=", value="NR"), *window], [*window, *(extra or [])])]

    with switched_off("differencing"):
        without, every = pair(holding, elsewhere(fresh_audit, "unguarded"))
    assert total(every) - total(without) == 1

    # red team E1: the wider window written with a filter that keeps every row (not nested by its text)
    for n, extra in enumerate(([], [Filter(column="efs_days", op="<", value=cut(300))],
                               [Filter(column="arm", op="in", value=["DD4A", "EE4A", "M", "NR"])])):
        outcomes = []
        for start in (holding, empty):  # each on its own history: only the patient's presence differs
            first, second = pair(start, elsewhere(fresh_audit, f"window-{start}-{n}"), extra)
            assert first.status == "released", first.reason
            outcomes.append((second.status, second.reason.split("(differencing")[-1]))
        assert outcomes[0] == outcomes[1] and outcomes[0][0] == "refused", (extra, outcomes)


def test_two_values_of_one_column_and_a_count_do_not_give_a_group(fresh_audit: Settings) -> None:
    """Red team D4: the proportions of `stage == I` and `stage == III` at site-a show x for each value;
    with a count of those two stages without UNFAVORABLE histology they give site-a's UNFAVORABLE patients
    of stages I and III (a triple of two parts of different splits and a whole result)."""
    queries = [Query(study_id=STUDY, statistic="proportion", column="stage", value=v, sites=["site-a"])
               for v in ("I", "III")]
    count = Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column="histology_risk", op="!=",
                                                                    value="UNFAVORABLE"),
                                                             Filter(column="stage", op="in", value=["I", "III"])])
    ((few,),) = pooled(fresh_audit, "SELECT count(*) FROM unit_patients WHERE site_id = 'site-a' AND "
                                    "histology_risk = 'UNFAVORABLE' AND stage IN ('I', 'III')")
    assert 0 < few < 5

    with switched_off("differencing"):
        first, second, rest = (run_local(q, elsewhere(fresh_audit, "unguarded"), "m") for q in [*queries, count])
    assert hits(first) + hits(second) - total(rest) == few

    assert [run_local(q, fresh_audit, "mallory").status for q in queries] == ["released", "released"]
    refused = run_local(count, fresh_audit, "eve")
    assert refused.status == "refused" and "differencing" in refused.reason


def test_two_numbers_at_risk_and_two_window_counts_do_not_give_a_patient(fresh_audit: Settings) -> None:
    """Red team D2: an all-sites monthly curve's numbers at risk at the months around site-a's NR patient's
    EFS time, a count of the other sites in that window and a count of site-a without arm NR in it: four
    results whose combination is that one patient (the filter family, with the curve's parts whose times
    fall on the window's cut points)."""
    ((days,),) = pooled(fresh_audit, "SELECT efs_days FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    month = 30.4375
    km = Query(study_id=STUDY, statistic="km", endpoint="efs", grid_days=month, horizon_days=3652.5)
    others = sorted({s for (s,) in pooled(fresh_audit, "SELECT DISTINCT site_id FROM patients")} - {"site-a"})

    def at_risk(r: Any) -> dict[int, Any]:
        assert r.status == "released", r.reason
        return {round(p["day"] / month): p["at_risk"] for p in r.payload["curves"][0]["combined"]["points"]}

    with switched_off("differencing"):
        curve = at_risk(run_local(km, elsewhere(fresh_audit, "unguarded"), "m"))
    # months whose declared cut point (whole days) is the curve's time rounded up: the same patients at risk
    shown = sorted(m for m, n in curve.items() if isinstance(n, int) and round(m * month) == math.ceil(m * month))
    for width in (120, 180, 240, 365):  # the narrowest window around the patient that site-a answers
        start = max(m for m in shown if round(m * month) <= days - width)
        end = min(m for m in shown if round(m * month) > days + width)
        window = [Filter(column="efs_days", op=">=", value=round(start * month)),
                  Filter(column="efs_days", op="<", value=round(end * month))]
        counts = [Query(study_id=STUDY, sites=others, filters=window),
                  Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column="arm", op="!=", value="NR"),
                                                                    *window])]
        with switched_off("differencing"):
            rest, site_a = (run_local(q, elsewhere(fresh_audit, f"unguarded-{width}"), "m") for q in counts)
        if site_a.status == "released":
            break
    assert curve[start] - curve[end] - total(rest) - total(site_a) == 1

    assert at_risk(run_local(km, fresh_audit, "mallory"))[end] == curve[end]
    assert run_local(counts[0], fresh_audit, "eve").status == "released"
    refused = run_local(counts[1], fresh_audit, "trent")
    assert refused.status == "refused" and "pin down" in refused.reason


def test_a_proportion_refused_or_not_does_not_tell_a_patients_stage(fresh_audit: Settings) -> None:
    """Red team E3: a count of site-a without arm NR at stage v, then the proportion of stage v at site-a,
    was refused only for the NR patient's own stage (its x one more than the count) and released for the
    others (x equal to the count): the refusal named the stage. Now the outcome is the same for both."""
    ((stage,),) = pooled(fresh_audit, "SELECT stage FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    other = next(s for s in ("I", "II", "III", "IV") if s != stage)

    def pair(value: str, settings: Settings) -> list[Any]:
        count = Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column="arm", op="!=", value="NR"),
                                                                 Filter(column="stage", op="==", value=value)])
        share = Query(study_id=STUDY, statistic="proportion", column="stage", value=value, sites=["site-a"])
        return [run_local(q, settings, "mallory") for q in (count, share)]

    with switched_off("differencing"):
        count, prop = pair(stage, elsewhere(fresh_audit, "unguarded"))
    assert hits(prop) - total(count) == 1

    outcomes = []
    for value in (stage, other):  # each on its own history
        count, prop = pair(value, elsewhere(fresh_audit, f"stage-{value}"))
        assert isinstance(total(count), int)  # both shown, so the comparison is real
        outcomes.append((prop.status, prop.reason.split("(differencing")[-1]))
    assert outcomes[0] == outcomes[1], outcomes


def test_an_earlier_count_minus_two_groups_of_a_new_mean_does_not_give_a_patient(fresh_audit: Settings) -> None:
    """Fifth red team, A2: a count of site-a's arms DD4A, EE4A and NR (with a filter on sex that keeps every row,
    so that it is in no filter family of the next), then the mean age by arm of DD4A and EE4A (a mean shows
    each group's n but no total): the count minus the two n is the NR patient, and n x mean gives their
    age. Triples searched one new cell with two earlier ones; now one of the two may be another new cell."""
    (age,), = pooled(fresh_audit, f"SELECT {AGE} FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    arms, anyone = (Filter(column="arm", op="in", value=["DD4A", "EE4A", "NR"]),
                    Filter(column="sex", op="in", value=["F", "M", "U"]))
    first = Query(study_id=STUDY, sites=["site-a"], filters=[arms, anyone])
    second = Query(study_id=STUDY, sites=["site-a"], statistic="sum", column=AGE, group_by=["arm"],
                   filters=[Filter(column="arm", op="in", value=["DD4A", "EE4A"])])

    def sums(r: Any) -> list[tuple[int, float]]:
        assert r.status == "released", r.reason
        return [(row["combined"]["n"], row["combined"]["sum"]) for row in r.payload["rows"]]

    with switched_off("differencing"):
        unguarded = elsewhere(fresh_audit, "unguarded.jsonl")
        with_sum = run_local(first.model_copy(update={"statistic": "sum", "column": AGE}), unguarded, "mallory")
        n_all, s_all = with_sum.payload["rows"][0]["combined"]["n"], with_sum.payload["rows"][0]["combined"]["sum"]
        parts = sums(run_local(second, unguarded, "eve"))
    assert n_all - sum(n for n, _ in parts) == 1  # the attack: one patient, and their exact age
    assert s_all - sum(s for _, s in parts) == pytest.approx(age, abs=1e-6)

    assert total(run_local(first, fresh_audit, "mallory")) >= 5
    r = run_local(second, fresh_audit, "eve")
    assert r.status == "refused" and "three cells, of this result and earlier ones, add up" in r.reason


def test_a_total_and_three_of_its_four_groups_do_not_give_a_patient(fresh_audit: Settings) -> None:
    """Sixth red team, B1 and B3: the mean age by arm of site-a's patients at stages II-V in arms DD4A, EE4A and
    M, then their mean without the arm filter: the total minus the three groups is the NR patient (n and
    n x mean give their age). Four cells (no triple), filters on different columns (no family by columns),
    nothing hidden (no focus). The same with plain counts, the total asked last. Filter families by rows
    hold them together."""
    (age,), = pooled(fresh_audit, f"SELECT {AGE} FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR' "
                                  "AND stage <> 'I'")
    stages = Filter(column="stage", op="in", value=["II", "III", "IV", "V"])
    groups = Query(study_id=STUDY, sites=["site-a"], statistic="sum", column=AGE, group_by=["arm"],
                   filters=[stages, Filter(column="arm", op="in", value=["DD4A", "EE4A", "M"])])
    whole = Query(study_id=STUDY, sites=["site-a"], statistic="sum", column=AGE, filters=[stages])

    def n_and_sum(r: Any) -> tuple[int, float]:
        assert r.status == "released", r.reason
        cells = [row["combined"] for row in r.payload["rows"]]
        return sum(c["n"] for c in cells), sum(c["sum"] for c in cells)

    with switched_off("differencing"):
        unguarded = elsewhere(fresh_audit, "unguarded.jsonl")
        (n3, s3), (n, s) = n_and_sum(run_local(groups, unguarded, "eve")), n_and_sum(run_local(whole, unguarded, "m"))
    assert n - n3 == 1 and s - s3 == pytest.approx(age, abs=1e-6)  # the attack
    assert run_local(groups, fresh_audit, "eve").status == "released"
    r = run_local(whole, fresh_audit, "mallory")
    assert r.status == "refused" and "possibly none" in r.reason

    # B3: three counts by arm, the total last
    again = elsewhere(fresh_audit, "b3.jsonl")
    for arm in ("DD4A", "EE4A", "M"):
        assert run_local(Query(study_id=STUDY, sites=["site-a"], filters=[stages, Filter(column="arm", op="==",
                                                                                           value=arm)]),
                         again, "eve").status == "released"
    assert run_local(Query(study_id=STUDY, sites=["site-a"], filters=[stages]), again, "mallory").status == "refused"


def test_a_variance_records_the_cells_it_hid(fresh_audit: Settings) -> None:
    """Seventh red team, V1: the variance of age by arm at site-a hides NR (one patient) and, as its complement,
    another arm; the history recorded no hidden cell for a variance, so the mean of everyone and the mean of
    the complement arm passed, and everyone minus the shown arms minus the complement was the NR patient's
    exact age (and EFS, OS: any column). Every statistic of rows now records what it hid."""
    (age,), = pooled(fresh_audit, f"SELECT {AGE} FROM unit_patients WHERE site_id = 'site-a' AND arm = 'NR'")
    grouped = Query(study_id=STUDY, sites=["site-a"], statistic="variance", column=AGE, group_by=["arm"])
    everyone = Query(study_id=STUDY, sites=["site-a"], statistic="mean", column=AGE)

    def n_sum(cell: dict[str, Any]) -> tuple[int, float]:
        return cell["n"], cell["n"] * cell["mean"]

    def attack(settings: Settings) -> tuple[list[Any], tuple[int, float] | None]:
        first = run_local(grouped, settings, "mallory")
        hidden = [row["group"][0] for row in first.payload["rows"]
                  if row["combined"] == {"suppressed": True} and row["group"][0] != "NR"]
        rest = [run_local(everyone, settings, "mallory"),
                run_local(everyone.model_copy(update={"filters": [Filter(column="arm", op="==", value=hidden[0])]}),
                          settings, "eve")]
        if any(r.status != "released" for r in rest):
            return [first, *rest], None
        n, s = n_sum(rest[0].payload["rows"][0]["combined"])
        for cell in [row["combined"] for row in first.payload["rows"]] + [rest[1].payload["rows"][0]["combined"]]:
            if "n" in cell:
                n, s = n - cell["n"], s - cell["n"] * cell["mean"]
        return [first, *rest], (n, s)

    with switched_off("differencing"):
        _, got = attack(elsewhere(fresh_audit, "unguarded.jsonl"))
    assert got is not None and got[0] == 1 and got[1] == pytest.approx(age, abs=1e-6)  # the attack
    results, got = attack(fresh_audit)
    assert results[0].status == "released" and got is None
    assert "pin down a hidden cell" in next(r.reason for r in results if r.status == "refused")


def test_a_union_of_two_patients_no_single_cell_shows_is_not_derivable(fresh_audit: Settings) -> None:
    """Seventh red team, U1: five means of age at site-a: stage in [IV, V]; arm DD4A; arm EE4A; arm M at stages
    I-IV; everyone. Everyone minus the three groups is NR and the arm-M patients at stage V (2 here); the
    first result splits them into two classes, neither derivable alone, so the span check (single classes)
    let everyone through. Unions of a few small classes are now searched too."""
    (few, ages), = pooled(fresh_audit, f"SELECT count(*), sum({AGE}) FROM unit_patients WHERE site_id = 'site-a' "
                                       "AND (arm = 'NR' OR (arm = 'M' AND stage = 'V'))")
    assert 1 < few < 5
    filters = [[Filter(column="stage", op="in", value=["IV", "V"])], [Filter(column="arm", op="==", value="DD4A")],
               [Filter(column="arm", op="==", value="EE4A")],
               [Filter(column="arm", op="==", value="M"),
                Filter(column="stage", op="in", value=["I", "II", "III", "IV"])],
               []]
    queries = [Query(study_id=STUDY, sites=["site-a"], statistic="sum", column=AGE, filters=f) for f in filters]

    def n_sum(r: Any) -> tuple[int, float]:
        assert r.status == "released", r.reason
        return r.payload["rows"][0]["combined"]["n"], r.payload["rows"][0]["combined"]["sum"]

    with switched_off("differencing"):
        unguarded = [n_sum(run_local(q, elsewhere(fresh_audit, "unguarded.jsonl"), "mallory")) for q in queries]
    n = unguarded[4][0] - sum(x[0] for x in unguarded[1:4])
    s = unguarded[4][1] - sum(x[1] for x in unguarded[1:4])
    assert (n, s) == (few, pytest.approx(ages, abs=1e-6))  # the attack: two patients' count and summed age

    results = [run_local(q, fresh_audit, "mallory") for q in queries]
    assert [r.status for r in results[:4]] == ["released"] * 4
    assert results[4].status == "refused" and "a set of patients no single cell shows" in results[4].reason
