"""One differencing history for every analyst, site selection and version (issue 8, items 3, 4 and 5).
Each attack first succeeds with the differencing guard switched off, on a service of its own."""

from __future__ import annotations

import datetime as dt
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
    assert refused.status == "refused" and "q+a-b" in refused.reason
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
