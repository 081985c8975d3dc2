"""SQL for site summaries, generated from a checked request with bound parameters only."""

from __future__ import annotations

from typing import Any

from federation.query.model import Exists, Filter


def ident(name: str) -> str:
    """A column name, already checked against the allow-list, as a quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def _condition(f: Filter, params: list[Any]) -> str:
    col = ident(f.column)
    if f.op == "present":
        return f"{col} IS NOT NULL"
    if f.op in ("in", "not in"):
        values = f.value if isinstance(f.value, list) else [f.value]
        params.extend(values)
        marks = ", ".join("?" for _ in values)
        return f"{col} {'NOT IN' if f.op == 'not in' else 'IN'} ({marks})"
    params.append(f.value)
    op = "=" if f.op == "==" else "<>" if f.op == "!=" else f.op
    return f"{col} {op} ?"


def where(filters: list[Filter], exists: list[Exists], params: list[Any]) -> str:
    parts = [_condition(f, params) for f in filters]
    for e in exists:
        inner = " AND ".join(_condition(f, params) for f in e.where) or "TRUE"
        parts.append(f"pid IN (SELECT pid FROM unit_{e.table} WHERE {inner})")
    return " AND ".join(parts) if parts else "TRUE"


def subset(table: str, filters: list[Filter], exists: list[Exists]) -> tuple[str, list[Any]]:
    """`FROM unit_<table> WHERE <filters>` of a request, with its parameters."""
    params: list[Any] = []
    return f"FROM unit_{table} WHERE {where(filters, exists, params)}", params


def group_select(dims: list[str]) -> tuple[str, str]:
    if not dims:
        return "", ""
    cols = ", ".join(ident(d) for d in dims)
    return cols + ", ", f" GROUP BY {cols}"
