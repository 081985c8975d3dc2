"""Whether released cells are related by their definitions alone, whatever the data (for the no-oracle rule).

A combination of results that comes to an empty set tells the analyst nothing when it is empty *by
definition*: `age < 2` and `age >= 2` make up everyone; stage I at site-a and stages II-V at site-a make up
site-a. Any other empty combination is a fact about the data (no patient lies in it), and answering it
differently from a combination of 1..k-1 patients would make the refusal an oracle. This module decides
the first case from each cell's conditions (its filters, split, exists filters and group), its site and
the data versions, reading them as boxes: one set of values per column over a finite domain (the
dictionary's levels, `(missing)` included where a column may be empty; intervals between the thresholds
the cells use for a continuous column), one set of sites, and one exists-filter per boolean coordinate.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np

from federation.query.columns import CONTINUOUS, MISSING, declared_levels, holds, may_be_empty, unit_columns
from federation.query.policy import QueryPolicy

OTHER = "(any other value)"


@dataclass(frozen=True)
class CellDef:
    """What a released cell is by definition: its conditions (canonical JSON filters and `exists ...` text,
    as `AtomSpace.vectors` writes them), its site ("" for a combined cell) and its result's (site, version)s."""

    cond: frozenset[str]
    site: str
    versions: tuple[tuple[str, int], ...]

    def sites(self) -> frozenset[str]:
        return frozenset([self.site]) if self.site else frozenset(s for s, _ in self.versions)


Box = dict[str, frozenset[object]]


def is_disjoint_union(study_id: str, table: str, whole: CellDef, x: CellDef, y: CellDef,
                      policy: QueryPolicy | None = None) -> bool:
    """True only when `whole` is `x` and `y`, with nothing in both, by definition (for every possible data)."""
    cells = (whole, x, y)
    version: dict[str, int] = {}
    for c in cells:
        for site, v in c.versions:
            if c.site and site != c.site:
                continue
            if version.setdefault(site, v) != v:
                return False  # two versions of one site: which rows they share is a fact about the data
    boxes = _boxes(study_id, table, cells, policy)
    if boxes is None:
        return False
    bw, bx, by = boxes
    domain = {c: frozenset().union(*(b[c] for b in boxes)) for c in bw}
    if not any(not (bx[c] & by[c]) for c in domain):
        return False  # x and y may share rows
    if not all(bx[c] <= bw[c] and by[c] <= bw[c] for c in domain):
        return False
    return _size(bw) == _size(bx) + _size(by)


def _size(box: Box) -> int:
    return math.prod(len(v) for v in box.values())


def _boxes(study_id: str, table: str, cells: tuple[CellDef, ...], policy: QueryPolicy | None = None
           ) -> list[Box] | None:
    types = unit_columns(study_id, table)
    parsed: list[tuple[list[dict[str, object]], set[str]]] = []
    for c in cells:
        filters, exists = [], set()
        for text in c.cond:
            if text.startswith("exists "):
                exists.add(text)
            else:
                filters.append(json.loads(text))
        parsed.append((filters, exists))
    columns = sorted({str(f["column"]) for filters, _ in parsed for f in filters})
    all_exists = sorted(set().union(*(e for _, e in parsed)))
    all_sites = frozenset().union(*(c.sites() for c in cells))
    domains: dict[str, list[object]] = {}
    cuts: dict[str, list[float]] = {}  # a continuous column's thresholds, as the cells use them
    for col in columns:
        kind = types.get(col)
        if kind is None:
            return None
        if kind in CONTINUOUS:
            try:
                cuts[col] = sorted({float(f["value"]) for filters, _ in parsed for f in filters  # type: ignore[arg-type]
                                    if f["column"] == col and f["op"] != "present"})
            except (TypeError, ValueError):
                return None  # not a threshold (only with the cut-point guard off): nothing is claimed
            empty = [MISSING] if may_be_empty(study_id, table, col) else []
            domains[col] = [*range(len(cuts[col]) + 1), *empty]  # interval i is [cuts[i-1], cuts[i])
        else:
            # the policy's groups where it narrows a column: a value outside them makes a site take no
            # part in results grouped by it (`SiteGroupLevelsGuard`)
            levels = declared_levels(policy, study_id, table, col)
            if levels is None:
                mentioned = {_key(f["value"]) for filters, _ in parsed for f in filters
                             if f["column"] == col and f["op"] != "present"}
                levels = [*mentioned, OTHER, MISSING]
            domains[col] = list(levels)
    out: list[Box] = []
    for cell, (filters, exists) in zip(cells, parsed, strict=True):
        box: Box = {"(site)": cell.sites() & all_sites}
        box.update({col: frozenset(domains[col]) for col in columns})
        box.update({e: frozenset([True]) if e in exists else frozenset([True, False]) for e in all_exists})
        for f in filters:
            col = str(f["column"])
            allowed = _allowed(cuts.get(col), domains[col], f)
            if allowed is None:
                return None
            box[col] = box[col] & allowed
        out.append(box)
    return out


def _key(v: object) -> object:
    return json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v


def _allowed(cuts: list[float] | None, domain: list[object], f: dict[str, object]) -> frozenset[object] | None:
    """The domain points a filter keeps (a comparison never keeps an empty value), or None when the filter
    cannot be read as a set of them (then nothing is claimed). `cuts`: a continuous column's thresholds."""
    op, value = f["op"], f["value"]
    if op == "present":
        return frozenset(v for v in domain if v != MISSING)
    if cuts is not None:
        if op not in ("<", ">="):
            return None
        j = cuts.index(float(value))  # type: ignore[arg-type]
        return frozenset(range(j + 1)) if op == "<" else frozenset(range(j + 1, len(cuts) + 1))
    if op == "==" and value == MISSING:
        return frozenset([MISSING])  # a group of rows where the column is empty
    if op in ("==", "!=", "in", "not in") and (OTHER in domain):
        wanted = {_key(v) for v in (value if isinstance(value, list) else [value])}
        keep = {v for v in domain if v not in (MISSING, OTHER) and ((v in wanted) == (op in ("==", "in")))}
        if op in ("!=", "not in"):
            keep.add(OTHER)
        return frozenset(keep)
    return frozenset(v for v in domain if v != MISSING and holds(str(op), v, value))


MAX_PHANTOMS = 2048  # kinds of hypothetical patient in one empty hidden cell (beyond: not checked)


def phantoms(study_id: str, table: str, hidden: CellDef, rows: list[CellDef], policy: QueryPolicy | None = None
             ) -> list[tuple[str, list[bool]]] | None:
    """Every kind of patient the empty cell `hidden` could hold, by definition: a site and, for each cell of
    `rows`, whether such a patient would be in it (distinct kinds only). An empty hidden cell has no row in
    the data, so whether the released cells pin it down cannot be read from the data's atoms (there, the
    empty set is always "derivable"); the span check asks it of these hypothetical patients instead, exactly
    as if the cell held one. [] when the cell is empty by definition; None when some cell cannot be read as
    a box, or a site's version differs between them, or there are too many kinds (then nothing is claimed)."""
    return phantoms_of(study_id, table, [hidden], rows, policy)[0]


def phantoms_of(study_id: str, table: str, hiddens: list[CellDef], rows: list[CellDef],
                policy: QueryPolicy | None = None) -> list[list[tuple[str, list[bool]]] | None]:
    """`phantoms` of each of `hiddens` against the same `rows`, reading the cells as boxes once (a span group
    protects many empty cells with one set of rows). The domains are drawn from every cell: a cut point or
    a value only another hidden cell uses splits a kind into kinds no row tells apart, which are one."""
    if not hiddens:
        return []
    boxes = _boxes(study_id, table, (*hiddens, *rows), policy)
    if boxes is None:
        if len(hiddens) == 1 or _boxes(study_id, table, tuple(rows), policy) is None:
            return [None] * len(hiddens)
        return [phantoms_of(study_id, table, [h], rows, policy)[0] for h in hiddens]  # the unreadable one alone
    others = boxes[len(hiddens):]
    memo: dict[tuple[str, object], np.ndarray] = {}
    held: dict[str, set[int]] = {}
    for c in rows:
        for site, v in c.versions:
            held.setdefault(site, set()).add(v)
    return [_kinds(h, boxes[i], others, held, memo) for i, h in enumerate(hiddens)]


def _kinds(hidden: CellDef, mine: Box, others: list[Box], held: dict[str, set[int]],
           memo: dict[tuple[str, object], np.ndarray]) -> list[tuple[str, list[bool]]] | None:
    """`phantoms` of one hidden cell whose box is `mine`, against the rows' boxes `others` (`held`: the
    versions of each site the rows read); `memo` keeps each domain point's membership in the rows (shared by
    the hidden cells of one call)."""
    if any(site in held and held[site] - {v} for site, v in hidden.versions if site in hidden.sites()):
        return None  # a site read at another version in some row
    choices: list[list[tuple[object, np.ndarray]]] = []  # per coordinate: (a value, its membership by row)
    for coord, allowed in mine.items():
        kinds: dict[bytes, tuple[object, np.ndarray]] = {}
        for value in sorted(allowed, key=repr):
            sig = memo.get((coord, value))
            if sig is None:
                sig = np.fromiter((value in b[coord] for b in others), dtype=bool, count=len(others))
                memo[(coord, value)] = sig
            kinds.setdefault(sig.tobytes(), (value, sig))
        if not kinds:
            return []  # no value at all: the cell is empty by definition
        choices.append(list(kinds.values()))
    if math.prod(len(c) for c in choices) > MAX_PHANTOMS:
        return None
    site_at = list(mine).index("(site)")
    out: dict[tuple[str, bytes], np.ndarray] = {}
    for combo in itertools.product(*choices):
        member = np.logical_and.reduce([sig for _, sig in combo])
        out.setdefault((str(combo[site_at][0]), member.tobytes()), member)
    return [(site, member.tolist()) for (site, _), member in out.items()]
