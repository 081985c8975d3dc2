"""The data dictionary and study registry as typed objects.

`schemas/v<N>/dictionary.yaml` is the one source of truth; this module loads
it and resolves it for one study (arms, stages, accrual window), so that the
validation suites, the harmonized Arrow schema and the docs all derive from
the same objects. Several dictionary versions can sit side by side.
"""

from __future__ import annotations

import datetime as dt
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from federation.exceptions import ConfigurationError
from federation.paths import INFRA_DIR, SCHEMAS_DIR

ColumnType = Literal["string", "code", "date", "int", "decimal"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitConversion(_Model):
    to: str
    factor: float


class Column(_Model):
    name: str = ""
    type: ColumnType
    required: bool | Literal["conditional"] = False
    description: str = ""
    codes: list[str] | None = None
    codes_from: Literal["study.arms", "study.stages"] | None = None
    codes_file: str | None = None  # "codelists/<file>.csv:<column>", beside the dictionary: the codes, as data
    extra_codes: list[str] = Field(default_factory=list)
    converts: dict[str, UnitConversion] = Field(default_factory=dict)
    pattern: str | None = None
    example: str | None = None
    min: float | None = None
    max: float | None = None
    strict_min: bool = False
    unique: bool = False
    identifier: bool = False
    free_text: bool = False
    not_spreadsheet: bool = False
    equals_study: bool = False
    equals_param: str | None = None
    not_after_param: str | None = None
    within: Literal["accrual_window"] | None = None


class Table(_Model):
    name: str = ""
    required: bool
    description: str
    columns: dict[str, Column]


class Condition(_Model):
    column: str
    equals: str | int | None = None
    not_equals: str | None = None
    not_in: list[str] | None = None
    present: bool | None = None

    def describe(self) -> str:
        if self.equals is not None:
            return f"{self.column} is {self.equals}"
        if self.not_equals is not None:
            return f"{self.column} is not {self.not_equals}"
        if self.not_in is not None:
            return f"{self.column} is none of {', '.join(self.not_in)}"
        return f"{self.column} is given"


RuleKind = Literal[
    "required_if", "absent_unless", "not_before", "not_after", "references",
    "has_row_in", "age_between", "value_in", "equals", "pair_in",
]


class Rule(_Model):
    id: str
    table: str
    kind: RuleKind
    column: str
    other: str | None = None
    when: Condition | None = None
    values: list[str] | None = None
    min_years: float | None = None
    max_years: float | None = None
    pairs_file: str | None = None  # pair_in: "codelists/<file>.csv" with the columns `other` and `column`
    pairs: list[tuple[str, str]] = Field(default_factory=list)  # pair_in: (other, column) allowed, from pairs_file
    message: str
    hint: str

    @property
    def other_table(self) -> str | None:
        """The table `other` lives in when it is written `table.column`."""
        if self.other and "." in self.other:
            return self.other.split(".", 1)[0]
        return None

    @property
    def other_column(self) -> str | None:
        if self.other is None:
            return None
        return self.other.split(".", 1)[-1]

    @property
    def cross_table(self) -> bool:
        return self.other_table is not None and self.other_table != self.table


class Marker(_Model):
    """A patient's status for one molecular alteration, derived from the biomarkers table at harmonization:
    DETECTED if any sample shows it, else NOT_DETECTED if any was tested negative, else INDETERMINATE, else
    NOT_TESTED; missing when the site sent no biomarkers table."""

    gene: str
    alteration: str


class Exposure(_Model):
    """Whether a patient received any treatment of an agent class (from treatments at harmonization): true or
    false; missing when the site sent no treatments table."""

    agent_class: str


class HarmonizedColumn(_Model):
    name: str
    type: str
    description: str = ""
    values: list[str] | None = None
    marker: Marker | None = None  # patients: a marker status (v2)
    exposure: Exposure | None = None  # patients: received an agent class (v2)
    # patients: the first late effect (v2), like efs: "days" to it (or death, or last contact), "event" (it or
    # death before it), "first" (its category, DEATH, or NONE); missing when the site sent no late_effects
    late_effect: Literal["days", "event", "first"] | None = None
    # how a table harmonized from its declaration is made (tables added in v2): "col" (copied), "col->day"
    # (a date as whole days since the patient's enrollment), "codelists/f.csv:a->b" (col a mapped by the list)
    derived: str | None = None
    mapping: dict[str, str] = Field(default_factory=dict)  # a code list's a -> b, read when loading


class Harmonized(_Model):
    common: list[HarmonizedColumn]
    tables: dict[str, list[HarmonizedColumn]]


class Dictionary(_Model):
    schema_version: str
    title: str
    types: dict[str, str]
    spreadsheet_mangled_pattern: str
    tables: dict[str, Table]
    rules: list[Rule]
    harmonized: Harmonized

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise ConfigurationError(
                f"table {name!r} is not in data dictionary v{self.schema_version}; "
                f"known tables: {', '.join(self.tables)}"
            ) from None

    def rules_for(self, table: str) -> list[Rule]:
        return [r for r in self.rules if r.table == table]


class Arm(_Model):
    code: str
    label: str


class AccrualWindow(_Model):
    first: dt.date
    last: dt.date


class Study(_Model):
    study_id: str
    title: str
    schema_version: str
    arms: list[Arm]
    stages: list[str]
    accrual: AccrualWindow
    optional_tables: list[str] = Field(default_factory=list)
    # earlier dictionary versions whose exports the study still takes, from sites that have not moved on
    # (their data answers on the columns those versions have; a question about others: "not collected")
    also_accepts: list[str] = Field(default_factory=list)

    def versions(self) -> list[str]:
        return [self.schema_version, *(v for v in self.also_accepts if v != self.schema_version)]

    def codes_for(self, column: Column) -> list[str] | None:
        """The code list of `column` in this study (study lists resolved)."""
        if column.codes is not None:
            return list(column.codes) + list(column.converts) + column.extra_codes
        if column.codes_from == "study.arms":
            return [a.code for a in self.arms] + column.extra_codes
        if column.codes_from == "study.stages":
            return list(self.stages) + column.extra_codes
        return None


class Registry(_Model):
    studies: list[Study]
    source: str = "schemas/studies.yaml"  # the file it was read from (set on loading)

    @model_validator(mode="after")
    def _unique_ids(self) -> Registry:
        ids = [s.study_id for s in self.studies]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"study ids must be unique; listed more than once: {', '.join(twice)}")
        return self

    def study(self, study_id: str) -> Study:
        for s in self.studies:
            if s.study_id == study_id:
                return s
        raise ConfigurationError(
            f"study {study_id!r} is not in the consortium registry ({self.source}); "
            f"known studies: {', '.join(s.study_id for s in self.studies)}"
        )


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigurationError(f"{path} does not exist")
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def read_codelist(folder: Path, ref: str) -> list[dict[str, str]]:
    """The rows of a code list (`codelists/<file>.csv`, optionally `:<column>`) beside a dictionary."""
    import csv

    path = folder / ref.split(":", 1)[0]
    if not path.is_file():
        raise ConfigurationError(f"the code list {path} named in {folder / 'dictionary.yaml'} does not exist")
    with path.open(encoding="utf-8", newline="") as fh:
        rows = [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]
    if not rows:
        raise ConfigurationError(f"the code list {path} is empty")
    return rows


def _codes_of(folder: Path, ref: str) -> list[str]:
    rows = read_codelist(folder, ref)
    column = ref.split(":", 1)[1] if ":" in ref else next(iter(rows[0]))
    if column not in rows[0]:
        raise ConfigurationError(f"the code list {ref} has no column {column!r}")
    return list(dict.fromkeys(r[column] for r in rows if r[column]))


def _resolve_lists(raw: dict[str, Any], folder: Path) -> None:
    """Fill in what the dictionary's code lists hold: a column's codes, a rule's allowed pairs, a harmonized
    column's mapping (every code of its source column must map to one of its values)."""
    for table in raw["tables"].values():
        for col in table["columns"].values():
            if col.get("codes_file"):
                col["codes"] = _codes_of(folder, col["codes_file"])
    for rule in raw.get("rules", []):
        if rule.get("pairs_file"):
            rows = read_codelist(folder, rule["pairs_file"])
            first, second = rule["other"].split(".")[-1], rule["column"]
            if first not in rows[0] or second not in rows[0]:
                raise ConfigurationError(f"{rule['pairs_file']} needs the columns {first} and {second}")
            rule["pairs"] = [(r[first], r[second]) for r in rows]
    for cols in raw.get("harmonized", {}).get("tables", {}).values():
        for col in cols:
            derived = col.get("derived") or ""
            if ":" in derived and "->" in derived:
                ref, arrow = derived.split(":", 1)
                a, b = arrow.split("->", 1)
                rows = read_codelist(folder, ref)
                col["mapping"] = {r[a]: r[b] for r in rows if r[b]}  # an empty one: unmapped, said below
                outside = sorted(set(col["mapping"].values()) - set(col.get("values") or col["mapping"].values()))
                if outside:
                    raise ConfigurationError(f"{ref} maps to {outside}, not among {col['name']}'s values")


@lru_cache(maxsize=8)
def load_dictionary(version: str = "1", schemas_dir: Path = SCHEMAS_DIR) -> Dictionary:
    """Load `schemas/v<version>/dictionary.yaml`, filling in table and column names and its code lists."""
    folder = schemas_dir / f"v{version}"
    raw = _read_yaml(folder / "dictionary.yaml")
    for tname, table in raw["tables"].items():
        table["name"] = tname
        for cname, col in table["columns"].items():
            col["name"] = cname
    _resolve_lists(raw, folder)
    dictionary = Dictionary.model_validate(raw)
    if dictionary.schema_version != version:
        raise ConfigurationError(
            f"schemas/v{version}/dictionary.yaml declares schema_version {dictionary.schema_version!r}"
        )
    for rule in dictionary.rules:
        _check_rule(dictionary, rule)
    for tname, cols in dictionary.harmonized.tables.items():
        for c in cols:
            source = (c.derived or "").split(":")[-1].split("->")[0]
            if c.derived and tname in dictionary.tables and source not in dictionary.tables[tname].columns:
                raise ConfigurationError(f"harmonized {tname}.{c.name} is derived from {source!r}, not a column of "
                                         f"{tname}")
            if c.exposure is not None:
                classes = next((x.values or [] for x in dictionary.harmonized.tables.get("treatments", [])
                                if x.name == "agent_class"), [])
                if c.exposure.agent_class not in classes:
                    raise ConfigurationError(f"harmonized {tname}.{c.name}: {c.exposure.agent_class!r} is not an "
                                             f"agent class ({', '.join(classes) or 'none declared'})")
            if c.late_effect is not None and "late_effects" not in dictionary.tables:
                raise ConfigurationError(f"harmonized {tname}.{c.name} needs a late_effects table")
            if c.mapping:
                codes = dictionary.tables[tname].columns[source].codes or []
                unmapped = [x for x in codes if x not in c.mapping]
                if unmapped:
                    raise ConfigurationError(f"harmonized {tname}.{c.name}: no {c.name} for {unmapped}")
    return dictionary


def _check_rule(dictionary: Dictionary, rule: Rule) -> None:
    table = dictionary.table(rule.table)
    refs = [(rule.table, rule.column)]
    if rule.other:
        refs.append((rule.other_table or rule.table, rule.other_column or ""))
    if rule.when:
        refs.append((rule.table, rule.when.column))
    for tname, cname in refs:
        if cname not in dictionary.table(tname).columns:
            raise ConfigurationError(f"rule {rule.id!r} names unknown column {tname}.{cname}")
    del table


# The deployment's registry: a folder with `studies.yaml` (and, beside it, `sites/`, `query-policy.yaml`,
# `reports/`, `expectations/`), outside the package. Named by the settings' `registry_dir` (which
# `settings.load_settings` activates), by `federation serve --registry`, or by $FEDERATION_REGISTRY; without
# one, the package's example registry in schemas/ is used. Decision 0011.
REGISTRY_ENV = "FEDERATION_REGISTRY"
_active_registry: Path | None = None


def use_registry(folder: Path | None) -> None:
    """Make `folder` the registry of this process (None: back to $FEDERATION_REGISTRY or the package's)."""
    global _active_registry
    _active_registry = folder


def registry_dir() -> Path:
    """The folder of the registry in use."""
    if _active_registry is not None:
        return _active_registry
    env = os.environ.get(REGISTRY_ENV)
    return Path(env) if env else SCHEMAS_DIR


def is_package_registry(folder: Path | None = None) -> bool:
    return (folder or registry_dir()).resolve() == SCHEMAS_DIR.resolve()


def registry_file(name: str) -> Path:
    """A file or folder of the registry in use beside its studies (`sites`, `query-policy.yaml`,
    `reports/consortium.yaml`): in the deployment's folder, or the package's example under infra/."""
    return (INFRA_DIR if is_package_registry() else registry_dir()) / name


def studies_label() -> str:
    """How generated files name the studies they came from: `schemas/studies.yaml` for the package's
    examples (so committed files do not depend on where the checkout is), else the registry's file."""
    return "schemas/studies.yaml" if is_package_registry() else str(registry_dir() / "studies.yaml")


def load_registry(schemas_dir: Path | None = None) -> Registry:
    """The studies of the registry in use (or of `schemas_dir`); re-read when its file changes."""
    path = (schemas_dir or registry_dir()) / "studies.yaml"
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ConfigurationError(f"the registry {path.parent} has no studies.yaml; create the folder with "
                                 f"`federation registry init {path.parent}` (decision 0011)") from None
    return _load_registry(path, stamp)


@lru_cache(maxsize=8)
def _load_registry(path: Path, stamp: int) -> Registry:
    registry = Registry.model_validate(_read_yaml(path))
    return registry.model_copy(update={"source": str(path)})


def available_versions(schemas_dir: Path = SCHEMAS_DIR) -> list[str]:
    return sorted(p.name[1:] for p in schemas_dir.glob("v*") if (p / "dictionary.yaml").exists())
