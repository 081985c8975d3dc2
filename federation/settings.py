"""Deployment settings: where storage is, where site configurations are, and
the consortium's pseudonymisation key. Loaded from the YAML named by
FEDERATION_CONFIG (or --config); secrets come from the environment or files."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from federation.config import SiteConfig, load_site
from federation.exceptions import ConfigurationError
from federation.paths import INFRA_DIR
from federation.schema import use_registry
from federation.storage import StorageConfig

PSEUDONYM_KEY_ENV = "FEDERATION_PSEUDONYM_KEY"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    storage: StorageConfig = Field(default_factory=StorageConfig)
    # the deployment configuration folder: studies.yaml, sites/, query-policy.yaml, reports/ (decision 0011);
    # None: the package's examples (schemas/studies.yaml, infra/)
    registry_dir: Path | None = None
    sites_dir: Path = INFRA_DIR / "sites"
    pseudonym_key_file: Path | None = None
    max_file_mb: int = 4096
    # memory one validation may use; a larger export is checked in parts split by patient
    memory_mb: int = 1024
    audit_log: Path = Path("audit/queries.jsonl")
    query_policy: Path = INFRA_DIR / "query-policy.yaml"
    report_dir: Path = Path("consortium-report")
    # where failed DAG runs are reported (a JSON POST; $FEDERATION_NOTIFY_WEBHOOK wins): federation/notify.py
    notify_webhook: str | None = None

    def site(self, site_id: str) -> SiteConfig:
        return load_site(site_id, self.sites_dir)

    def site_ids(self) -> list[str]:
        return sorted(p.stem for p in self.sites_dir.glob("*.yaml"))

    def pseudonym_key(self) -> bytes:
        """The consortium secret for pid pseudonyms: env FEDERATION_PSEUDONYM_KEY, else pseudonym_key_file."""
        value = os.environ.get(PSEUDONYM_KEY_ENV)
        if value:
            return value.encode("utf-8")
        if self.pseudonym_key_file and self.pseudonym_key_file.exists():
            key = self.pseudonym_key_file.read_bytes().strip()
            if len(key) >= 16:
                return key
        raise ConfigurationError(
            f"no pseudonymisation key: set {PSEUDONYM_KEY_ENV} or pseudonym_key_file (at least 16 bytes). "
            "The key must stay the same across uploads so that each patient keeps their pid."
        )


def check_registry(folder: Path, policy_needed: bool = True) -> None:
    """Refuse a registry folder that is not one (a typo, an empty mount): never fall back to the package's
    example studies, sites or policy in its place."""
    missing = [name for name in ("studies.yaml", "sites") if not (folder / name).exists()]
    if policy_needed and not (folder / "query-policy.yaml").is_file():
        missing.append("query-policy.yaml")
    if missing:
        raise ConfigurationError(f"the registry folder {folder} has no {', '.join(missing)}: is the path right? "
                                 f"Create a registry with `federation registry init {folder}` (decision 0011)")


def load_settings(path: Path | None = None) -> Settings:
    """Settings from `path`, else $FEDERATION_CONFIG, else the defaults (local storage in ./storage)."""
    chosen = path or (Path(os.environ["FEDERATION_CONFIG"]) if os.environ.get("FEDERATION_CONFIG") else None)
    if chosen is None:
        return Settings()
    if not chosen.exists():
        raise ConfigurationError(f"settings file {chosen} does not exist")
    data = yaml.safe_load(chosen.read_text(encoding="utf-8")) or {}
    base = chosen.parent
    settings = Settings.model_validate(data)
    # Relative paths in the file are relative to the file.
    updates: dict[str, object] = {}
    registry = settings.registry_dir
    if registry is not None:
        registry = (registry if registry.is_absolute() else base / registry).resolve()
        check_registry(registry, policy_needed="query_policy" not in data)
        updates["registry_dir"] = registry
        use_registry(registry)  # the studies of this process: schema.load_registry
    if not settings.sites_dir.is_absolute() and "sites_dir" in data:
        updates["sites_dir"] = base / settings.sites_dir
    elif registry is not None and "sites_dir" not in data:
        updates["sites_dir"] = registry / "sites"
    if "query_policy" in data and not settings.query_policy.is_absolute():
        updates["query_policy"] = base / settings.query_policy
    elif registry is not None and "query_policy" not in data:
        updates["query_policy"] = registry / "query-policy.yaml"
    if not settings.report_dir.is_absolute():
        updates["report_dir"] = base / settings.report_dir
    if not settings.audit_log.is_absolute():
        updates["audit_log"] = base / settings.audit_log
    if settings.pseudonym_key_file and not settings.pseudonym_key_file.is_absolute():
        updates["pseudonym_key_file"] = base / settings.pseudonym_key_file
    storage = settings.storage
    if storage.kind == "local" and not storage.root.is_absolute():
        storage = storage.model_copy(update={"root": base / storage.root})
    if storage.secrets_dir and not storage.secrets_dir.is_absolute():
        storage = storage.model_copy(update={"secrets_dir": base / storage.secrets_dir})
    updates["storage"] = storage
    return settings.model_copy(update=updates)
