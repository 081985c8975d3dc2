"""The consortium's query policy, from infra/query-policy.yaml: its disclosure thresholds
(`ConsortiumDisclosurePolicy`) and the per-study allow-list of queryable columns.

Both the query service (central disclosure control) and every site node (its own checks before it
answers) read it. A site may only tighten the thresholds (`SiteThresholds` in its site configuration);
`effective_thresholds` combines the two.
"""

from __future__ import annotations

import bisect
from functools import cached_property, lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from federation.config import SiteThresholds
from federation.exceptions import ConfigurationError
from federation.paths import INFRA_DIR

NEVER_QUERYABLE = {"pid", "upload_id", "schema_version", "study_id", "ae_term", "patient_id"}


class ConsortiumDisclosurePolicy(BaseModel):
    """The consortium's disclosure thresholds: held by the query service, never by an analyst."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cell: int = Field(5, ge=2)
    min_site_rows: int = Field(10, ge=1)
    glm_max_param_ratio: float = Field(0.33, gt=0, le=1)
    quantile_probs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
    km_grids_days: tuple[float, ...] = (30.4375, 91.3125, 182.625, 365.25)  # months, quarters, half-years, years
    km_max_horizon_days: float = Field(7305.0, gt=0)


class EffectiveThresholds(BaseModel):
    """The thresholds one site applies: the consortium's, tightened by the site's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cell: int = Field(ge=2)
    min_site_rows: int = Field(ge=1)
    glm_max_param_ratio: float = Field(gt=0, le=1)


def effective_thresholds(consortium: ConsortiumDisclosurePolicy, site: SiteThresholds | None) -> EffectiveThresholds:
    site = site or SiteThresholds()
    return EffectiveThresholds(min_cell=max(consortium.min_cell, site.min_cell),
                               min_site_rows=max(consortium.min_site_rows, site.min_site_rows),
                               glm_max_param_ratio=consortium.glm_max_param_ratio)


class CutPoints(BaseModel):
    """The thresholds a continuous column may be compared with: every `step` from `low` to `high`.

    Filters on a continuous column are `< cut` or `>= cut` at one of these points, so every subset an
    analyst can form is a union of declared bins [cut_i, cut_i+1): no arbitrary threshold can be moved
    across a single patient's value. `whole` rounds each point to a whole number (days at each month:
    30, 61, 91, ..., 365, 730, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: float = Field(gt=0)
    low: float = 0.0
    high: float
    whole: bool = False
    unit: str = ""

    @cached_property
    def points(self) -> tuple[float, ...]:
        n = int(round((self.high - self.low) / self.step))
        pts = [self.low + i * self.step for i in range(n + 1)]
        return tuple(sorted({float(round(p)) for p in pts} if self.whole else pts))

    def on_grid(self, value: float) -> bool:
        i = bisect.bisect_left(self.points, value - 1e-9)
        return i < len(self.points) and abs(self.points[i] - value) <= 1e-9 * max(1.0, abs(value))

    def nearest(self, value: float) -> list[float]:
        """The declared cut points just below and just above `value`."""
        i = bisect.bisect_left(self.points, value)
        return [self.points[j] for j in (i - 1, i) if 0 <= j < len(self.points)]

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"every {self.step:g}{unit} from {self.low:g} to {self.high:g}"


class QueryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disclosure: ConsortiumDisclosurePolicy = Field(default_factory=lambda: ConsortiumDisclosurePolicy())
    columns: dict[str, dict[str, list[str]]]
    cut_points: dict[str, CutPoints] = Field(default_factory=dict)
    # the groups offered for a categorical column (per study, or `default`), where the data dictionary declares
    # codes a study never uses: an empty group must be hidden and protected like a small one, which costs
    # the next-smallest group; values left out of the list must not occur (a site whose data holds one is
    # not grouped by that column)
    group_levels: dict[str, dict[str, list[str | int | bool]]] = Field(default_factory=dict)

    def allowed(self, study_id: str, table: str) -> list[str]:
        per_study = self.columns.get(study_id) or self.columns.get("default") or {}
        if table not in per_study:
            raise ConfigurationError(
                f"table {table!r} is not queryable for {study_id}; queryable tables: {', '.join(per_study)}")
        return [c for c in per_study[table] if c not in NEVER_QUERYABLE]

    def offered_levels(self, study_id: str, column: str) -> list[str | int | bool] | None:
        """The policy's groups for `column` in `study_id` (the study's own list, else the default's), or None."""
        for scope in (study_id, "default"):
            if column in self.group_levels.get(scope, {}):
                return list(self.group_levels[scope][column])
        return None


@lru_cache(maxsize=4)
def load_query_policy(path: Path = INFRA_DIR / "query-policy.yaml") -> QueryPolicy:
    if not path.exists():
        raise ConfigurationError(f"query policy {path} does not exist")
    try:
        return QueryPolicy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise ConfigurationError(f"query policy {path} is invalid:\n{exc}") from exc
