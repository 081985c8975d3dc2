"""A registry outside the code (decision 0011): a new study and a new site are added in the deployment's
registry folder, with no edit to the package, and an upload of them is published; a registry change the
committed suites do not reflect is said, and validation follows the registry, not the stale copy."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import logging
from pathlib import Path

import pytest
import yaml

from federation.cli import main
from federation.config import load_site
from federation.ingest.landing import upload_export
from federation.ingest.pipeline import ingest_all
from federation.paths import INFRA_DIR, SCHEMAS_DIR
from federation.schema import load_registry
from federation.settings import load_settings
from federation.storage import open_store
from federation.synth import synthesize
from federation.validation.runner import ValidationRequest, validate_export

AS_OF = dt.date(2025, 6, 30)


def _package_state() -> str:
    files = [SCHEMAS_DIR / "studies.yaml", *sorted((INFRA_DIR / "sites").glob("*.yaml")),
             INFRA_DIR / "query-policy.yaml"]
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


def _set_stage(export: Path, stage: str) -> None:
    path = export / "diagnoses.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    rows[1][rows[0].index("stage")] = stage
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_a_new_study_and_site_in_the_registry_folder_publish_without_touching_the_package(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _package_state()
    registry = tmp_path / "registry"
    assert main(["registry", "init", str(registry)]) == 0
    assert (registry / "expectations" / "v1" / "PONC-WT-01" / "patients.json").is_file()
    assert main(["schema", "check", "--registry", str(registry)]) == 0

    data = yaml.safe_load((registry / "studies.yaml").read_text())
    new = dict(data["studies"][0], study_id="PONC-XX-09", title="A new study, added by the data engineers")
    data["studies"].append(new)
    (registry / "studies.yaml").write_text(yaml.safe_dump(data))
    site = yaml.safe_load((registry / "sites" / "site-a.yaml").read_text())
    site.update(site_id="site-g", name="A new hospital", studies=["PONC-XX-09"])
    (registry / "sites" / "site-g.yaml").write_text(yaml.safe_dump(site))
    capsys.readouterr()
    assert main(["schema", "check", "--registry", str(registry)]) == 1  # its suites are not generated yet
    assert "PONC-XX-09" in capsys.readouterr().out

    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({"registry_dir": "registry", "storage": {"kind": "local",
                                                                                      "root": "storage"}}))
    settings = load_settings(settings_file)
    assert settings.sites_dir == registry / "sites" and settings.query_policy == registry / "query-policy.yaml"
    assert load_registry().study("PONC-XX-09").title.startswith("A new study")  # the registry in use
    assert "site-g" in settings.site_ids()

    exports = tmp_path / "exports"
    (written,) = synthesize(exports, 1, "PONC-XX-09", 40, AS_OF, seed=4)
    for f in written.folder.glob("*.csv"):  # site-a's synthetic export, as site-g's
        f.write_text(f.read_text(encoding="utf-8").replace("site-a", "site-g"), encoding="utf-8")
    store = open_store(settings.storage)
    upload_export(store, settings.storage, "site-g", "PONC-XX-09", "1", written.folder,
                  now=dt.datetime(2025, 6, 30, 12, tzinfo=dt.UTC))
    (entry,) = ingest_all(settings, progress=lambda _m: None)
    assert (entry.status, entry.version_id) == ("published", "site-g/PONC-XX-09@v1"), entry.message
    assert _package_state() == before  # no source edit


def test_a_registry_change_without_regenerating_is_said_and_validation_follows_the_registry(
        tmp_path: Path, clean_exports: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    export = tmp_path / "export"
    shutil.copytree(clean_exports / "site-a" / "PONC-WT-01", export)
    _set_stage(export, "VI")
    request = ValidationRequest(path=export, site=load_site("site-a", clean_exports / "sites"),
                                study_id="PONC-WT-01", upload_date=AS_OF)
    on_package = validate_export(request)  # the package's registry: stage VI is not a stage of the study
    assert [f.value for f in on_package.errors if f.column == "stage"] == ["VI"]

    registry = tmp_path / "registry"
    assert main(["registry", "init", str(registry)]) == 0
    data = yaml.safe_load((registry / "studies.yaml").read_text())
    data["studies"][0]["stages"].append("VI")  # added, and `federation schema generate` not run
    (registry / "studies.yaml").write_text(yaml.safe_dump(data))
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({"registry_dir": str(registry)}))
    load_settings(settings_file)
    with caplog.at_level(logging.WARNING, logger="federation"):
        on_registry = validate_export(request)
    assert not [f for f in on_registry.errors if f.column == "stage"]  # the registry's suite, not the stale copy
    stale = [r.getMessage() for r in caplog.records if "is stale" in r.getMessage()]
    assert any("expectations/v1/PONC-WT-01/diagnoses.json is stale" in m and "federation schema generate --registry"
               in m for m in stale), stale
    assert main(["schema", "generate", "--registry", str(registry)]) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="federation"):
        validate_export(request)
    assert not [r for r in caplog.records if "is stale" in r.getMessage()]


def test_a_wrong_or_broken_registry_is_refused_not_replaced_by_the_examples(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from federation.exceptions import ConfigurationError

    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({"registry_dir": "registy-typo"}))
    with pytest.raises(ConfigurationError, match="registy-typo has no studies.yaml, sites, query-policy.yaml"):
        load_settings(settings_file)

    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "notes.txt").write_text("kept")
    assert main(["registry", "init", str(registry)]) == 2  # not into a folder that holds something
    assert "is not empty" in capsys.readouterr().err and (registry / "notes.txt").read_text() == "kept"

    registry = tmp_path / "registry2"
    assert main(["registry", "init", str(registry)]) == 0
    data = yaml.safe_load((registry / "studies.yaml").read_text())
    site = yaml.safe_load((registry / "sites" / "site-a.yaml").read_text())
    site["studies"].append("PONC-TYPO-9")
    (registry / "sites" / "site-a.yaml").write_text(yaml.safe_dump(site))
    capsys.readouterr()
    assert main(["schema", "check", "--registry", str(registry)]) == 1
    assert "site site-a takes part in PONC-TYPO-9, which the registry does not have" in capsys.readouterr().out
    data["studies"].append(data["studies"][0])
    (registry / "studies.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="listed more than once: PONC-WT-01"):
        load_registry(registry)
