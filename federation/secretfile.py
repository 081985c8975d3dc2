"""Files that hold a secret (API tokens, the service's signing key): read only when no one else can."""

from __future__ import annotations

import os
from pathlib import Path

from federation.exceptions import ConfigurationError


def read_private(path: Path, what: str, hint: str = "") -> bytes:
    """The bytes of `path`, refused when it is missing or readable by group or others."""
    if not path.exists():
        raise ConfigurationError(f"{what} {path} does not exist" + (f"; {hint}" if hint else ""))
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(f"{what} {path} is readable by others; run: chmod 600 {path}")
    return path.read_bytes()


def token_from(env: str, path: Path | None, what: str) -> str:
    """A token from the environment variable `env`, else from the private file `path`."""
    value = os.environ.get(env)
    if value:
        return value.strip()
    if path is None:
        raise ConfigurationError(f"no token: set {env} or give a {what}")
    return read_private(path, what, f"set {env}, or put the token in this file (chmod 600)").decode("utf-8").strip()
