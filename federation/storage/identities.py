"""Who may touch which keys: the storage identities, enforced by the storage itself.

One identity per site (write and read its own landing prefix, read its own
reports), one for the pipeline, one query identity per site (read that site's
harmonized data only), and `storage-admin`, which only `federation storage
init` uses to create the buckets. Analysts get no identity at all. `render_seaweedfs`
turns this into SeaweedFS's `-s3.config` JSON; other stores (MinIO, AWS) get
the same policy as bucket policies (see docs/operations.md).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from federation.storage import layout
from federation.storage.config import Credentials, StorageConfig, load_credentials


def site_actions(site: str, cfg: StorageConfig) -> list[str]:
    landing, reports = layout.landing_site(cfg, site), layout.reports_site(cfg, site)
    return [f"Write:{landing}*", f"Read:{landing}*", f"List:{landing}*", f"Read:{reports}*", f"List:{reports}*"]


def query_identity(site: str) -> str:
    return f"query-{site}"


def query_actions(site: str, cfg: StorageConfig) -> list[str]:
    # the site's node: its harmonized data, and its own uploads' statuses for its coordinator (the catalog
    # grant sits one level above the listed prefix: see layout.catalog_site)
    prefixes = [layout.harmonized_site(cfg, site), f"{layout.catalog_root(cfg)}{site}/"]
    return [f"{action}:{prefix}*" for prefix in prefixes for action in ("Read", "List")]


def pipeline_actions(cfg: StorageConfig) -> list[str]:
    buckets = [cfg.landing_bucket, cfg.reports_bucket, cfg.harmonized_bucket, cfg.pipeline_bucket]
    return [f"{a}:{b}" for b in buckets for a in ("Read", "Write", "List")]


ADMIN = "storage-admin"  # creates the buckets (`federation storage init`); its key stays with the operators


def policy(sites: list[str], cfg: StorageConfig) -> dict[str, list[str]]:
    """identity -> allowed actions."""
    out = {ADMIN: ["Admin"], "pipeline": pipeline_actions(cfg)}
    for site in sites:
        out[site] = site_actions(site, cfg)
        out[query_identity(site)] = query_actions(site, cfg)
    return out


def render_seaweedfs(sites: list[str], cfg: StorageConfig, creds: dict[str, Credentials] | None = None) -> str:
    """SeaweedFS identities JSON; without `creds`, keys are read from the configured secrets."""
    identities: list[dict[str, Any]] = []
    for name, actions in policy(sites, cfg).items():
        c = creds[name] if creds is not None else load_credentials(cfg, name)
        identities.append({"name": name, "credentials": [
            {"accessKey": c.access_key, "secretKey": c.secret_key.get_secret_value()}], "actions": actions})
    return json.dumps({"identities": identities}, indent=2) + "\n"


def new_secrets(sites: list[str], cfg: StorageConfig, secrets_dir: Path,
                only_missing: bool = False) -> dict[str, Credentials]:
    """Create random keys as `<secrets_dir>/<identity>.json` (mode 0600): for every identity, or with
    `only_missing` just for identities that have no key yet (onboarding keeps the others' keys)."""
    from pydantic import SecretStr

    secrets_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Credentials] = {}
    for name in policy(sites, cfg):
        if only_missing and (secrets_dir / f"{name}.json").exists():
            out[name] = load_credentials(cfg.model_copy(update={"secrets_dir": secrets_dir}), name)
            continue
        cred = Credentials(access_key=f"{name}-{secrets.token_hex(4)}", secret_key=SecretStr(secrets.token_hex(20)))
        path = secrets_dir / f"{name}.json"
        path.write_text(json.dumps({"access_key": cred.access_key,
                                    "secret_key": cred.secret_key.get_secret_value()}), encoding="utf-8")
        path.chmod(0o600)
        out[name] = cred
    return out
