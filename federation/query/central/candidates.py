"""Which earlier footprints the exact differencing check must look at, found through an index of released
cells: their sizes per site and a 512-bit sketch of their rows per site.

Pairs. Two cells can only isolate 1..k-1 patients by subtraction if one lies inside the other and the
difference is 1..k-1 rows, as the analyst sees it (over all sites) or as a site insider does (without
their own site's rows). A cell inside another has, at every site, no more rows and its sketch bits inside
the other's (bit md5(row identity) mod 512 per row; rows keep their identity across versions). The test
on sizes and sketches never misses a nested pair (it can only let through a few that are not nested), and
runs over every earlier cell at once with numpy, so the exact check (`atoms`, `differencing`) compares
the new query with a handful of candidates instead of the whole history.

Triples. Three results combine into a small set when, for example, `age < 2`, `age >= 1.5` and no filter
give the bin [1.5, 2). Triples are searched among *related* footprints: those whose filters differ from
the new query's only in thresholds on continuous columns (or have none). A triple through unrelated
categorical filters is not searched (stated in the decision record as an open limit).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from federation.query.central.history import Footprint, key_json

Cells = list[tuple[tuple[object, ...], int, str]]  # (cell key on the footprint's dims, units, sketch hex)
Sizes = dict[str, Cells]  # site -> its cells
WORDS = 8


def _sketch(hexed: str) -> np.ndarray:
    return np.array([int(hexed[16 * i:16 * (i + 1)], 16) for i in range(WORDS)], dtype=np.uint64)


@dataclass
class CellTable:
    """Cells of many footprints (combined cells, i.e. by footprint and key), decomposed per site."""

    owners: np.ndarray  # footprint index of each cell
    n: np.ndarray  # (sites, cells) units
    sketch: np.ndarray  # (sites, cells, WORDS) uint64

    @classmethod
    def build(cls, entries: list[tuple[int, Sizes]], sites: list[str]) -> CellTable:
        where: dict[tuple[int, tuple[object, ...]], int] = {}
        owners: list[int] = []
        parts: list[tuple[int, int, int, str]] = []  # (site, cell, units, sketch)
        for i, sizes in entries:
            for site, cells in sizes.items():
                if site not in sites:
                    continue
                for key, units, sketch in cells:
                    cell = where.setdefault((i, tuple(key)), len(owners))
                    if cell == len(owners):
                        owners.append(i)
                    parts.append((sites.index(site), cell, units, sketch))
        n = np.zeros((len(sites), len(owners)), dtype=np.int64)
        sk = np.zeros((len(sites), len(owners), WORDS), dtype=np.uint64)
        for s, c, units, sketch in parts:
            n[s, c] = units
            sk[s, c] = _sketch(sketch)
        return cls(owners=np.asarray(owners, dtype=np.int64), n=n, sketch=sk)


def nested_near(new: Sizes, earlier: CellTable, sites: list[str], k: int) -> set[int]:
    """Footprints with a cell that may contain, or lie inside, a new cell with 1..k-1 rows between them:
    over all sites, over all sites but one (an insider's view), or at one site."""
    if not len(earlier.owners):
        return set()
    mine = CellTable.build([(0, new)], sites)
    found: set[int] = set()
    for q in range(len(mine.owners)):
        qn, qs = mine.n[:, q:q + 1], mine.sketch[:, q:q + 1, :]
        d = earlier.n - qn  # (sites, cells): rows of the earlier cell minus the new one's, per site
        # cells of 1..k-1 rows are suppressed when released: only cells of at least k can be subtracted
        shown_all = (earlier.n.sum(axis=0) >= k) & (qn.sum() >= k)
        shown_site = (earlier.n >= k) & (qn >= k)
        keep = np.zeros(len(earlier.owners), dtype=bool)
        for sign in (1, -1):  # new inside earlier, then earlier inside new
            dd = sign * d
            inside = (dd >= 0).all(axis=0) & _bits_inside(qs, earlier.sketch, sign)
            small_all = (dd.sum(axis=0) >= 1) & (dd.sum(axis=0) <= k - 1)
            rest = dd.sum(axis=0)[None, :] - dd  # the difference without one site's rows (insider)
            small_insider = ((rest >= 1) & (rest <= k - 1)).any(axis=0)
            small_site = ((dd >= 1) & (dd <= k - 1) & shown_site & _site_bits_inside(qs, earlier.sketch, sign)
                          ).any(axis=0)
            keep |= (inside & shown_all & (small_all | small_insider)) | small_site
        found.update(int(x) for x in np.unique(earlier.owners[keep]))
    return found


def _site_bits_inside(q: np.ndarray, e: np.ndarray, sign: int) -> np.ndarray:
    """(sites, cells): at each site, the smaller side's sketch bits lie inside the larger side's."""
    small, big = (q, e) if sign == 1 else (e, q)
    return np.asarray(((small & ~big) == 0).all(axis=2))


def _bits_inside(q: np.ndarray, e: np.ndarray, sign: int) -> np.ndarray:
    return np.asarray(_site_bits_inside(q, e, sign).all(axis=0))


PATTERNS = ("q+a-b", "a+b-q", "q-a-b", "a-b-q")


def triple_near(new: Sizes, family: CellTable, sites: list[str], k: int) -> set[int]:
    """Footprints of the same family with cells a, b whose sizes could make `q + a - b`, `a + b - q`,
    `q - a - b` or `a - b - q` a set of 1..k-1 rows for a new cell q: over all sites (combined cells) and
    at each site alone (per-site cells); sizes and sketches only."""
    if not len(family.owners):
        return set()
    mine = CellTable.build([(0, new)], sites)
    found: set[int] = set()
    views = [slice(None)] + [slice(s, s + 1) for s in range(len(sites))]
    for view in views:
        n, sk = family.n[view], family.sketch[view]
        totals = n.sum(axis=0)
        shown = totals >= k
        for q in range(len(mine.owners)):
            qn, qs = mine.n[view, q:q + 1], mine.sketch[view, q:q + 1, :]
            t = int(qn.sum())
            if t < k:
                continue
            inside_q = shown & (n <= qn).all(axis=0) & _bits_inside(qs, sk, -1)
            holds_q = shown & (n >= qn).all(axis=0) & _bits_inside(qs, sk, 1)
            for pattern in PATTERNS:
                pool = {"q-a-b": inside_q, "a-b-q": holds_q}.get(pattern, shown)
                idx = np.nonzero(pool)[0]
                if not len(idx):
                    continue
                others = np.nonzero(inside_q if pattern == "q-a-b" else shown)[0]
                order = others[np.argsort(totals[others], kind="stable")]
                sizes = totals[order]
                na = totals[idx]
                lo, hi = {"q+a-b": (t + na - (k - 1), t + na - 1), "a+b-q": (t - na + 1, t - na + (k - 1)),
                          "q-a-b": (t - na - (k - 1), t - na - 1), "a-b-q": (na - t - (k - 1), na - t - 1)
                          }[pattern]
                first = np.searchsorted(sizes, lo, side="left")
                last = np.searchsorted(sizes, hi, side="right")
                counts = last - first
                if not counts.any():
                    continue
                # every (a, b) pair inside a window, then the same test at every site of the view: the
                # derived set has 0..k-1 rows at each site (its sites' parts add up to the total)
                a_cells = np.repeat(idx, counts)
                starts = np.repeat(first - np.cumsum(counts) + counts, counts)
                b_cells = order[np.arange(counts.sum()) + starts]
                na_s, nb_s = n[:, a_cells], n[:, b_cells]
                v = {"q+a-b": qn + na_s - nb_s, "a+b-q": na_s + nb_s - qn, "q-a-b": qn - na_s - nb_s,
                     "a-b-q": na_s - nb_s - qn}[pattern]
                ok = (a_cells != b_cells) & ((v >= 0) & (v <= k - 1)).all(axis=0)
                ok &= (v.sum(axis=0) >= 1) & (v.sum(axis=0) <= k - 1)
                a_ok, b_ok = a_cells[ok], b_cells[ok]
                # the inclusions each pattern needs, on sketches (never false for a true inclusion)
                sa, sb = sk[:, a_ok, :], sk[:, b_ok, :]
                small, big = {"q+a-b": (sb, sa | qs), "a+b-q": (np.broadcast_to(qs, sa.shape), sa | sb),
                              "q-a-b": (sb, np.broadcast_to(qs, sb.shape)), "a-b-q": (sb, sa)}[pattern]
                fits = ((small & ~big) == 0).all(axis=(0, 2))
                found.update(int(x) for x in np.unique(family.owners[np.concatenate([a_ok[fits], b_ok[fits]])]))
    return found


def related(new: Footprint, earlier: Footprint) -> bool:
    """Filters that differ from the new query's only in thresholds on continuous columns (`<`, `>=` at cut
    points), including no threshold at all: the family in which half-lines and the whole combine into a
    bin (`age < 2` + `age >= 1.5` - everyone = [1.5, 2)). Triples are searched among these."""
    return _categorical(new) == _categorical(earlier)


@lru_cache(maxsize=200_000)
def _categorical(fp: Footprint) -> str:
    d = json.loads(fp.subset)
    kept = [f for f in d["filters"] if f["op"] not in ("<", ">=")]
    return json.dumps([sorted(json.dumps(f, sort_keys=True) for f in kept), d["exists"]], sort_keys=True)


@dataclass
class Rows:
    """A footprint's rows at each site as sketches (Python ints): all of them, and those of its hidden cells."""

    rows: dict[str, int]
    hidden: dict[str, int]
    cells: dict[str, list[int]]


def rows_of(fp: Footprint, sizes: Sizes) -> Rows:
    by_level: dict[tuple[str, ...], set[tuple[str, str]]] = {}
    for site, level, key in fp.hidden:
        by_level.setdefault(level, set()).add((site, key))
    out = Rows(rows={}, hidden={}, cells={})
    for site, cells in sizes.items():
        sketches = [int(sketch, 16) for _, _, sketch in cells]
        whole = 0
        for sk in sketches:
            whole |= sk
        hid = 0
        for level, marks in by_level.items():
            pos = [fp.dims.index(d) for d in level]
            for (cell_key, _, _), sk in zip(cells, sketches, strict=True):
                name = key_json([cell_key[p] for p in pos])
                if ("", name) in marks or (site, name) in marks:
                    hid |= sk
        out.rows[site], out.hidden[site], out.cells[site] = whole, hid, sketches
    return out


def _inside_touching(cells: list[int], whole: int, container: int, hidden: int) -> bool:
    """A cell (or the whole) lies inside `container` (sketch bits) and shares rows with `hidden`."""
    return any(c & ~container == 0 and c & hidden for c in [*cells, whole] if c)


def hidden_linked(new: Footprint, new_sizes: Sizes, earlier: list[Footprint], sizes: list[Sizes]
                  ) -> list[tuple[int, list[int]]]:
    """Groups for the span check (`span`): (focus, the earlier footprints around it). A focus is a result with
    hidden cells: an earlier one whose hidden cells share rows with a new cell lying inside its rows at some
    site, or the new one (index -1) when an earlier cell lies inside its rows and touches its hidden cells.
    Around each focus: its companions, the results on the same rows (same filters, same versions) by fewer
    group-by columns, which give its totals; for the new focus, the earlier results linked to it as well."""
    mine = rows_of(new, new_sizes)
    groups: list[tuple[int, list[int]]] = []
    same_rows: dict[tuple[str, tuple[tuple[str, int], ...]], list[int]] = {}
    for i, fp in enumerate(earlier):
        same_rows.setdefault((fp.subset_key(), fp.versions), []).append(i)

    def companions(fp: Footprint, exclude: int) -> list[int]:
        return [j for j in same_rows.get((fp.subset_key(), fp.versions), [])
                if j != exclude and set(earlier[j].dims) <= set(fp.dims)]

    linked_to_new: list[int] = []
    for i, (fp, sz) in enumerate(zip(earlier, sizes, strict=True)):
        if not any(site in sz for site in new.sites):
            continue
        theirs = rows_of(fp, sz) if fp.hidden or new.hidden else None
        if theirs is None:
            continue
        for site in set(new.sites) & set(sz):
            if fp.hidden and _inside_touching(mine.cells.get(site, []), mine.rows.get(site, 0),
                                              theirs.rows[site], theirs.hidden[site]):
                groups.append((i, [i, *companions(fp, i)]))
                break
        if new.hidden and any(_inside_touching(theirs.cells[site], theirs.rows[site], mine.rows.get(site, 0),
                                               mine.hidden.get(site, 0)) for site in set(new.sites) & set(sz)):
            linked_to_new.append(i)
    if new.hidden and linked_to_new:
        around = sorted(set(linked_to_new) | set(companions(new, -1)))
        groups.append((-1, around))
    return groups
