"""Harmonized tables hold the dictionary's derived variables, computed right, and no raw identifier or date."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from federation.config import SiteConfig
from federation.ingest.harmonize import harmonize, pseudonym
from federation.schema import load_dictionary

KEY = b"test-consortium-key-0123456789"


def _harmonized(folder: Path, site: SiteConfig, study: str = "PONC-WT-01") -> tuple[dict[str, pa.Table], dict]:  # type: ignore[type-arg]
    from federation.validation.runner import ValidationRequest, validate_export

    report = validate_export(ValidationRequest(folder, site, study, dt.date(2025, 6, 30)), keep_sources=True)
    assert report.status == "valid" and report.parts.parts == 1
    sources = {t: s for t, s in report.parts.sources(0).items() if s.present}
    report.parts.close()
    tables = harmonize(load_dictionary("1"), sources, study_id=study, site_id=site.site_id,
                       upload_id="u-test", key=KEY)
    return tables, sources


@pytest.fixture(scope="module")
def site_b(clean_exports: Path) -> tuple[SiteConfig, Path]:
    # site-b: cp1252, ';', DD/MM/YYYY, decimal comma, renamed columns and local codes
    return SiteConfig.from_yaml(clean_exports / "sites" / "site-b.yaml"), clean_exports / "site-b" / "PONC-WT-01"


def test_derived_variables_match_a_hand_computation(site_b: tuple[SiteConfig, Path]) -> None:
    site, folder = site_b
    tables, _ = _harmonized(folder, site)
    raw_p = pd.read_csv(folder / "patients.csv", sep=";", encoding="cp1252", dtype=str)
    raw_d = pd.read_csv(folder / "diagnoses.csv", sep=";", encoding="cp1252", dtype=str).set_index("patient_id")
    raw_o = pd.read_csv(folder / "outcomes.csv", sep=";", encoding="cp1252", dtype=str).set_index("patient_id")
    out = tables["patients"].to_pandas().set_index("pid")

    def day(s: str) -> dt.date:
        return dt.datetime.strptime(s, "%d/%m/%Y").date()

    for _, row in raw_p.iterrows():
        pid = pseudonym(KEY, "PONC-WT-01", "site-b", row["patient_id"])
        h = out.loc[pid]
        enrol, birth = day(row["date_inclusion"]), day(row["date_naissance"])
        diag = day(raw_d.loc[row["patient_id"], "diagnosis_date"])
        o = raw_o.loc[row["patient_id"]]
        last = day(o["last_contact_date"])
        age = (diag - birth).days / 365.25
        assert h["enrollment_year"] == enrol.year
        assert h["age_at_diagnosis_years"] == pytest.approx(age, abs=1e-4)
        assert h["age_group"] == ("<1" if age < 1 else "1-4" if age < 5 else "5-9" if age < 10
                                  else "10-14" if age < 15 else "15-21")
        assert h["sex"] == {"1": "M", "2": "F", "9": "U"}[row["sexe"]]
        dead = o["statut_vital"] == "décédé"
        assert bool(h["os_event"]) == dead
        assert h["os_days"] == ((day(o["date_deces"]) if dead else last) - enrol).days
        event = o["first_event"] != "NONE"
        assert bool(h["efs_event"]) == event
        assert h["efs_days"] == ((day(o["first_event_date"]) if event else last) - enrol).days


def test_units_are_converted_to_mg(site_b: tuple[SiteConfig, Path]) -> None:
    site, folder = site_b
    tables, _ = _harmonized(folder, site)
    raw = pd.read_csv(folder / "treatments.csv", sep=";", encoding="cp1252", dtype=str)
    t = tables["treatments"].to_pandas()
    assert set(t["dose_unit"].dropna()) <= {"mg", "mg/m2", "mg/kg", "Gy"}
    mcg = raw["dose_unit"] == "mcg"
    grams = raw["dose_unit"] == "g"
    assert mcg.any()
    as_float = raw["dose"].str.replace(",", ".").astype(float)
    assert t.loc[mcg.to_numpy(), "dose"].to_numpy() == pytest.approx((as_float[mcg] / 1000).to_numpy())
    assert t.loc[grams.to_numpy(), "dose"].to_numpy() == pytest.approx((as_float[grams] * 1000).to_numpy())
    same = ~(mcg | grams) & raw["dose"].notna()
    assert t.loc[same.to_numpy(), "dose"].to_numpy() == pytest.approx(as_float[same].to_numpy())


def test_every_declared_conversion() -> None:
    from federation.ingest.harmonize import _convert_dose

    frame = pd.DataFrame({"dose": [1500.0, 250.0, 1.2, 2.0, None], "dose_unit": ["mcg", "ug", "g", "mg/m2", None]})
    dose, unit = _convert_dose(frame, load_dictionary("1"))
    assert dose.tolist()[:4] == pytest.approx([1.5, 0.25, 1200.0, 2.0])
    assert unit.tolist()[:4] == ["mg", "mg", "mg", "mg/m2"]


def test_pid_is_stable_across_uploads_and_differs_across_sites() -> None:
    assert pseudonym(KEY, "S", "site-a", "P1") == pseudonym(KEY, "S", "site-a", "P1")
    assert pseudonym(KEY, "S", "site-a", "P1") != pseudonym(KEY, "S", "site-b", "P1")
    assert pseudonym(KEY, "S", "site-a", "P1") != pseudonym(b"another-key-0123456789", "S", "site-a", "P1")
    assert re.fullmatch(r"[0-9a-f]{32}", pseudonym(KEY, "S", "site-a", "P1"))


@pytest.mark.parametrize("site_id", ["site-a", "site-b", "site-c", "site-d"])
def test_no_raw_identifier_or_date_reaches_the_harmonized_layer(clean_exports: Path, site_id: str) -> None:
    site = SiteConfig.from_yaml(clean_exports / "sites" / f"{site_id}.yaml")
    folder = clean_exports / site_id / "PONC-WT-01"
    tables, sources = _harmonized(folder, site)
    raw_ids: set[str] = set(sources["patients"].frame["patient_id"])
    raw_dates: set[str] = set()
    for src in sources.values():
        for name in src.raw.column_names:
            if name.endswith("_date"):
                raw_dates |= {v for v in src.raw.column(name).to_pylist() if v}
    # the same dates as ISO strings, in case a conversion leaked them in another format
    from federation.validation.reader import date_to_day, day_to_iso

    iso = {day_to_iso(d) for d in date_to_day(pd.Series(sorted(raw_dates)), site.conventions.date_formats)}
    forbidden = raw_ids | raw_dates | iso
    assert len(raw_ids) > 10 and len(raw_dates) > 10
    for name, table in tables.items():
        for col in table.column_names:
            values = {str(v) for v in table.column(col).to_pylist() if v is not None}
            leaked = values & forbidden
            assert not leaked, f"{name}.{col} holds raw values: {sorted(leaked)[:3]}"
            # ids embedded in longer strings
            if pa.types.is_string(table.schema.field(col).type):
                assert not any(i in v for v in values for i in list(raw_ids)[:50]), f"{name}.{col}"
    assert "patient_id" not in {c for t in tables.values() for c in t.column_names}


def test_harmonized_tables_follow_the_dictionary_schema(site_b: tuple[SiteConfig, Path]) -> None:
    from federation.generate import harmonized_arrow_schema

    site, folder = site_b
    tables, _ = _harmonized(folder, site)
    for name, table in tables.items():
        assert table.schema.equals(harmonized_arrow_schema(load_dictionary("1"), name), check_metadata=True)
    # provenance columns on every row
    for table in tables.values():
        assert set(table.column("upload_id").to_pylist()) == {"u-test"}
        assert set(table.column("schema_version").to_pylist()) == {"1"}


def test_pseudonyms_of_many_patients_are_the_same_as_one_by_one() -> None:
    from federation.ingest.harmonize import pseudonyms

    ids = ["P-0001", "P-0002", "é-ü-3", ""]
    assert pseudonyms(KEY, "PONC-WT-01", "site-a", ids) == [pseudonym(KEY, "PONC-WT-01", "site-a", i) for i in ids]
