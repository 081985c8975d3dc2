"""The report links Great Expectations' Data Docs of the same run: every table's suite with its results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from federation.config import SiteConfig
from tests.validation.helpers import validate_folder


def test_report_links_data_docs_of_the_run(broken_exports: Path, tmp_path: Path) -> None:
    site = SiteConfig.from_yaml(broken_exports / "sites" / "site-b.yaml")
    report = validate_folder(broken_exports / "site-b" / "PONC-NB-02", site, study="PONC-NB-02", parts=2)
    paths = report.write(tmp_path / "report")
    html = paths["html"].read_text(encoding="utf-8")
    link = re.search(r"href='(data-docs/index\.html)'", html)
    assert link and (tmp_path / "report" / link.group(1)).is_file()
    pages = sorted((tmp_path / "report" / "data-docs" / "validations").rglob("*.html"))
    # one page per table and part; each carries GX's verdict; a broken table's page says Failed with counts
    assert len(pages) == 2 * len(report.tables)
    patients = [p for p in pages if p.name.startswith("patients.csv")]
    text = " ".join(p.read_text(encoding="utf-8") for p in patients)
    assert "Failed" in text and "unexpected values found" in text
    index = (tmp_path / "report" / "data-docs" / "index.html").read_text(encoding="utf-8")
    assert all(p.name in index for p in pages)


def test_data_docs_in_a_relative_report_folder(broken_exports: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # `federation validate --report-dir reports` gives a relative folder; GX wants an absolute one
    site = SiteConfig.from_yaml(broken_exports / "sites" / "site-b.yaml")
    report = validate_folder(broken_exports / "site-b" / "PONC-NB-02", site, study="PONC-NB-02")
    monkeypatch.chdir(tmp_path)
    paths = report.write(Path("reports"))
    assert (tmp_path / "reports" / "data-docs" / "index.html").is_file() and "data_docs" in paths
    assert "data-docs/index.html" in paths["html"].read_text(encoding="utf-8")
