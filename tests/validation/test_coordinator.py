"""A site coordinator's hand-made export (issue 9): a file as it comes out of Excel or a hospital system, at
the French site (site-b: `;`, cp1252, DD/MM/YYYY, its own codes `vivant`/`décédé`). Each test says what the
coordinator did and what they must see."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from federation.config import SiteConfig
from tests.validation.helpers import validate_folder

STUDY = "PONC-WT-01"


@pytest.fixture()
def site_b(clean_exports: Path) -> SiteConfig:
    return SiteConfig.from_yaml(clean_exports / "sites" / "site-b.yaml")


@pytest.fixture()
def french(clean_exports: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    shutil.copytree(clean_exports / "site-b" / STUDY, folder)
    return folder


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="cp1252").splitlines()


def _write(path: Path, lines: list[str], encoding: str = "cp1252") -> None:
    path.write_text("\n".join(lines) + "\n", encoding=encoding)


def test_blank_and_spreadsheet_empty_rows_are_skipped_with_one_note(french: Path, site_b: SiteConfig) -> None:
    """A blank line in the middle and two rows of nothing but delimiters at the end (Excel writes them) are
    not patients: no error comes from them, and one note says they were skipped."""
    path = french / "patients.csv"
    lines = _lines(path)
    width = lines[0].count(";")
    _write(path, [*lines[:3], "", *lines[3:], ";" * width, " ; " * 2 + ";" * (width - 2)])
    report = validate_folder(french, site_b)
    assert report.exit_code == 0, [(f.line, f.message) for f in report.errors]
    notes = [f for f in report.findings if f.rule == "blank_rows"]
    assert len(notes) == 1 and notes[0].severity == "warning"
    assert "3 empty rows" in notes[0].message and "4" in notes[0].message  # the blank line is line 4
    assert next(t.rows for t in report.tables if t.table == "patients") == len(lines) - 1


def test_local_codes_match_whatever_their_case_and_spaces(french: Path, site_b: SiteConfig) -> None:
    """The site maps `vivant` to ALIVE; a hand-typed `Vivant` and ` VIVANT ` are the same code."""
    path = french / "outcomes.csv"
    lines = _lines(path)
    header = lines[0].split(";")
    status = header.index("statut_vital")
    alive = [i for i, line in enumerate(lines[1:], start=1) if line.split(";")[status] == "vivant"]
    for i, variant in zip(alive[:2], ["Vivant", " VIVANT "], strict=True):
        fields = lines[i].split(";")
        fields[status] = variant
        lines[i] = ";".join(fields)
    _write(path, lines)
    report = validate_folder(french, site_b)
    assert report.exit_code == 0, [(f.line, f.column, f.value, f.message) for f in report.errors]


def test_a_utf8_file_at_a_cp1252_site_is_an_encoding_problem(french: Path, site_b: SiteConfig) -> None:
    """Saved as 'CSV UTF-8' at a site that declares cp1252: `décédé` would read `dÃ©cÃ©dÃ©`, and every such
    code would be reported as unknown. It is one encoding problem instead (exit 2) that names UTF-8."""
    path = french / "outcomes.csv"
    text = path.read_text(encoding="cp1252")
    assert "décédé" in text
    path.write_text(text, encoding="utf-8")
    report = validate_folder(french, site_b)
    assert report.exit_code == 2 and report.status == "unusable"
    (problem,) = [f for f in report.unusable if f.file == "outcomes.csv"]
    assert "UTF-8" in problem.message and "cp1252" in problem.message and "dÃ©cÃ©dÃ©" in problem.message
    assert "utf-8" in problem.hint
    assert not [f for f in report.findings if f.rule.startswith("code")]  # no flood of unknown codes
