"""One exception hierarchy for the whole package, so callers can catch
`FederationError` and every message names the value, the place and the fix."""

from __future__ import annotations


class FederationError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(FederationError):
    """A schema, study registry or site configuration is missing or wrong."""


class UnusableInputError(FederationError):
    """An export cannot be read as the declared CSV at all (exit code 2)."""

    def __init__(self, message: str, *, file: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.hint = hint
