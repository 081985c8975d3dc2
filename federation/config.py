"""Site configuration: how one site's exports differ from the dictionary.

A site declares its conventions once (column renames, code maps, date
formats, delimiter, decimal mark, encoding); every upload is read through
them so that validation can still speak the site's own language.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from federation.exceptions import ConfigurationError
from federation.paths import INFRA_DIR

_DATE_TOKENS = {"YYYY": "%Y", "MM": "%m", "DD": "%d"}


def date_format_to_strptime(fmt: str) -> str:
    """Translate a site's date format such as ``DD/MM/YYYY`` to ``%d/%m/%Y``."""
    out = fmt
    for token, code in _DATE_TOKENS.items():
        out = out.replace(token, code)
    if re.search(r"[A-Za-z]", out.replace("%Y", "").replace("%m", "").replace("%d", "")):
        raise ConfigurationError(
            f"date format {fmt!r} is not understood; use YYYY, MM and DD with separators, e.g. DD/MM/YYYY"
        )
    return out


class SiteConventions(BaseModel):
    """How a site's export files are written (declared per site, not per upload)."""

    model_config = ConfigDict(extra="forbid")

    delimiter: Literal[",", ";", "\t", "|"] = ","
    decimal_mark: Literal[".", ","] = "."
    encoding: str = "utf-8"
    date_formats: list[str] = Field(default_factory=lambda: ["YYYY-MM-DD"])
    # table -> {site column name -> dictionary column name}
    column_renames: dict[str, dict[str, str]] = Field(default_factory=dict)
    # table -> column -> {site value -> dictionary code}
    code_maps: dict[str, dict[str, dict[str, str]]] = Field(default_factory=dict)

    @field_validator("date_formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("declare at least one date format, e.g. YYYY-MM-DD")
        for fmt in value:
            date_format_to_strptime(fmt)
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}; use e.g. utf-8 or cp1252") from None
        return value


class SiteThresholds(BaseModel):
    """A site's own disclosure thresholds, applied by its node; they can only make the consortium's
    `ConsortiumDisclosurePolicy` stricter (a lower value than the consortium's is ignored)."""

    model_config = ConfigDict(extra="forbid")

    min_cell: int = 0
    min_site_rows: int = 0


class SiteConfig(BaseModel):
    """One consortium site."""

    model_config = ConfigDict(extra="forbid")

    site_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,40}$")
    name: str
    studies: list[str] = Field(default_factory=list)
    # study -> the dictionary version this site's exports follow, where it is not the study's own (one the
    # study still accepts: `also_accepts` in the registry)
    dictionaries: dict[str, str] = Field(default_factory=dict)
    conventions: SiteConventions = Field(default_factory=SiteConventions)
    disclosure: SiteThresholds = Field(default_factory=SiteThresholds)

    @classmethod
    def from_yaml(cls, path: Path) -> SiteConfig:
        if not path.exists():
            raise ConfigurationError(f"site configuration {path} does not exist")
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise ConfigurationError(f"site configuration {path} is invalid:\n{exc}") from exc

    def dictionary_for(self, study: Any) -> str:
        """The dictionary version of this site's exports of `study` (a `schema.Study`)."""
        version = str(self.dictionaries.get(study.study_id, study.schema_version))
        if version not in study.versions():
            raise ConfigurationError(
                f"{self.site_id} declares dictionary v{version} for {study.study_id}, which takes only "
                f"{', '.join('v' + v for v in study.versions())}; correct `dictionaries` in the site configuration")
        return version

    def to_yaml(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True),
                        encoding="utf-8")


def load_site(site: str, sites_dir: Path | None = None) -> SiteConfig:
    """Load a site by id from ``infra/sites/<site>.yaml`` or a YAML file path."""
    candidate = Path(site)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return SiteConfig.from_yaml(candidate)
    folder = sites_dir or INFRA_DIR / "sites"
    path = folder / f"{site}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigurationError(
            f"no site configuration for {site!r} in {folder}; known sites: {', '.join(known) or 'none'}. "
            "Pass --sites-dir or a path to the site's YAML file."
        )
    return SiteConfig.from_yaml(path)
