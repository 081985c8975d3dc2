"""Everything derived from schemas/: Great Expectations suites, the docs page
and the harmonized Arrow schema. `federation schema generate` rewrites the
committed files; `federation schema check` (and a test) fails on drift."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from federation.paths import DOCS_DIR, EXPECTATIONS_DIR
from federation.schema import (
    Dictionary,
    available_versions,
    is_package_registry,
    load_dictionary,
    load_registry,
    registry_dir,
    studies_label,
)
from federation.validation.suites import build_suite, render_suite, suite_path, suites_root, tables_of

_ARROW_TYPES = {
    "string": pa.string(), "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float64": pa.float64(), "bool": pa.bool_(),
}


def harmonized_arrow_schema(dictionary: Dictionary, table: str) -> pa.Schema:
    """The Arrow schema of one harmonized table, provenance columns first."""
    cols = dictionary.harmonized.common + dictionary.harmonized.tables[table]
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.type]) for c in cols],
                     metadata={b"schema_version": dictionary.schema_version.encode(), b"table": table.encode()})


def render_docs(dictionary: Dictionary) -> str:
    registry = load_registry()
    v = dictionary.schema_version
    out = [f"# Data dictionary v{v}", "",
           f"Generated from `schemas/v{v}/dictionary.yaml` and `{studies_label()}` by "
           "`federation schema generate`; do not edit by hand.", "", "## Types", "",
           "| type | meaning |", "|---|---|"]
    out += [f"| {k} | {m} |" for k, m in dictionary.types.items()]
    for tname, table in dictionary.tables.items():
        out += ["", f"## {tname} ({'required' if table.required else 'optional'})", "", table.description, "",
                "| column | type | required | rule |", "|---|---|---|---|"]
        for col in table.columns.values():
            rule = col.description
            if col.codes:
                source = f" (code list `{col.codes_file.split(':')[0]}`)" if col.codes_file else ""
                rule = (rule + "; " if rule else "") + f"codes{source}: " + ", ".join(f"`{c}`" for c in col.codes)
            if col.converts:
                rule += "; converted on input: " + ", ".join(f"`{k}`->`{c.to}`" for k, c in col.converts.items())
            if col.pattern:
                rule += f"; pattern `{col.pattern}`"
            req = {True: "yes", False: "no"}.get(col.required, "conditional")  # type: ignore[arg-type]
            out.append(f"| {col.name} | {col.type} | {req} | {rule.replace('|', '/')} |")
        rules = dictionary.rules_for(tname)
        if rules:
            out += ["", f"Rules checked on {tname}:", ""]
            out += [f"- `{r.id}`{' (cross-table)' if r.cross_table else ''}: {r.message}"
                    + (f" (allowed {r.other} x {r.column} pairs: `{r.pairs_file}`, {len(r.pairs)} pairs: "
                       + ", ".join(f"{a} {b}" for a, b in r.pairs) + ")" if r.kind == "pair_in" else "")
                    for r in rules]
    out += ["", "## Harmonized layer (Parquet)", "",
            "Every harmonized table starts with: " + ", ".join(f"`{c.name}`" for c in dictionary.harmonized.common),
            ""]
    for hname, cols in dictionary.harmonized.tables.items():
        out.append(f"- **{hname}**: " + ", ".join(
            f"`{c.name}` ({c.type}" + (f", from {c.derived.split(':')[1].split('->')[0]} by `{c.derived.split(':')[0]}`"
                                      if c.mapping and c.derived else "")
            + (f", status of {c.marker.gene} {c.marker.alteration} from biomarkers" if c.marker else "")
            + (f", any {c.exposure.agent_class} treatment" if c.exposure else "")
            + (", first late effect: " + {"days": "days to it", "event": "it or death", "first": "which"}[c.late_effect]
               if c.late_effect else "") + ")"
            for c in cols))
    out += ["", "## Studies", "", "| study | title | arms | stages | accrual | optional tables |",
            "|---|---|---|---|---|---|"]
    for s in registry.studies:
        if v not in s.versions():
            continue
        own = "" if s.schema_version == v else f" (its dictionary is v{s.schema_version}; it still takes v{v})"
        optional = [t for t in s.optional_tables if t in dictionary.tables]
        out.append(f"| {s.study_id}{own} | {s.title} | {', '.join(a.code for a in s.arms)} | {', '.join(s.stages)} | "
                   f"{s.accrual.first} to {s.accrual.last} | {', '.join(optional) or '-'} |")
    return "\n".join(out) + "\n"


def derived_dirs() -> tuple[Path, Path]:
    """Where the files derived from the registry in use go: (suites, dictionary pages)."""
    return suites_root(), DOCS_DIR if is_package_registry() else registry_dir()


def derived_files(expectations_dir: Path = EXPECTATIONS_DIR, docs_dir: Path = DOCS_DIR) -> dict[Path, str]:
    """Every file derived from schemas/, with its expected content."""
    files: dict[Path, str] = {}
    registry = load_registry()
    for version in available_versions():
        dictionary = load_dictionary(version)
        files[docs_dir / f"data-dictionary-v{version}.md"] = render_docs(dictionary)
        for study in registry.studies:
            if version not in study.versions():
                continue
            for table in tables_of(dictionary, study):
                files[suite_path(dictionary, study, table, expectations_dir)] = render_suite(
                    build_suite(dictionary, study, table))
    return files


def write_derived(expectations_dir: Path = EXPECTATIONS_DIR, docs_dir: Path = DOCS_DIR) -> list[Path]:
    written = []
    files = derived_files(expectations_dir, docs_dir)
    for path in sorted(expectations_dir.rglob("*.json")):
        if path not in files:
            path.unlink()
            written.append(path)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def drift(expectations_dir: Path = EXPECTATIONS_DIR, docs_dir: Path = DOCS_DIR) -> list[Path]:
    """Derived files whose committed content differs from what schemas/ gives, and stale suites."""
    files = derived_files(expectations_dir, docs_dir)
    stale = [p for p in sorted(expectations_dir.rglob("*.json")) if p not in files]
    return stale + [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
