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


def _site(clean_exports: Path, site: str) -> SiteConfig:
    return SiteConfig.from_yaml(clean_exports / "sites" / f"{site}.yaml")


def _copy(clean_exports: Path, site: str, to: Path) -> Path:
    shutil.copytree(clean_exports / site / STUDY, to)
    return to


@pytest.fixture()
def site_b(clean_exports: Path) -> SiteConfig:
    return _site(clean_exports, "site-b")


@pytest.fixture()
def french(clean_exports: Path, tmp_path: Path) -> Path:
    """site-b's export: `;`, cp1252, DD/MM/YYYY, its own codes."""
    return _copy(clean_exports, "site-b", tmp_path / "export")


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


@pytest.fixture()
def site_a(clean_exports: Path) -> SiteConfig:
    return _site(clean_exports, "site-a")


@pytest.fixture()
def plain(clean_exports: Path, tmp_path: Path) -> Path:
    """site-a's export: `,`, UTF-8, YYYY-MM-DD."""
    return _copy(clean_exports, "site-a", tmp_path / "plain")


def _set(path: Path, column: str, values: dict[int, str], delimiter: str = ",", encoding: str = "utf-8") -> None:
    """Write `values` (data row index -> value) into `column` of a CSV export file."""
    lines = path.read_text(encoding=encoding).splitlines()
    at = lines[0].split(delimiter).index(column)
    for i, value in values.items():
        fields = lines[i + 1].split(delimiter)
        fields[at] = value
        lines[i + 1] = delimiter.join(fields)
    path.write_text("\n".join(lines) + "\n", encoding=encoding)


def test_a_bad_date_says_the_declared_format_with_an_example_and_what_is_wrong(plain: Path, site_a: SiteConfig
                                                                                ) -> None:
    """Three hand-typed birth dates at a YYYY-MM-DD site: a month 13, a 29 February of a common year, and a
    date written the European way. Each is reported with the declared format, an example, and why."""
    _set(plain / "patients.csv", "birth_date", {0: "2021-13-01", 1: "2019-02-29", 2: "14/03/2019"})
    report = validate_folder(plain, site_a)
    dates = {f.value: f for f in report.findings if f.rule == "type_date"}
    assert set(dates) == {"2021-13-01", "2019-02-29", "14/03/2019"}
    assert all("declared format YYYY-MM-DD (e.g. 2019-03-14)" in f.message for f in dates.values())
    assert "no month 13" in dates["2021-13-01"].detail
    assert "2019 is not a leap year" in dates["2019-02-29"].detail
    assert "written like DD/MM/YYYY" in dates["14/03/2019"].detail


def test_every_failing_cell_has_a_detail_and_a_wrong_site_id_names_the_expected_one(
        plain: Path, site_a: SiteConfig, tmp_path: Path) -> None:
    _set(plain / "patients.csv", "site_id", {0: "site-b"})
    _set(plain / "patients.csv", "sex", {1: "X"})
    _set(plain / "patients.csv", "birth_date", {2: "2019-02-30"})
    report = validate_folder(plain, site_a)
    (wrong,) = [f for f in report.findings if f.rule == "site_id"]
    assert "(site-a)" in wrong.message and wrong.detail == "expected site-a"
    report.write(tmp_path / "report")
    import csv
    with (tmp_path / "report" / "failures.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["detail"] for r in rows if r["severity"] == "error"), rows


def test_files_not_checked_because_another_is_unreadable_are_not_shown_as_passing(plain: Path, site_a: SiteConfig
                                                                                   ) -> None:
    """diagnoses.csv saved with ';' at a ',' site cannot be read; patients.csv holds a bad date but was never
    validated: it must say NOT CHECKED, not PASS with 0 errors."""
    path = plain / "diagnoses.csv"
    path.write_text(path.read_text(encoding="utf-8").replace(",", ";"), encoding="utf-8")
    _set(plain / "patients.csv", "birth_date", {0: "2021-13-01"})
    report = validate_folder(plain, site_a)
    assert report.exit_code == 2
    status = {t.file: t.status for t in report.tables}
    assert status["diagnoses.csv"] == "unreadable"
    assert status["patients.csv"] == "not checked" and "pass" not in status.values()
    text = report.summary_text()
    assert "PASS" not in text and "NOT CHECKED" in text and "rules not run" in text


def test_the_summary_shows_every_files_problems(plain: Path, site_a: SiteConfig) -> None:
    """Many problems in one file do not push another file's one problem out of the terminal summary."""
    _set(plain / "patients.csv", "birth_date", {0: "2021-13-01"})
    n = len((plain / "adverse_events.csv").read_text(encoding="utf-8").splitlines()) - 1
    _set(plain / "adverse_events.csv", "grade", {i: "9" for i in range(min(n, 40))})
    _set(plain / "adverse_events.csv", "serious", {i: "maybe" for i in range(min(n, 40))})
    report = validate_folder(plain, site_a)
    text = report.summary_text()
    for file in {f.file for f in report.findings if f.severity == "error"}:
        assert f"  {file}:" in text
    assert "2021-13-01" in text  # the one bad date, with its value and line


def test_a_study_the_site_is_not_enrolled_in_is_refused(plain: Path, site_a: SiteConfig) -> None:
    not_enrolled = site_a.model_copy(update={"studies": ["PONC-NB-02"]})
    report = validate_folder(plain, not_enrolled)
    assert report.exit_code == 2
    (problem,) = report.unusable
    assert "not enrolled in study PONC-WT-01" in problem.message and "PONC-NB-02" in problem.message


def test_no_library_traceback_reaches_the_terminal(plain: Path, clean_exports: Path, tmp_path: Path) -> None:
    """A required column the cross-table rules need is missing (birth_date): one finding says so; the rules
    that cannot run say their cause in one line, never a Great Expectations traceback."""
    import subprocess
    import sys

    lines = (plain / "patients.csv").read_text(encoding="utf-8").splitlines()
    at = lines[0].split(",").index("birth_date")
    (plain / "patients.csv").write_text("\n".join(",".join(f for i, f in enumerate(line.split(",")) if i != at)
                                                  for line in lines) + "\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "federation.cli", "validate", str(plain), "--site",
                           str(clean_exports / "sites" / "site-a.yaml"), "--study", STUDY, "--report-dir",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert "required column birth_date is missing" in done.stdout
