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
    present: bool | None = None

    def describe(self) -> str:
        if self.equals is not None:
            return f"{self.column} is {self.equals}"
        if self.not_equals is not None:
            return f"{self.column} is not {self.not_equals}"
        return f"{self.column} is given"


RuleKind = Literal[
    "required_if", "absent_unless", "not_before", "not_after", "references",
    "has_row_in", "age_between", "value_in", "equals",
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


class HarmonizedColumn(_Model):
    name: str
    type: str
    description: str = ""
    values: list[str] | None = None


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


@lru_cache(maxsize=8)
def load_dictionary(version: str = "1", schemas_dir: Path = SCHEMAS_DIR) -> Dictionary:
    """Load `schemas/v<version>/dictionary.yaml`, filling in table and column names."""
    raw = _read_yaml(schemas_dir / f"v{version}" / "dictionary.yaml")
    for tname, table in raw["tables"].items():
        table["name"] = tname
        for cname, col in table["columns"].items():
            col["name"] = cname
    dictionary = Dictionary.model_validate(raw)
    if dictionary.schema_version != version:
        raise ConfigurationError(
            f"schemas/v{version}/dictionary.yaml declares schema_version {dictionary.schema_version!r}"
        )
    for rule in dictionary.rules:
        _check_rule(dictionary, rule)
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
