"""The command line: help, exit codes, and where the report goes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from federation.cli import main


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "same Great Expectations rules the pipeline uses" in out and "exit codes" in out


@pytest.mark.parametrize(("site", "code"), [("site-a", 0), ("site-b", 1)])
def test_validate_exit_codes_and_report_files(tmp_path: Path, site: str, code: int,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--sites", "2", "--patients", "60", "--as-of", "2025-06-30",
                 "--inject-errors", "site-b"]) == 0
    report_dir = tmp_path / "report"
    rc = main(["validate", str(out / site / "PONC-WT-01"), "--site", str(out / "sites" / f"{site}.yaml"),
               "--study", "PONC-WT-01", "--upload-date", "2025-06-30", "--report-dir", str(report_dir), "--quiet"])
    assert rc == code
    printed = capsys.readouterr().out
    assert ("VALID" if code == 0 else "INVALID") in printed and str(report_dir / "report.html") in printed
    data = json.loads((report_dir / "report.json").read_text())
    assert data["exit_code"] == code
    html = (report_dir / "report.html").read_text()
    assert ("passed every rule" in html) == (code == 0)
    if code:
        assert "date_naissance" in (report_dir / "failures.csv").read_text()


def test_validate_unusable_exit_2(tmp_path: Path, clean_exports: Path) -> None:
    folder = tmp_path / "x"
    shutil.copytree(clean_exports / "site-a" / "PONC-WT-01", folder)
    (folder / "patients.csv").write_bytes(b"\x00\x01binary")
    rc = main(["validate", str(folder), "--site", str(clean_exports / "sites" / "site-a.yaml"),
               "--study", "PONC-WT-01", "--report-dir", str(tmp_path / "r"), "--quiet"])
    assert rc == 2


def test_unknown_site_and_study_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path), "--site", "no-such-site", "--study", "PONC-WT-01"]) == 2
    assert "known sites: site-a" in capsys.readouterr().err
    assert main(["validate", str(tmp_path), "--site", "site-a", "--study", "NOPE"]) == 2
    assert "known studies" in capsys.readouterr().err


def test_failures_csv_is_capped(tmp_path: Path) -> None:
    from federation.validation import report as report_mod
    from federation.validation.findings import Finding

    r = report_mod.Report(site_id="s", study_id="x", schema_version="1", path=".", upload_date="2025-01-01")
    r.findings = [Finding(severity="error", rule="required", table="t", file="t.csv", line=i, message="m",
                          hint="h") for i in range(report_mod.CSV_CAP + 7)]
    r.finish(0.0)
    r.write(tmp_path)
    lines = (tmp_path / "failures.csv").read_text().splitlines()
    assert len(lines) == report_mod.CSV_CAP + 2
    assert "and 7 more" in lines[-1]


def test_a_failure_notification_is_sent_for_news_and_then_once_a_day() -> None:
    from federation.notify import REMIND_EVERY, failure_message, worth_telling

    def upload(failures: int) -> dict[str, str]:
        return {"site_id": "site-a", "upload_id": "u-1", "message": "unexpected error: X", "failures": str(failures)}

    assert worth_telling([]) and worth_telling([upload(1)]) and worth_telling([upload(2), upload(1)])
    assert not worth_telling([upload(2)]) and not worth_telling([upload(REMIND_EVERY)])
    assert worth_telling([upload(REMIND_EVERY + 1)])  # a daily reminder while it keeps failing
    text = failure_message("site_ingest", "r1", "task_failure", [upload(3)])["text"]
    assert "site-a/u-1: unexpected error: X (failing for 3 runs)" in text
