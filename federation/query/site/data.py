"""Access to one site's published data, inside that site's node.

A `SiteData` opens an in-memory DuckDB over exactly one committed version of
one site's harmonized tables, reached with that site's query identity
(`query-<site>`): local files on embedded storage, `s3://` through DuckDB's
httpfs extension (loaded from the pinned duckdb-extension-httpfs package)
with a secret scoped to that site. Nothing else is visible to the
connection, so a site summary can only be computed from that site's rows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import numpy as np

from federation.exceptions import FederationError
from federation.ingest.publish import Version, get_version, latest_version
from federation.query.columns import EVENT_PATIENT_COLUMNS, PATIENT_LEVEL
from federation.query.model import UNIT_TABLES
from federation.storage import StorageConfig, layout, open_store
from federation.storage.config import load_credentials
from federation.storage.identities import query_identity


class SiteUnavailable(FederationError):
    """A site's data could not be reached or has no published version."""


def _httpfs_path() -> str:
    import duckdb_extension_httpfs

    base = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = base / "httpfs.duckdb_extension"
    if not path.exists():
        raise SiteUnavailable(f"the httpfs extension for DuckDB {duckdb.__version__} is not installed at {path}; "
                              "pin duckdb-extension-httpfs to the same version as duckdb")
    return str(path)


@dataclass
class SiteData:
    site_id: str
    version: Version
    con: duckdb.DuckDBPyConnection
    lock: threading.Lock
    cached: bool = False

    def sql(self, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.con.execute(query, params or []).fetchall()

    def arrays(self, query: str, params: list[Any] | None = None) -> dict[str, Any]:
        """Columns as numpy arrays; missing values become None (in an object array)."""
        with self.lock:
            data = self.con.execute(query, params or []).fetchnumpy()
        out: dict[str, Any] = {}
        for name, col in data.items():
            if isinstance(col, np.ma.MaskedArray):
                mask = np.ma.getmaskarray(col)
                if mask.any():
                    values = np.asarray(col.data, dtype=object)
                    values[mask] = None
                    col = values
                else:
                    col = np.asarray(col.data)
            out[name] = col
        return out

    def close(self) -> None:
        """Close the connection, unless the cache of opened versions keeps it for the next query."""
        if not self.cached:
            with self.lock:
                self.con.close()


# Opened versions are kept for the next queries: a version never changes once committed, and its
# connection is locked against any other access, so reusing it is safe and saves loading the tables.
_CACHE: OrderedDict[tuple[str, str, str, int, str], SiteData] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 32


def clear_site_cache() -> None:
    with _CACHE_LOCK:
        while _CACHE:
            _, data = _CACHE.popitem()
            data.cached = False
            data.close()


def open_site(cfg: StorageConfig, site_id: str, study_id: str, version: int | None = None) -> SiteData:
    """Open `site_id`'s latest (or pinned) version of `study_id` with the site's query credentials."""
    identity = query_identity(site_id)
    store = open_store(cfg, identity)
    v = (get_version(store, cfg, site_id, study_id, version) if version is not None
         else latest_version(store, cfg, site_id, study_id))
    if v is None:
        raise SiteUnavailable(f"{site_id} has no published version of {study_id}")
    key = (cfg.model_dump_json(), site_id, study_id, v.number, v.created)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    data = _load(cfg, store, identity, site_id, v)
    with _CACHE_LOCK:
        data.cached = True
        _CACHE[key] = data
        while len(_CACHE) > CACHE_SIZE:
            _, old = _CACHE.popitem(last=False)
            old.cached = False
            old.close()
    return data


def _load(cfg: StorageConfig, store: Any, identity: str, site_id: str, v: Version) -> SiteData:
    con = duckdb.connect(":memory:", config={"threads": 1, "enable_external_access": True})
    if cfg.kind == "local":
        from federation.storage.local import LocalStore

        assert isinstance(store, LocalStore)
        paths = {t: str(store.local_path(e["key"])) for t, e in v.tables.items()}
    else:
        creds = load_credentials(cfg, identity)
        endpoint = urlparse(cfg.endpoint)
        con.execute(f"LOAD '{_httpfs_path()}'")
        con.execute(
            "CREATE SECRET site_read (TYPE s3, KEY_ID ?, SECRET ?, ENDPOINT ?, URL_STYLE 'path', USE_SSL ?, "
            "REGION ?, SCOPE ?)",
            [creds.access_key, creds.secret_key.get_secret_value(), endpoint.netloc,
             endpoint.scheme == "https", cfg.region, f"s3://{layout.harmonized_site(cfg, site_id)}"])
        paths = {t: f"s3://{e['key']}" for t, e in v.tables.items()}
    for table, path in paths.items():
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet('{path}')")
    _unit_views(con, set(paths))
    # The rows are loaded; from here on no file or network access from query SQL.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return SiteData(site_id, v, con, threading.Lock())


def _unit_views(con: duckdb.DuckDBPyConnection, tables: set[str]) -> None:
    """The unit tables, joined once when the version is opened (a version never changes), so that every
    summary reads one table instead of repeating the joins."""
    d_cols = ", ".join(f"d.{c}" for c in PATIENT_LEVEL["diagnoses"])
    o_cols = ", ".join(f"o.{c}" for c in PATIENT_LEVEL["outcomes"])
    con.execute(f"""CREATE TABLE unit_patients AS
        SELECT p.*, {d_cols}, {o_cols}
        FROM patients p LEFT JOIN diagnoses d USING (pid) LEFT JOIN outcomes o USING (pid)""")
    pcols = ", ".join(f"u.{c}" for c in EVENT_PATIENT_COLUMNS)
    for events in UNIT_TABLES[1:]:  # one row per event (or result, or questionnaire), with the patient's columns
        if events in tables:
            con.execute(f"""CREATE TABLE unit_{events} AS
                SELECT e.*, {pcols} FROM {events} e JOIN unit_patients u USING (pid)""")
