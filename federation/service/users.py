"""People and nodes the query service knows, and their API tokens.

A token is 32 random bytes (`secrets`), shown once when it is created; the service stores only its
SHA-256 (a random token of that length needs no slow hash), so a copy of the user database gives no
token. Identity comes from the token only. `Authenticator` is the seam for other identity providers
(e.g. OIDC bearer tokens) later: anything that maps a bearer token to a `Principal`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from federation.exceptions import ConfigurationError

Role = Literal["analyst", "auditor", "admin", "site_coordinator", "node"]
ROLES: tuple[Role, ...] = ("analyst", "auditor", "admin", "site_coordinator", "node")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    site: str | None = None  # node and site coordinator: their site


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Principal | None: ...


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserStore:
    """Users in a SQLite file in the service's state folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("""CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, site TEXT,
            token_sha256 TEXT UNIQUE, created TEXT NOT NULL, revoked TEXT)""")
        path.chmod(0o600)

    def add(self, name: str, role: str, site: str | None = None) -> str:
        """Create a user and return its token (shown once)."""
        if not NAME.match(name):
            raise ConfigurationError(f"user name {name!r}: use 2-63 lowercase letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise ConfigurationError(f"role {role!r} is unknown; roles: {', '.join(ROLES)}")
        if role in ("node", "site_coordinator") and not site:
            raise ConfigurationError(f"a {role} belongs to one site: give --site")
        token = f"fed_{secrets.token_urlsafe(32)}"
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._lock:
            if self._db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise ConfigurationError(f"user {name!r} exists; rotate its token with `federation users rotate "
                                         f"{name}` or revoke it first")
            self._db.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?, NULL)", (name, role, site, _digest(token), now))
        return token

    def rotate(self, name: str) -> str:
        """A new token for `name`; the old one stops working at once."""
        token = f"fed_{secrets.token_urlsafe(32)}"
        with self._lock:
            cur = self._db.execute("UPDATE users SET token_sha256 = ?, revoked = NULL WHERE name = ?",
                                   (_digest(token), name))
        if cur.rowcount == 0:
            raise ConfigurationError(f"no user {name!r}")
        return token

    def revoke(self, name: str) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._lock:
            cur = self._db.execute("UPDATE users SET revoked = ? WHERE name = ?", (now, name))
        if cur.rowcount == 0:
            raise ConfigurationError(f"no user {name!r}")

    def authenticate(self, token: str) -> Principal | None:
        with self._lock:
            row = self._db.execute("SELECT name, role, site, revoked FROM users WHERE token_sha256 = ?",
                                   (_digest(token),)).fetchone()
        if row is None or row[3] is not None:
            return None
        return Principal(name=row[0], role=row[1], site=row[2])

    def is_revoked(self, token: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT revoked FROM users WHERE token_sha256 = ?", (_digest(token),)).fetchone()
        return row is not None and row[0] is not None

    def all(self) -> list[dict[str, str | None]]:
        with self._lock:
            rows = self._db.execute("SELECT name, role, site, created, revoked FROM users ORDER BY name").fetchall()
        return [dict(zip(("name", "role", "site", "created", "revoked"), r, strict=True)) for r in rows]

    def node_sites(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT site FROM users WHERE role = 'node' AND revoked IS NULL "
                                    "ORDER BY site").fetchall()
        return [r[0] for r in rows]
