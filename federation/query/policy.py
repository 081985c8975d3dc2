"""Disclosure policy and the per-study column allow-list, from infra/query-policy.yaml."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from federation.exceptions import ConfigurationError
from federation.paths import INFRA_DIR

NEVER_QUERYABLE = {"pid", "upload_id", "schema_version", "study_id", "ae_term", "patient_id"}


class DisclosurePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cell: int = Field(5, ge=2)
    min_site_rows: int = Field(10, ge=1)
    glm_max_param_ratio: float = Field(0.33, gt=0, le=1)
    quantile_probs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    differencing_lookback: int = Field(200, ge=0)

    def stricter(self, other: DisclosurePolicy | None) -> DisclosurePolicy:
        """The stricter of two policies, setting by setting (a site may only tighten)."""
        if other is None:
            return self
        return DisclosurePolicy(
            min_cell=max(self.min_cell, other.min_cell),
            min_site_rows=max(self.min_site_rows, other.min_site_rows),
            glm_max_param_ratio=min(self.glm_max_param_ratio, other.glm_max_param_ratio),
            quantile_probs=tuple(p for p in self.quantile_probs if p in other.quantile_probs),
            differencing_lookback=max(self.differencing_lookback, other.differencing_lookback),
        )


class QueryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disclosure: DisclosurePolicy = Field(default_factory=lambda: DisclosurePolicy())
    columns: dict[str, dict[str, list[str]]]

    def allowed(self, study_id: str, table: str) -> list[str]:
        per_study = self.columns.get(study_id) or self.columns.get("default") or {}
        if table not in per_study:
            raise ConfigurationError(
                f"table {table!r} is not queryable for {study_id}; queryable tables: {', '.join(per_study)}")
        return [c for c in per_study[table] if c not in NEVER_QUERYABLE]


@lru_cache(maxsize=4)
def load_query_policy(path: Path = INFRA_DIR / "query-policy.yaml") -> QueryPolicy:
    if not path.exists():
        raise ConfigurationError(f"query policy {path} does not exist")
    return QueryPolicy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
