"""The fast path finds what the old GX-on-pandas path found, whole or split by patient into parts.

A large dirty export (site-b's conventions: cp1252, ';', DD/MM/YYYY, renamed columns, local codes) with
every kind of injected error many times over is validated three ways: by the reference path (the code as it
was before it was made fast, tests/validation/reference.py), by the new path in one part, and by the new path
split into five parts and read in small blocks (so a file is read in many blocks, some by pyarrow and the
rest by the csv module). All three must give the same findings, cell for cell and value for value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.config import SiteConfig
from federation.schema import load_registry
from federation.synth import ERROR_KINDS, generate_site, inject_errors, site_configs, write_export
from federation.validation import reader
from federation.validation.findings import Finding
from tests.validation.helpers import AS_OF, validate_folder
from tests.validation.reference import reference_findings

STUDY = "PONC-NB-02"
ROUNDS = 12  # every error kind injected this many times, each time at other rows


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SiteConfig, int]:
    study = load_registry().study(STUDY)
    site = site_configs(2, [s.study_id for s in load_registry().studies])[1]  # site-b's conventions
    tables = generate_site(study, site.site_id, 800, AS_OF, seed=41, ae_per_patient=3.0)
    for r in range(ROUNDS):
        inject_errors(tables, study, AS_OF, seed=1000 + r)
    folder = tmp_path_factory.mktemp("dirty") / STUDY
    written = write_export(tables, site, study, folder)
    # a quoted value with a line break half-way through adverse_events: from there the csv module reads
    ae = folder / "adverse_events.csv"
    lines = ae.read_bytes().split(b"\r\n" if b"\r\n" in ae.read_bytes() else b"\n")
    half = len(lines) // 2
    fields = lines[half].split(b";")
    fields[-1] = b'"' + fields[-1] + b'\n"'
    lines[half] = b";".join(fields)
    ae.write_bytes(b"\n".join(lines))
    return folder, site, len(written.expected)


def _cells(findings: list[Finding]) -> set[tuple[str, int | None, str | None, str, str | None]]:
    return {(f.file, f.line, f.column, f.rule, f.value) for f in findings if f.severity == "error"}


@pytest.mark.integration
def test_fast_path_and_parts_find_what_the_old_path_found(dirty: tuple[Path, SiteConfig, int],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder, site, injected = dirty
    old = _cells(reference_findings(folder, site, STUDY))
    assert injected >= ROUNDS * len(ERROR_KINDS) / 2 and len(old) >= injected / 2, "a dirty export"

    whole = validate_folder(folder, site, study=STUDY, parts=1)
    assert whole.status == "invalid" and not whole.unusable
    suite_rules = {f.rule for f in whole.findings} - {"row_shape", "blank_rows", "unknown_column"}
    new_whole = {c for c in _cells(whole.findings) if c[3] in suite_rules}

    monkeypatch.setattr(reader, "BLOCK_BYTES", 16 << 10)  # many blocks per file
    split = validate_folder(folder, site, study=STUDY, parts=5)
    new_split = {c for c in _cells(split.findings) if c[3] in suite_rules}

    assert new_whole - old == set() and old - new_whole == set()
    assert new_split == new_whole
    assert [(t.table, t.rows) for t in split.tables] == [(t.table, t.rows) for t in whole.tables]
    assert split.findings == whole.findings  # the same report, said the same way, in the same order


def test_parts_follow_the_memory_budget() -> None:
    from federation.validation.parts import parts_for

    mib = 2**20
    assert parts_for(10 * mib, 1024) == 1  # a small export is checked whole, nothing written to disk
    assert parts_for(137 * mib, 1024) == 3  # the 1M-row benchmark export
    assert parts_for(1330 * mib, 2048) == 7  # the 10M-row one
    assert parts_for(137 * mib, 4096) == 1  # more memory, fewer parts


def test_a_dictionary_with_another_unique_column_is_not_split() -> None:
    import dataclasses

    from federation.schema import load_dictionary
    from federation.validation.parts import check_partitionable

    dictionary = load_dictionary("1")
    check_partitionable(dictionary)  # every unique column is patient_id
    ae = dictionary.table("adverse_events")
    column = next(c for c in ae.columns.values() if c.name == "meddra_code")
    changed = dataclasses.replace(column, unique=True) if dataclasses.is_dataclass(column) else column.model_copy(
        update={"unique": True})
    ae.columns["meddra_code"] = changed
    try:
        with pytest.raises(ValueError, match="cannot be split by patient"):
            check_partitionable(dictionary)
    finally:
        ae.columns["meddra_code"] = column
