"""Hostile and broken exports get a clear message and the right exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.config import SiteConfig, SiteConventions
from tests.validation.helpers import cells, validate_folder

STUDY = "PONC-WT-01"



@pytest.fixture()
def site_a(clean_exports: Path) -> SiteConfig:
    return SiteConfig.from_yaml(clean_exports / "sites" / "site-a.yaml")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _unusable(report, file: str) -> str:  # type: ignore[no-untyped-def]
    assert report.status == "unusable" and report.exit_code == 2
    msgs = [f for f in report.unusable if f.file == file]
    assert msgs, report.unusable
    assert msgs[0].hint
    return str(msgs[0].message)


def test_empty_file(export: Path, site_a: SiteConfig) -> None:
    (export / "outcomes.csv").write_bytes(b"")
    assert "empty" in _unusable(validate_folder(export, site_a), "outcomes.csv")


def test_header_only_required_table(export: Path, site_a: SiteConfig) -> None:
    path = export / "outcomes.csv"
    _write(path, _lines(path)[:1])
    report = validate_folder(export, site_a)
    assert report.exit_code == 1
    assert ("outcomes.csv", 1, None, "table_empty") in cells(report)
    # and the patients now lack their outcomes row: reported at the patients' lines
    patients = len(_lines(export / "patients.csv")) - 1
    assert sum(1 for f in report.findings if f.rule == "patient_has_outcome") == patients


def test_header_only_optional_table_is_fine(export: Path, site_a: SiteConfig) -> None:
    path = export / "adverse_events.csv"
    _write(path, _lines(path)[:1])
    assert validate_folder(export, site_a).exit_code == 0


def test_absent_optional_table_is_fine_and_absent_required_is_named(export: Path, site_a: SiteConfig) -> None:
    (export / "treatments.csv").unlink()
    assert validate_folder(export, site_a).exit_code == 0
    (export / "diagnoses.csv").unlink()
    report = validate_folder(export, site_a)
    assert report.exit_code == 1
    missing = [f.message for f in report.findings if f.rule == "required_file"]
    assert missing == ["required file diagnoses.csv is missing"]


def test_binary_file_named_csv(export: Path, site_a: SiteConfig) -> None:
    (export / "patients.csv").write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 20)
    assert "not a text file" in _unusable(validate_folder(export, site_a), "patients.csv")


def test_wrong_delimiter(export: Path, site_a: SiteConfig) -> None:
    path = export / "patients.csv"
    _write(path, [line.replace(",", ";") for line in _lines(path)])
    msg = _unusable(validate_folder(export, site_a), "patients.csv")
    assert "';'" in msg and "declares ','" in msg


def test_some_ragged_rows_are_errors_at_their_lines(export: Path, site_a: SiteConfig) -> None:
    path = export / "adverse_events.csv"
    lines = _lines(path)
    lines[4] = lines[4] + ",extra"
    lines[9] = ",".join(lines[9].split(",")[:-2])
    _write(path, lines)
    report = validate_folder(export, site_a)
    assert report.exit_code == 1
    ragged = {(f.file, f.line) for f in report.findings if f.rule == "row_shape"}
    assert ragged == {("adverse_events.csv", 5), ("adverse_events.csv", 10)}


def test_mostly_ragged_file_is_unusable(export: Path, site_a: SiteConfig) -> None:
    path = export / "treatments.csv"
    lines = _lines(path)
    _write(path, lines[:1] + [line + ",x" for line in lines[1:]])
    assert "different number of fields" in _unusable(validate_folder(export, site_a), "treatments.csv")


def test_undeclared_encoding(export: Path, site_a: SiteConfig) -> None:
    path = export / "adverse_events.csv"
    lines = _lines(path)
    lines[3] = lines[3].replace(lines[3].split(",")[1], "Naus\u00e9e")
    path.write_bytes("\n".join(lines).encode("cp1252"))
    msg = _unusable(validate_folder(export, site_a), "adverse_events.csv")
    assert "line 4" in msg and "utf-8" in msg


def test_utf8_bom_and_cp1252_are_read_when_declared(export: Path, site_a: SiteConfig) -> None:
    path = export / "adverse_events.csv"
    text = path.read_text(encoding="utf-8").replace("Nausea", "Naus\u00e9e")
    path.write_bytes(text.encode("cp1252"))
    cp1252 = site_a.model_copy(update={"conventions": SiteConventions(encoding="cp1252")})
    assert validate_folder(export, cp1252).exit_code == 0
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert validate_folder(export, site_a).exit_code == 0


def test_impossible_date_and_duplicated_and_mangled_ids(export: Path, site_a: SiteConfig) -> None:
    path = export / "patients.csv"
    lines = _lines(path)
    header = lines[0].split(",")
    row = lines[2].split(",")
    row[header.index("birth_date")] = "2020-02-31"
    lines[2] = ",".join(row)
    lines.append(lines[5])  # a duplicated patient
    _write(path, lines)
    dpath = export / "diagnoses.csv"
    dlines = _lines(dpath)
    drow = dlines[7].split(",")
    drow[0] = "1.23E+05"
    dlines[7] = ",".join(drow)
    _write(dpath, dlines)
    got = cells(validate_folder(export, site_a))
    assert ("patients.csv", 3, "birth_date", "type_date") in got
    assert ("patients.csv", 6, "patient_id", "unique") in got
    assert ("patients.csv", len(lines), "patient_id", "unique") in got
    assert ("diagnoses.csv", 8, "patient_id", "spreadsheet_mangled") in got


def test_file_over_the_size_limit(export: Path, site_a: SiteConfig) -> None:
    report = validate_folder(export, site_a, max_file_bytes=1000)
    assert report.exit_code == 2
    assert any("larger than the limit" in f.message for f in report.unusable)


def test_multi_gigabyte_file_is_refused_without_reading_it(export: Path, site_a: SiteConfig) -> None:
    big = export / "adverse_events.csv"
    with big.open("r+b") as fh:  # sparse: 5 GiB on paper, nothing on disk
        fh.truncate(5 * 2**30)
    msg = _unusable(validate_folder(export, site_a), "adverse_events.csv")
    assert "5,120 MiB" in msg


def test_missing_required_column_and_unknown_column(export: Path, site_a: SiteConfig) -> None:
    path = export / "diagnoses.csv"
    rows = [line.split(",") for line in _lines(path)]
    drop = rows[0].index("stage")
    rows = [[v for i, v in enumerate(r) if i != drop] + ["n/a"] for r in rows]
    rows[0][-1] = "notes"
    _write(path, [",".join(r) for r in rows])
    report = validate_folder(export, site_a)
    by_rule = {f.rule: f for f in report.findings}
    assert by_rule["required_column"].column == "stage" and by_rule["required_column"].line == 1
    assert by_rule["unknown_column"].column == "notes" and by_rule["unknown_column"].severity == "warning"
    assert not any(f.rule == "required" and f.column == "stage" for f in report.findings)


def test_not_a_folder(tmp_path: Path, site_a: SiteConfig) -> None:
    report = validate_folder(tmp_path / "nope", site_a)
    assert report.exit_code == 2
