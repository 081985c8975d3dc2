"""Every bucket and key the platform writes or reads, in one module: the storage layout.

```
<landing>/<site>/<upload_id>/<table>.csv, manifest.json        written by the site
<reports>/<site>/<upload_id>/report.html|json, failures.csv     written by the pipeline, read by the site
<harmonized>/<site>/<study>/data/<upload_id>/<table>.parquet   written by the pipeline
<harmonized>/<site>/<study>/_versions/<NNNNNN>.json            the commit of each version
<pipeline>/catalog/<site>/uploads/<upload_id>.json             status of every upload
<pipeline>/quarantine/<site>/<upload_id>/...                   copies of rejected exports
```

Bucket names come from `StorageConfig`; backends (local folder, S3) only change the base. Storage
identities (`identities.py`) and DuckDB secret scopes are written from these prefixes too.
"""

from __future__ import annotations

import re

from federation.exceptions import FederationError
from federation.storage.config import StorageConfig

MANIFEST = "manifest.json"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


class InvalidName(FederationError):
    """A site, study or upload id that cannot be one path segment of a key."""


def checked(kind: str, value: str) -> str:
    """`value` if it is one safe key segment (letters, digits, `.`, `_`, `-`; no `..`, no `/`), else refuse:
    every key below is built from checked segments, so no id can point into another site's or study's data."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise InvalidName(f"{kind} {value!r} is not a valid id: use 1 to 80 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit (no '/', no '..')")
    return value


def landing_root(cfg: StorageConfig) -> str:
    return f"{cfg.landing_bucket}/"


def landing_site(cfg: StorageConfig, site: str) -> str:
    return f"{cfg.landing_bucket}/{checked('site id', site)}/"


def upload_prefix(cfg: StorageConfig, site: str, upload_id: str) -> str:
    return f"{landing_site(cfg, site)}{checked('upload id', upload_id)}/"


def parse_landing_key(cfg: StorageConfig, key: str) -> tuple[str, str, str] | None:
    """(site, upload_id, file name) of a landing key, or None for anything else."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != cfg.landing_bucket:
        return None
    if not all(NAME.fullmatch(p) and ".." not in p for p in parts[1:3]):
        return None
    return parts[1], parts[2], parts[3]


def reports_site(cfg: StorageConfig, site: str) -> str:
    return f"{cfg.reports_bucket}/{checked('site id', site)}/"


def report_prefix(cfg: StorageConfig, site: str, upload_id: str) -> str:
    return f"{reports_site(cfg, site)}{checked('upload id', upload_id)}/"


def harmonized_root(cfg: StorageConfig) -> str:
    return f"{cfg.harmonized_bucket}/"


def harmonized_site(cfg: StorageConfig, site: str) -> str:
    return f"{cfg.harmonized_bucket}/{checked('site id', site)}/"


def dataset_prefix(cfg: StorageConfig, site: str, study: str) -> str:
    return f"{harmonized_site(cfg, site)}{checked('study id', study)}/"


def versions_prefix(cfg: StorageConfig, site: str, study: str) -> str:
    return f"{dataset_prefix(cfg, site, study)}_versions/"


def version_key(cfg: StorageConfig, site: str, study: str, number: int) -> str:
    return f"{versions_prefix(cfg, site, study)}{number:06d}.json"


def data_key(cfg: StorageConfig, site: str, study: str, upload_id: str, table: str) -> str:
    return f"{dataset_prefix(cfg, site, study)}data/{checked('upload id', upload_id)}/{checked('table', table)}.parquet"


def is_version_of(cfg: StorageConfig, key: str, study: str) -> str | None:
    """The site whose version commit of `study` `key` is, or None."""
    parts = key.split("/")
    if len(parts) == 5 and parts[0] == cfg.harmonized_bucket and parts[2] == study and parts[3] == "_versions":
        return parts[1]
    return None


def catalog_root(cfg: StorageConfig) -> str:
    return f"{cfg.pipeline_bucket}/catalog/"


def catalog_site(cfg: StorageConfig, site: str) -> str:
    """One site's catalog entries; one level below the site, because SeaweedFS grants `List:<prefix>/*` only
    for listings deeper than the prefix itself (a site's node lists here with its own identity)."""
    return f"{catalog_root(cfg)}{checked('site id', site)}/uploads/"


def catalog_key(cfg: StorageConfig, site: str, upload_id: str) -> str:
    return f"{catalog_site(cfg, site)}{checked('upload id', upload_id)}.json"


def quarantine_prefix(cfg: StorageConfig, site: str, upload_id: str) -> str:
    return f"{cfg.pipeline_bucket}/quarantine/{checked('site id', site)}/{checked('upload id', upload_id)}/"
