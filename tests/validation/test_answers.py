"""Validation finds every injected error at the right file, line and column, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federation.config import SiteConfig
from federation.synth import ERROR_KINDS, NEEDS, SITE_STYLES
from tests.validation.helpers import cells, validate_folder

SITES = [sid for sid, _, _ in SITE_STYLES]


@pytest.mark.parametrize("site_id", SITES)
def test_clean_export_has_no_findings(clean_exports: Path, site_id: str) -> None:
    site = SiteConfig.from_yaml(clean_exports / "sites" / f"{site_id}.yaml")
    report = validate_folder(clean_exports / site_id / "PONC-WT-01", site)
    assert report.findings == []
    assert report.status == "valid" and report.exit_code == 0
    assert {t.table for t in report.tables} == {"patients", "diagnoses", "treatments", "adverse_events", "outcomes"}
    assert all(t.rows > 0 for t in report.tables)


@pytest.mark.parametrize("site_id", SITES)
def test_report_matches_answer_file(broken_exports: Path, site_id: str) -> None:
    answers = json.loads((broken_exports / "answers.json").read_text())["sites"][site_id]["expected"]
    expected = {(e["file"], e["line"], e["column"], e["rule"]) for e in answers}
    assert {e["kind"] for e in answers} == set(ERROR_KINDS) - set(NEEDS), "every v1 error kind was injected"
    site = SiteConfig.from_yaml(broken_exports / "sites" / f"{site_id}.yaml")
    report = validate_folder(broken_exports / site_id / "PONC-NB-02", site, study="PONC-NB-02")
    got = cells(report)
    assert expected - got == set(), "injected errors the report missed"
    assert got - expected == set(), "findings that were not injected (false alarms)"
    assert report.status == "invalid" and report.exit_code == 1


def test_findings_carry_the_sites_raw_value_and_hint(broken_exports: Path) -> None:
    site = SiteConfig.from_yaml(broken_exports / "sites" / "site-b.yaml")
    report = validate_folder(broken_exports / "site-b" / "PONC-NB-02", site, study="PONC-NB-02")
    by_rule = {f.rule: f for f in report.findings}
    # site-b writes dates as DD/MM/YYYY and renames birth_date to date_naissance
    impossible = by_rule["type_date"]
    assert impossible.column == "date_naissance" and impossible.value == "31/02/2020"
    assert "date" in impossible.message and impossible.hint
    # site-b's own vital status code is shown in the cross-table detail
    assert "statut_vital = ALIVE" in by_rule["grade5_implies_dead"].detail
    assert by_rule["spreadsheet_mangled"].value == "1.23E+05"
    for f in report.findings:
        assert f.message and f.hint


@pytest.mark.parametrize("site_id", SITES)
def test_v2_report_matches_answer_file(broken_exports_v2: Path, site_id: str) -> None:
    # dictionary v2: v1's errors and those of the new tables (a gene x alteration pair the code list does not
    # allow, a hearing late effect without its ototoxicity grade, a late effect after the last contact, a
    # quality-of-life score above 100), in every site's own format
    answers = json.loads((broken_exports_v2 / "answers.json").read_text())["sites"][site_id]["expected"]
    expected = {(e["file"], e["line"], e["column"], e["rule"]) for e in answers}
    assert {e["kind"] for e in answers} == set(ERROR_KINDS), "every error kind was injected"
    site = SiteConfig.from_yaml(broken_exports_v2 / "sites" / f"{site_id}.yaml")
    report = validate_folder(broken_exports_v2 / site_id / "PONC-NB-03", site, study="PONC-NB-03")
    got = cells(report)
    assert expected - got == set(), "injected errors the report missed"
    assert got - expected == set(), "findings that were not injected (false alarms)"
    assert {t.table for t in report.tables} >= {"biomarkers", "late_effects", "quality_of_life"}
    pair = next(f for f in report.findings if f.rule == "gene_alteration_allowed")
    assert pair.file == "biomarkers.csv" and pair.value == "FUSION" and "gene_alterations.csv" in pair.hint
