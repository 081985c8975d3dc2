"""Disclosure control, tested by trying to break it. Each attack is first shown to work with its guard
switched off, so each test fails if its guard is removed."""

from __future__ import annotations

from typing import Any

import numpy as np

from federation.query import Filter, Query, run_local
from federation.query.central import disclosure as dc
from federation.query.guard import switched_off
from federation.settings import Settings
from tests.federated import STUDY, pooled


def _value(v: Any) -> int | None:
    return None if isinstance(v, dict) else int(v)


def _young_site(settings: Settings) -> tuple[str, int]:
    """site-a has exactly two patients aged under 1 (see conftest): a tiny subset to isolate."""
    n = pooled(settings, "SELECT count(*) FROM patients WHERE age_group = '<1' AND site_id = 'site-a'")[0][0]
    assert n == 2
    return "site-a", n


# --- differencing: two queries that differ by a few patients ---------------------------------------------
def test_filter_excluding_a_few_patients_is_refused(fresh_audit: Settings) -> None:
    site, n_young = _young_site(fresh_audit)
    everyone = Query(study_id=STUDY, sites=[site])
    all_but_infants = Query(study_id=STUDY, sites=[site], filters=[Filter(column="age_group", op="!=", value="<1")])

    # without the subset guards (service and site) the attack works: the difference is the number of infants
    with switched_off("subset", "site_subset", "differencing"):
        a = run_local(everyone, fresh_audit, "mallory")
        b = run_local(all_but_infants, fresh_audit, "mallory")
    assert _value(a.payload["total"]["combined"]) - _value(b.payload["total"]["combined"]) == n_young  # type: ignore[operator]

    run_local(everyone, fresh_audit, "eve")
    refused = run_local(all_but_infants, fresh_audit, "eve")
    assert refused.status == "refused"
    assert "takes no part" in refused.reason and "leaves fewer than 5 out" in refused.reason and refused.suggestion


def test_filter_selecting_a_tiny_subset_is_refused(fresh_audit: Settings) -> None:
    site, n_young = _young_site(fresh_audit)
    infants = Query(study_id=STUDY, sites=[site], filters=[Filter(column="age_group", op="==", value="<1")],
                    statistic="mean", column="os_days")
    with switched_off("subset", "site_subset"):
        leaked = run_local(infants, fresh_audit, "mallory")
    # the count is suppressed, but without the guard the analyst learns that the subset exists and is small
    assert leaked.status == "released"
    refused = run_local(infants, fresh_audit, "eve")
    assert refused.status == "refused" and "keeps fewer than 5 rows" in refused.reason
    del n_young


# --- recovering a suppressed cell from margins and per-site values -----------------------------------------
def _attack_cell(result: Any) -> tuple[int, int]:
    """site-a's NR cell: index in the released table."""
    sites = result.sites
    rows = [r["group"][0] for r in result.payload["rows"]]
    return sites.index("site-a"), rows.index("NR")


def _recover_by_subtraction(result: Any, site: str) -> list[int]:
    """What an analyst can compute for site-a's NR count from released numbers."""
    p = result.payload
    guesses = []
    nr = next(r for r in p["rows"] if r["group"] == ["NR"])
    # 1. the site's total minus its other cells
    others = [r["per_site"][site] for r in p["rows"] if r["group"] != ["NR"]]
    total = p["total"]["per_site"][site]
    if all(_value(v) is not None for v in [*others, total]):
        guesses.append(_value(total) - sum(_value(v) for v in others))  # type: ignore[operator,misc]
    # 2. the combined cell minus the other sites' cells
    rest = [v for s, v in nr["per_site"].items() if s != site]
    if all(_value(v) is not None for v in [*rest, nr["combined"]]):
        guesses.append(_value(nr["combined"]) - sum(_value(v) for v in rest))  # type: ignore[operator,misc]
    return guesses


def test_suppressed_cell_cannot_be_recovered_from_margins_or_other_sites(fresh_audit: Settings) -> None:
    q = Query(study_id=STUDY, group_by=["arm"])
    # without complementary suppression, site-a's single NR patient is recovered by subtraction
    with switched_off("complementary_suppression"):
        naive = run_local(q, fresh_audit, "mallory")
    nr = next(r for r in naive.payload["rows"] if r["group"] == ["NR"])
    assert nr["per_site"]["site-a"] == {"suppressed": True}
    assert 1 in _recover_by_subtraction(naive, "site-a")

    safe = run_local(q, fresh_audit, "eve")
    assert _recover_by_subtraction(safe, "site-a") == []
    # and no linear combination of released numbers pins it down: its feasible range is at least k wide
    names = safe.sites
    rows = [r["group"] for r in safe.payload["rows"]]
    values = np.full((len(names) + 1, len(rows) + 1, 1), np.nan)
    for j, r in enumerate(safe.payload["rows"]):
        for i, s in enumerate(names):
            values[i, j, 0] = np.nan if _value(r["per_site"][s]) is None else _value(r["per_site"][s])
        values[len(names), j, 0] = np.nan if _value(r["combined"]) is None else _value(r["combined"])
    for i, s in enumerate(names):
        t = safe.payload["total"]["per_site"][s]
        values[i, len(rows), 0] = np.nan if _value(t) is None else _value(t)
    values[len(names), len(rows), 0] = _value(safe.payload["total"]["combined"])
    released = dc.Released(values=values, primary=np.zeros(values.shape, bool),
                           complementary=np.zeros(values.shape, bool))
    lo, hi = dc.range_of(released, (len(names), len(rows), 1), (names.index("site-a"), rows.index(["NR"]), 0))
    assert hi - lo >= 5


def test_lp_audit_catches_what_line_rules_miss() -> None:
    # two small cells in one row and one column: "two hidden per line" holds, yet both are determined
    cells = np.array([[[1, 1, 20], [1, 30, 40], [25, 35, 45]]], dtype=float)
    weak_release = dc.Released(values=np.where(dc.extend(cells) < 5, np.nan, dc.extend(cells)),
                               primary=dc.extend(cells) < 5, complementary=np.zeros((2, 4, 4), bool))
    lo, hi = dc.range_of(weak_release, cells.shape, (0, 0, 0))
    assert hi - lo < 5  # the naive release leaks
    safe = dc.suppress(cells, [5], 5)
    for idx in zip(*np.nonzero(safe.primary), strict=True):
        lo, hi = dc.range_of(safe, cells.shape, tuple(int(i) for i in idx))  # type: ignore[arg-type]
        assert hi - lo >= 5


def test_km_hides_small_risk_sets(federated: Settings) -> None:
    r = run_local(Query(study_id=STUDY, statistic="km", endpoint="os", group_by=["arm"]), federated, "t")
    for curve in r.payload["curves"]:
        for pt in curve["combined"]["points"]:
            n = pt["at_risk"]
            assert isinstance(n, dict) or n >= 5
        for row in curve["combined"]["risk_table"]:
            assert isinstance(row["at_risk"], dict) or row["at_risk"] == 0 or row["at_risk"] >= 5
    nr = next(c for c in r.payload["curves"] if c["group"] == ["NR"])
    # site-a has one NR patient: its curve is withheld (the count by arm hides that cell)
    assert nr["per_site"]["site-a"] == {"points": [], "withheld": True}
    # ... and every other site's start, and the combined one, hide their numbers: combined minus the others (or
    # all sites minus all but site-a, or site-a's own insider) would give site-a's one patient
    assert nr["combined"]["points"][0]["at_risk"] == {"suppressed": True}
    assert nr["combined"]["risk_table"][0]["at_risk"] == {"suppressed": True}
    assert all(c.get("withheld") or c["points"][0]["at_risk"] == {"suppressed": True} for c in nr["per_site"].values())
    # at every released point, sites' numbers at risk are all shown or all hidden (no subtraction possible)
    for curve in r.payload["curves"]:
        site_points = [c["points"] for c in curve["per_site"].values() if not c.get("withheld")]
        assert len({len(pts) for pts in site_points}) <= 1
        for i in range(len(site_points[0]) if site_points else 0):
            hidden = {isinstance(pts[i]["at_risk"], dict) for pts in site_points}
            assert len(hidden) == 1, (curve["group"], i)


def test_no_raw_minimum_or_maximum_and_no_extreme_quantile(federated: Settings) -> None:
    r = run_local(Query(study_id=STUDY, statistic="mean", column="age_at_diagnosis_years"), federated, "t")
    text = str(r.payload)
    lo, hi = pooled(federated, "SELECT min(age_at_diagnosis_years), max(age_at_diagnosis_years) FROM patients")[0]
    assert "min" not in r.payload["rows"][0]["combined"] and str(lo) not in text and str(hi) not in text
    refused = run_local(Query(study_id=STUDY, statistic="quantiles", column="age_at_diagnosis_years", probs=[1.0]),
                        federated, "t")
    assert refused.status == "refused" and "extreme quantiles" in refused.reason


def test_identifiers_and_free_text_are_never_queryable(federated: Settings) -> None:
    for q in (Query(study_id=STUDY, group_by=["pid"]), Query(study_id=STUDY, table="adverse_events",
                                                              group_by=["ae_term"]),
              Query(study_id=STUDY, filters=[Filter(column="upload_id", op="==", value="x")])):
        r = run_local(q, federated, "t")
        assert r.status == "refused" and "never queryable" in r.reason


def test_site_below_minimum_rows_does_not_take_part(federated: Settings, tmp_path: Any) -> None:
    import yaml

    strict = tmp_path / "policy.yaml"
    data = yaml.safe_load((federated.query_policy).read_text())
    data["disclosure"]["min_site_rows"] = 100
    strict.write_text(yaml.safe_dump(data))
    from federation.query.policy import load_query_policy

    load_query_policy.cache_clear()
    r = run_local(Query(study_id=STUDY), federated.model_copy(update={"query_policy": strict}), "t")
    sizes = dict(pooled(federated, "SELECT site_id, count(*) FROM patients GROUP BY 1"))
    assert set(r.excluded) == {s for s, n in sizes.items() if n < 100}
    assert r.payload["total"]["combined"] == sum(n for n in sizes.values() if n >= 100)


def test_per_site_differences_withhold_per_site_values(fresh_audit: Settings) -> None:
    # "not F" and "M" differ by the patients of unknown sex: many in all sites together, a few at some sites
    unknown = dict(pooled(fresh_audit, "SELECT site_id, count(*) FROM patients WHERE sex = 'U' GROUP BY 1"))
    few = sorted(s for s, n in unknown.items() if 0 < n < 5)
    assert few and sum(unknown.values()) >= 5
    not_f = Query(study_id=STUDY, filters=[Filter(column="sex", op="!=", value="F")])
    male = Query(study_id=STUDY, filters=[Filter(column="sex", op="==", value="M")])
    unguarded = fresh_audit.model_copy(update={"audit_log": fresh_audit.audit_log.with_name("unguarded.jsonl")})
    with switched_off("differencing"):
        a, b = run_local(not_f, unguarded, "mallory"), run_local(male, unguarded, "mallory")
    site = few[0]
    assert a.payload["total"]["per_site"][site] - b.payload["total"]["per_site"][site] == unknown[site]

    first, second = run_local(not_f, fresh_audit, "eve"), run_local(male, fresh_audit, "eve")
    assert first.status == second.status == "released", second.reason
    assert all(v == {"suppressed": True} for v in second.payload["total"]["per_site"].values())
    note = next(n for n in second.notes if "withheld" in n)
    assert f"your earlier result #{first.audit_id}" in note  # it says which earlier query it matched
    truth = pooled(fresh_audit, "SELECT count(*) FROM patients WHERE sex = 'M' AND site_id IN "
                   f"({', '.join(repr(s) for s in second.sites)})")[0][0]
    assert second.payload["total"]["combined"] == truth  # the combined value stays exact
    # one history for everyone: another analyst (a colluder, or eve under another name) gets the same
    walter = run_local(male, fresh_audit, "walter")
    assert walter.status == "released", walter.reason
    assert all(v == {"suppressed": True} for v in walter.payload["total"]["per_site"].values())
    assert any("another analyst" in n for n in walter.notes)
    # while on a service with no earlier result, the same query keeps its per-site values
    elsewhere = fresh_audit.model_copy(update={"audit_log": fresh_audit.audit_log.with_name("other.jsonl")})
    fresh = run_local(male, elsewhere, "walter")
    assert all(isinstance(v, int) for v in fresh.payload["total"]["per_site"].values())


def test_a_site_can_only_make_disclosure_stricter(federated: Settings, tmp_path: Any) -> None:
    import shutil

    import yaml

    sites = tmp_path / "sites"
    shutil.copytree(federated.sites_dir, sites)
    for site, min_cell in (("site-c", 50), ("site-d", 2)):  # site-d asks for a weaker threshold: ignored
        data = yaml.safe_load((sites / f"{site}.yaml").read_text())
        data["disclosure"] = {"min_cell": min_cell}
        (sites / f"{site}.yaml").write_text(yaml.safe_dump(data))
    settings = federated.model_copy(update={"sites_dir": sites, "audit_log": tmp_path / "audit.jsonl"})
    r = run_local(Query(study_id=STUDY, group_by=["arm"]), settings, "t")
    truth = {(s, a): n for s, a, n in pooled(settings, "SELECT site_id, arm, count(*) FROM patients GROUP BY ALL")}
    for row in r.payload["rows"]:
        arm = row["group"][0]
        c = truth.get(("site-c", arm), 0)
        if 0 < c < 50:
            assert row["per_site"]["site-c"] == {"suppressed": True}
        d = truth.get(("site-d", arm), 0)
        if 0 < d < 5:
            assert row["per_site"]["site-d"] == {"suppressed": True}
        # the combined table uses the strictest threshold of the sites taking part
        combined = row["combined"]
        assert isinstance(combined, dict) or combined >= 50
    assert any(0 < truth.get(("site-c", row["group"][0]), 0) < 50 for row in r.payload["rows"])


def test_a_filter_value_of_the_wrong_type_cannot_make_a_site_quote_a_row(fresh_audit: Settings) -> None:
    import duckdb

    from federation.query.site.data import open_site

    codes = {c for (c,) in pooled(fresh_audit, "SELECT DISTINCT race FROM patients WHERE race IS NOT NULL")}
    q = Query(study_id=STUDY, sites=["site-a"], filters=[Filter(column="race", op="==", value=0)])
    # the channel: comparing a text column with a number makes DuckDB quote a value it could not convert
    data = open_site(fresh_audit.storage, "site-a", STUDY)
    try:
        data.sql("SELECT count(*) FROM unit_patients WHERE race = ?", [0])
        raise AssertionError("DuckDB converted every race code to a number")
    except duckdb.Error as exc:
        assert any(c in str(exc) for c in codes)
    finally:
        data.close()
    # with the type guard off, the site's refusal still carries no error text (only the kind of error)
    with switched_off("comparison_type"):
        leaked = run_local(q, fresh_audit, "mallory")
    assert leaked.status == "refused" and "the node's log has the details" in leaked.reason
    assert not any(c in leaked.reason for c in codes)
    # with it on, the query is refused before any site is asked, saying what to compare with
    refused = run_local(q, fresh_audit, "eve")
    assert refused.status == "refused" and "race is string: compare it with text, not 0" in refused.reason


def test_a_model_on_a_category_of_one_patient_is_refused_by_the_site(fresh_audit: Settings) -> None:
    # site-a has a single NR patient: a coefficient for arm = NR would be fitted on that one patient there
    q = Query(study_id=STUDY, statistic="logistic", outcome=Filter(column="efs_event", op="==", value=True),
              covariates=["arm"], sites=["site-a"])
    with switched_off("site_model"):
        leaked = run_local(q, fresh_audit, "mallory")
    assert leaked.status in ("released", "failed")  # fitted (or diverged) on the single patient
    refused = run_local(q, fresh_audit, "eve")
    assert refused.status == "refused" and "outcome x category cell here" in refused.reason
    assert "possibly none" in refused.reason  # the same text for an empty cell as for a small one


def test_a_site_below_its_minimum_rows_takes_no_part_only_with_the_site_guard_on(federated: Settings,
                                                                                 tmp_path: Any) -> None:
    import shutil

    import yaml

    sites = tmp_path / "sites"
    shutil.copytree(federated.sites_dir, sites)
    data = yaml.safe_load((sites / "site-a.yaml").read_text())
    data["disclosure"] = {"min_site_rows": 100_000}
    (sites / "site-a.yaml").write_text(yaml.safe_dump(data))
    settings = federated.model_copy(update={"sites_dir": sites, "audit_log": tmp_path / "audit.jsonl"})
    with switched_off("site_rows"):
        assert "site-a" in run_local(Query(study_id=STUDY), settings, "t").versions
    r = run_local(Query(study_id=STUDY), settings, "t")
    assert "site-a" not in r.versions and "does not take part" in r.excluded["site-a"]


def test_an_insider_cannot_use_their_own_hidden_cell_to_undo_its_complement() -> None:
    # found by the span check on the analyst guide: two sites' small cells of one group were each other's
    # complement in the combined row; each site's insider knows its own and got the other's
    cells = np.array([[[2], [30], [30]], [[3], [30], [30]], [[30], [30], [30]]], dtype=float)
    with switched_off("site_insider"):
        weak = dc.suppress(cells, [5, 5, 5], 5)
    lo, hi = dc.range_of(weak, cells.shape, (0, 0, 0), insider=(1, cells[1]))
    assert hi - lo < 5  # site-b's insider pins site-a's two patients down
    assert weak.values[0, 0, 0] != weak.values[0, 0, 0] and weak.values[1, 0, 0] != weak.values[1, 0, 0]
    safe = dc.suppress(cells, [5, 5, 5], 5)
    for site in range(3):
        for small in ((0, 0, 0), (1, 0, 0)):
            if small[0] != site:
                lo, hi = dc.range_of(safe, cells.shape, small, insider=(site, cells[site]))
                assert hi - lo >= 5, (site, small, lo, hi)
