"""Storage configuration and credentials.

Endpoints and bucket names come from configuration; credentials come from the
environment or from secret files, never from code, and are never logged
(`SecretStr`). An identity is a storage principal: `pipeline`, `query-<site>`,
or a site id for the site's own uploads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from federation.exceptions import ConfigurationError
from federation.storage.base import ObjectStore


class Credentials(BaseModel):
    model_config = ConfigDict(frozen=True)
    access_key: str
    secret_key: SecretStr


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "s3"] = "local"
    root: Path = Path("storage")  # local only
    endpoint: str = ""  # s3 only, e.g. http://127.0.0.1:8333
    region: str = "us-east-1"
    secrets_dir: Path | None = None  # holds <identity>.json with access_key and secret_key
    landing_bucket: str = "landing"
    reports_bucket: str = "reports"
    harmonized_bucket: str = "harmonized"
    pipeline_bucket: str = "pipeline"


def _env_name(identity: str, part: str) -> str:
    return f"FEDERATION_S3_{identity.upper().replace('-', '_')}_{part}"


def load_credentials(config: StorageConfig, identity: str) -> Credentials:
    """Credentials of `identity`: env FEDERATION_S3_<IDENTITY>_ACCESS_KEY/_SECRET_KEY, else a secret file."""
    access = os.environ.get(_env_name(identity, "ACCESS_KEY"))
    secret = os.environ.get(_env_name(identity, "SECRET_KEY"))
    if access and secret:
        return Credentials(access_key=access, secret_key=SecretStr(secret))
    if config.secrets_dir is not None:
        path = config.secrets_dir / f"{identity}.json"
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            return Credentials(access_key=data["access_key"], secret_key=SecretStr(data["secret_key"]))
    raise ConfigurationError(
        f"no storage credentials for identity {identity!r}: set {_env_name(identity, 'ACCESS_KEY')} and "
        f"{_env_name(identity, 'SECRET_KEY')}, or put {identity}.json in the secrets folder "
        f"({config.secrets_dir or 'storage.secrets_dir is not set'})"
    )


def open_store(config: StorageConfig, identity: str = "pipeline") -> ObjectStore:
    """The store as seen by `identity` (local storage has no identities: every role sees the folder)."""
    if config.kind == "local":
        from federation.storage.local import LocalStore

        return LocalStore(config.root)
    from federation.storage.s3 import S3Store

    if not config.endpoint:
        raise ConfigurationError("storage.kind is s3 but storage.endpoint is empty; set it, e.g. http://host:8333")
    creds = load_credentials(config, identity)
    return S3Store(config.endpoint, creds.access_key, creds.secret_key.get_secret_value(), config.region,
                   identity=identity)
