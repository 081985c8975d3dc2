"""The dictionary encoding is complete and consistent, and every derived file follows it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from federation.exceptions import ConfigurationError
from federation.generate import derived_files, drift, harmonized_arrow_schema, write_derived
from federation.paths import DOCS_DIR, EXPECTATIONS_DIR, SCHEMAS_DIR
from federation.schema import available_versions, load_dictionary, load_registry


def test_dictionary_v1_has_the_spec_tables_and_columns() -> None:
    d = load_dictionary("1")
    assert set(d.tables) == {"patients", "diagnoses", "treatments", "adverse_events", "outcomes"}
    assert {n for n, t in d.tables.items() if t.required} == {"patients", "diagnoses", "outcomes"}
    assert d.table("patients").columns["sex"].codes == ["M", "F", "U"]
    assert d.table("treatments").columns["dose_unit"].converts["mcg"].factor == 0.001
    assert d.table("adverse_events").columns["grade"].min == 1
    assert "1" in available_versions()


def test_every_rule_names_real_columns() -> None:
    d = load_dictionary("1")
    for rule in d.rules:
        assert rule.column in d.table(rule.table).columns
        if rule.other:
            assert (rule.other_column or "") in d.table(rule.other_table or rule.table).columns


def test_unknown_study_and_table_say_what_exists() -> None:
    with pytest.raises(ConfigurationError, match="known studies: PONC-WT-01"):
        load_registry().study("NOPE")
    with pytest.raises(ConfigurationError, match="known tables"):
        load_dictionary("1").table("labs")


def test_studies_differ_in_arms_and_stages() -> None:
    wt, nb = (load_registry().study(s) for s in ("PONC-WT-01", "PONC-NB-02"))
    assert [a.code for a in wt.arms] != [a.code for a in nb.arms]
    assert wt.stages != nb.stages


def test_committed_derived_files_match_schemas() -> None:
    stale = drift()
    assert stale == [], f"run `federation schema generate`: {stale}"


def test_drift_is_detected(tmp_path: Path) -> None:
    exp, docs = tmp_path / "expectations", tmp_path / "docs"
    shutil.copytree(EXPECTATIONS_DIR, exp)
    docs.mkdir()
    write_derived(exp, docs)
    assert drift(exp, docs) == []
    suite = exp / "v1" / "PONC-WT-01" / "patients.json"
    data = json.loads(suite.read_text())
    data["expectations"].pop()
    suite.write_text(json.dumps(data))
    (exp / "v1" / "PONC-WT-01" / "labs.json").write_text("{}")
    assert set(drift(exp, docs)) == {suite, exp / "v1" / "PONC-WT-01" / "labs.json"}
    write_derived(exp, docs)
    assert drift(exp, docs) == []


def test_suites_are_gx_suites_with_study_specific_codes() -> None:
    import great_expectations as gx

    files = derived_files()
    wt = json.loads(files[EXPECTATIONS_DIR / "v1" / "PONC-WT-01" / "patients.json"])
    suite = gx.ExpectationSuite(**wt)
    configs = [e.configuration for e in suite.expectations]
    arm_sets = [c.kwargs["value_set"] for c in configs
                if c.kwargs.get("column") == "arm" and "value_set" in c.kwargs]
    assert arm_sets == [["EE4A", "DD4A", "M", "NR"]]
    assert all(e.meta and e.meta["rule"] and e.meta["hint"] for e in suite.expectations)
    assert (DOCS_DIR / "data-dictionary-v1.md") in files


def test_harmonized_arrow_schema_has_provenance_and_no_raw_identifiers() -> None:
    schema = harmonized_arrow_schema(load_dictionary("1"), "patients")
    assert schema.names[:5] == ["study_id", "site_id", "upload_id", "schema_version", "pid"]
    assert schema.field("os_event").type == pa.bool_()
    for table in load_dictionary("1").harmonized.tables:
        names = harmonized_arrow_schema(load_dictionary("1"), table).names
        assert "patient_id" not in names
        assert not [n for n in names if n.endswith("_date")]


def test_dictionary_v2_adds_markers_agent_classes_late_effects_and_quality_of_life() -> None:
    d = load_dictionary("2")
    assert {"biomarkers", "late_effects", "quality_of_life"} <= set(d.tables) and "2" in available_versions()
    assert set(load_dictionary("1").tables) < set(d.tables)  # v1's tables are all there
    agents = d.tables["treatments"].columns["agent"].codes or []
    assert {"dinutuximab", "blinatumomab", "tisagenlecleucel", "nivolumab", "larotrectinib", "lorlatinib"} <= set(
        agents)
    agent_class = next(c for c in d.harmonized.tables["treatments"] if c.name == "agent_class")
    assert agent_class.mapping["dinutuximab"] == "IMMUNOTHERAPY" and agent_class.mapping["larotrectinib"] == "TARGETED"
    assert "agent_class" not in d.tables["treatments"].columns  # derived, never typed by sites
    pairs = next(r for r in d.rules if r.id == "gene_alteration_allowed").pairs
    assert ("MYCN", "AMPLIFICATION") in pairs and ("NTRK1", "FUSION") in pairs and ("MYCN", "FUSION") not in pairs


def test_a_code_list_that_leaves_an_agent_without_a_class_is_refused(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS_DIR / "v2", tmp_path / "v2")
    agents = tmp_path / "v2" / "codelists" / "agents.csv"
    agents.write_text(agents.read_text() + "newmab,\n")
    with pytest.raises(ConfigurationError, match="no agent_class for \\['newmab'\\]"):
        load_dictionary("2", tmp_path)
    agents.write_text(agents.read_text().replace("newmab,", "newmab,ANTIBODY"))
    with pytest.raises(ConfigurationError, match="maps to \\['ANTIBODY'\\]"):
        load_dictionary("2", tmp_path)
