"""Disclosure guards as registered classes, so that each can be named, listed and, in tests only,
switched off through the registry (an attack test first shows the attack succeeding with its guard off).

A guard is a small class: its name comes from the class (`SubsetGuard` -> `subset`), its summary from
the docstring. Site guards run inside a site node before it answers (`federation.query.site.guards`);
central guards run in the query service (`federation.query.central.guards`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from federation.exceptions import FederationError


class QueryRefused(FederationError):
    """A query, or one site's part of it, that disclosure control refuses (terminal: asking again is useless)."""

    def __init__(self, reason: str, suggestion: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.suggestion = suggestion


class Guard:
    """Base of every disclosure guard; subclasses register themselves by name."""

    name: ClassVar[str]
    where: ClassVar[str] = "central"  # "site" (runs in the node) or "central" (runs in the service)
    registry: ClassVar[dict[str, type[Guard]]] = {}
    _off: ClassVar[set[str]] = set()

    def __init_subclass__(cls, abstract: bool = False, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        cls.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.removesuffix("Guard")).lower()
        Guard.registry[cls.name] = cls

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]

    @classmethod
    def enabled(cls) -> bool:
        return cls.name not in Guard._off


def registered() -> dict[str, type[Guard]]:
    """Every guard, site and central, by name."""
    import federation.query.central.disclosure  # noqa: F401 - registers its guard
    import federation.query.central.guards  # noqa: F401
    import federation.query.central.statistics.base  # noqa: F401 - registers the shared suppression guard
    import federation.query.central.statistics.cif  # noqa: F401
    import federation.query.central.statistics.km  # noqa: F401
    import federation.query.columns  # noqa: F401
    import federation.query.site.guards  # noqa: F401

    return dict(Guard.registry)


@contextmanager
def switched_off(*names: str) -> Iterator[None]:
    """Switch the named guards off inside the block (for attack tests; nothing else calls this)."""
    registered()
    unknown = [n for n in names if n not in Guard.registry]
    if unknown:
        raise KeyError(f"no guard named {unknown}; registered: {sorted(Guard.registry)}")
    before = set(Guard._off)
    Guard._off.update(names)
    try:
        yield
    finally:
        Guard._off.clear()
        Guard._off.update(before)
