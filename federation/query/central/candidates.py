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
give the bin [1.5, 2), or everyone, `age_group in [<1, 1-4]` and `age_group == 5-9` give the 10-14
group. Triples are searched among *related* footprints (filters that differ from the new query's only in
thresholds on continuous columns, or none) and among the most recent footprints of any filters
(`guards.find_candidates` sets both bounds).

Groups for the span check (`span`): around results with hidden cells (`hidden_linked`), and filter
families, results whose filters use only the columns the new one filters on (`filter_families`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from federation.query.central.differencing import EmptyCombinationGuard, TwiceGuard
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


def _cells(new: Sizes, earlier: CellTable, sites: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each new cell's sizes (sites, 1) and sketches (sites, 1, WORDS); none when there is nothing earlier."""
    if not len(earlier.owners):
        return
    mine = CellTable.build([(0, new)], sites)
    for q in range(len(mine.owners)):
        yield mine.n[:, q:q + 1], mine.sketch[:, q:q + 1, :]


def nested_near(new: Sizes, earlier: CellTable, sites: list[str], k: int, several: bool = False) -> set[int]:
    """Footprints with a cell that may contain, or lie inside, a new cell with 1..k-1 rows between them:
    over all sites, over all sites but one (an insider's view), or at one site. `several`: the units are
    distinct patients of a table with several rows per patient, so the rows between two nested cells may
    belong to patients of the smaller one (its count minus the other's is only a lower bound, possibly 0)."""
    found: set[int] = set()
    least = 0 if several else 1
    for qn, qs in _cells(new, earlier, sites):
        d = earlier.n - qn  # (sites, cells): rows of the earlier cell minus the new one's, per site
        # cells of 1..k-1 rows are suppressed when released: only cells of at least k can be subtracted
        shown_all = (earlier.n.sum(axis=0) >= k) & (qn.sum() >= k)
        shown_site = (earlier.n >= k) & (qn >= k)
        keep = np.zeros(len(earlier.owners), dtype=bool)
        for sign in (1, -1):  # new inside earlier, then earlier inside new
            dd = sign * d
            inside = (dd >= 0).all(axis=0) & _bits_inside(qs, earlier.sketch, sign)
            small_all = (dd.sum(axis=0) >= least) & (dd.sum(axis=0) <= k - 1)
            rest = dd.sum(axis=0)[None, :] - dd  # the difference without one site's rows (insider)
            small_insider = ((rest >= least) & (rest <= k - 1)).any(axis=0)
            small_site = ((dd >= least) & (dd <= k - 1) & shown_site & _site_bits_inside(qs, earlier.sketch, sign)
                          ).any(axis=0)
            keep |= (inside & shown_all & (small_all | small_insider)) | small_site
        found.update(int(x) for x in np.unique(earlier.owners[keep]))
    return found


def equal_near(new: Sizes, earlier: CellTable, sites: list[str]) -> set[int]:
    """Footprints with a cell that may hold the same rows as a new cell at some site (same size there, same
    sketch bits): for `AtomSpace.same_patients`, which compares their rows whatever their conditions."""
    found: set[int] = set()
    for qn, qs in _cells(new, earlier, sites):
        same = (earlier.n == qn) & (qn > 0) & np.asarray((earlier.sketch == qs).all(axis=2))
        found.update(int(x) for x in np.unique(earlier.owners[same.any(axis=0)]))
    return found


def may_share_conditions(a: Footprint, b: Footprint) -> bool:
    """Whether some cell of `a` may have exactly the conditions of some cell of `b` (filters, split, exists
    filters and group, as `AtomSpace.vectors` writes them): `AtomSpace.same_patients` lets a new cell through
    when an earlier cell of its own conditions had its patients. On columns only: never false when they may."""
    fa, ea = a.conditions()
    fb, eb = b.conditions()
    if ea != eb:
        return False
    only_a = [json.loads(f) for f in fa - fb]
    only_b = [json.loads(f) for f in fb - fa]
    eq_a = {f["column"] for f in map(json.loads, fa) if f["op"] == "=="}
    eq_b = {f["column"] for f in map(json.loads, fb) if f["op"] == "=="}
    for la in a.levels:
        for lb in b.levels:
            if (all(f["op"] == "==" and f["column"] in lb for f in only_a)
                    and all(f["op"] == "==" and f["column"] in la for f in only_b)
                    and set(la) <= set(lb) | eq_b and set(lb) <= set(la) | eq_a):
                return True
    return False


def _site_bits_inside(q: np.ndarray, e: np.ndarray, sign: int) -> np.ndarray:
    """(sites, cells): at each site, the smaller side's sketch bits lie inside the larger side's."""
    small, big = (q, e) if sign == 1 else (e, q)
    return np.asarray(((small & ~big) == 0).all(axis=2))


def _bits_inside(q: np.ndarray, e: np.ndarray, sign: int) -> np.ndarray:
    return np.asarray(_site_bits_inside(q, e, sign).all(axis=0))


PATTERNS = ("q+a-b", "a+b-q", "q-a-b", "a-b-q")


def triple_near(new: Sizes, family: CellTable, sites: list[str], k: int, several: bool = False) -> set[int]:
    """Footprints of the same family with cells a, b whose sizes could make `q + a - b`, `a + b - q`,
    `q - a - b` or `a - b - q` a set of 1..k-1 rows for a new cell q: over all sites (combined cells) and
    at each site alone (per-site cells); sizes and sketches only. `several`: the units are distinct patients
    of a table with several rows per patient, which do not add up over cells (a patient in a and in b is
    one): the windows are those bounds allow (e.g. for `q + a - b`, b holds q and a but what the few derived
    patients hold, so between max(|q|, |a|) - (k - 1) and |q| + |a|)."""
    if not len(family.owners):
        return set()
    mine = CellTable.build([(0, new)], sites)
    # the partners a, b: earlier cells, and the new result's other cells (an earlier count minus two groups
    # of a new mean); never two new ones (owner -1)
    base = len(family.owners)
    ext = CellTable(owners=np.concatenate([family.owners, np.full(len(mine.owners), -1)]),
                    n=np.concatenate([family.n, mine.n], axis=1),
                    sketch=np.concatenate([family.sketch, mine.sketch], axis=1))
    found: set[int] = set()
    views = [slice(None)] + [slice(s, s + 1) for s in range(len(sites))]
    for view in views:
        n, sk = ext.n[view], ext.sketch[view]
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
                e = 1 if EmptyCombinationGuard.enabled() else 0  # an empty combination counts (unless by definition)
                m = TwiceGuard.slack(k)  # a set counted once or twice (`differencing.TwiceGuard`)
                if several:
                    lo, hi = {"q+a-b": (np.maximum(t, na) - m, t + na), "a+b-q": (t - na, t + m),
                              "q-a-b": (t - na - m, np.full_like(na, t)), "a-b-q": (na - t - m, na)
                              }[pattern]
                else:
                    lo, hi = {"q+a-b": (t + na - m, t + na - 1 + e),
                              "a+b-q": (t - na + 1 - e, t - na + m),
                              "q-a-b": (t - na - m, t - na - 1 + e), "a-b-q": (na - t - m, na - t - 1 + e)
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
                ok = (a_cells != b_cells) & (a_cells != base + q) & (b_cells != base + q)
                ok &= (a_cells < base) | (b_cells < base)
                if not several:  # sums of patients' counts are the derived set's: 0..k-1 at each site
                    ok &= ((v >= 0) & (v <= k - 1)).all(axis=0)
                    ok &= (v.sum(axis=0) >= 1 - e) & (v.sum(axis=0) <= k - 1)
                a_ok, b_ok = a_cells[ok], b_cells[ok]
                # the inclusions each pattern needs, on sketches (never false for a true inclusion)
                sa, sb = sk[:, a_ok, :], sk[:, b_ok, :]
                small, big = {"q+a-b": (sb, sa | qs), "a+b-q": (np.broadcast_to(qs, sa.shape), sa | sb),
                              "q-a-b": (sb, np.broadcast_to(qs, sb.shape)), "a-b-q": (sb, sa)}[pattern]
                fits = ((small & ~big) == 0).all(axis=(0, 2))
                found.update(int(x) for x in np.unique(ext.owners[np.concatenate([a_ok[fits], b_ok[fits]])]) if x >= 0)
    return found


def related(new: Footprint, earlier: Footprint) -> bool:
    """Filters that differ from the new query's only in thresholds on continuous columns (`<`, `>=` at cut
    points), including no threshold at all: the family in which half-lines and the whole combine into a
    bin (`age < 2` + `age >= 1.5` - everyone = [1.5, 2)). Triples are searched among these."""
    return _categorical(new) == _categorical(earlier)


@lru_cache(maxsize=200_000)
def _categorical(fp: Footprint) -> str:
    d = json.loads(fp.subset)
    kept = [f for f in [*d["filters"], *d.get("split", [])] if f["op"] not in ("<", ">=")]
    return json.dumps([sorted(json.dumps(f, sort_keys=True) for f in kept), d["exists"]], sort_keys=True)


@dataclass
class Pieces:
    """A footprint's cells at one site (group-by level): sizes, sketches (Python ints), which are hidden
    (their own cell, or part of a hidden total), and the sketch of all its rows there."""

    sizes: list[int]
    sketches: list[int]
    hidden: list[bool]
    rows: int

    def cells(self) -> list[tuple[int, int]]:
        """(size, sketch) of each cell and of all of them together (the footprint's rows at the site)."""
        return [*zip(self.sizes, self.sketches, strict=True), (sum(self.sizes), self.rows)]


_PIECES: dict[tuple[str, tuple[str, ...]], dict[str, Pieces]] = {}


def pieces_of(fp: Footprint, sizes: Sizes) -> dict[str, Pieces]:
    """Per site, the footprint's cells as `Pieces` (cached: a footprint's cells never change, but a site
    that was down when it was sized answers later)."""
    cache = (fp.key(), tuple(sorted(sizes)))
    cached = _PIECES.get(cache)
    if cached is not None:
        return cached
    by_level: dict[tuple[str, ...], set[tuple[str, str]]] = {}
    for site, level, key in fp.hidden:
        by_level.setdefault(level, set()).add((site, key))
    out: dict[str, Pieces] = {}
    for site, cells in sizes.items():
        sketches = [int(sketch, 16) for _, _, sketch in cells]
        hidden = [False] * len(cells)
        for level, marks in by_level.items():
            pos = [fp.dims.index(d) for d in level]
            for c, (cell_key, _, _) in enumerate(cells):
                name = key_json([cell_key[p] for p in pos])
                hidden[c] = hidden[c] or ("", name) in marks or (site, name) in marks
        whole = 0
        for sk in sketches:
            whole |= sk
        out[site] = Pieces(sizes=[n for _, n, _ in cells], sketches=sketches, hidden=hidden, rows=whole)
    if len(_PIECES) > 200_000:
        _PIECES.clear()
    _PIECES[cache] = out
    return out


def _aligned(cells: list[tuple[int, int]], focus: Pieces, k: int) -> bool:
    """Some cell (size, sketch) may be a union of the focus's cells that includes a hidden one (then it shows
    the hidden rows' total): it lies inside the focus's rows, a hidden cell's bits lie inside it, the cells
    whose bits lie inside it cover its bits, and their sizes can add up to its size with a hidden one
    among them. Sizes and sketches only: never false for a true union. A cell holding all the focus's rows
    at the site shows its total there, and so the sum of its hidden cells: a focus then only if that sum is
    1..k-1 (a larger sum is still checked with other results, by the filter families)."""
    # a hidden cell of no row has nothing to derive in atoms (its emptiness is protected inside its result by
    # the suppression audit, across results by the pairs' same-patients rule): it makes no focus
    hidden = [sk for sk, h, size in zip(focus.sketches, focus.hidden, focus.sizes, strict=True) if h and size > 0]
    for n, sk in cells:
        if n <= 0 or sk & ~focus.rows or not any(h & ~sk == 0 for h in hidden):
            continue
        inside = [(size, piece, h and size > 0) for size, piece, h in zip(focus.sizes, focus.sketches, focus.hidden,
                                                                         strict=True) if piece & ~sk == 0]
        union = 0
        for _, piece, _ in inside:
            union |= piece
        if sk & ~union:
            continue
        if n == sum(focus.sizes) and len(inside) == len(focus.sizes):
            if 0 < sum(size for size, _, h in inside if h) < k:
                return True
            continue
        plain, with_hidden = 1, 0
        for size, _, h in inside:
            if h:
                plain, with_hidden = plain, with_hidden | (with_hidden << size) | (plain << size)
            else:
                plain, with_hidden = plain | (plain << size), with_hidden | (with_hidden << size)
        if with_hidden >> n & 1:
            return True
    return False


COMPANIONS = 20  # results by other group-by columns on a focus's rows (the most recent; fewer columns: all)


def hidden_linked(new: Footprint, new_sizes: Sizes, earlier: list[Footprint], sizes: list[Sizes], k: int
                  ) -> list[tuple[int, list[int]]]:
    """Groups for the span check (`span`): (focus, the earlier footprints around it). A focus is a result with
    hidden cells: an earlier one with a new cell that may be a union of its cells including a hidden one, at
    some site (e.g. a filter to the group it hid as a complement), or the new one (index -1) when an
    earlier cell may be such a union of its cells. Around each focus: its companions, the results on the
    same rows (same filters, same versions) by any group-by columns, whose cells add up to its totals;
    for the new focus, the earlier results linked to it as well."""
    mine = pieces_of(new, new_sizes)
    groups: list[tuple[int, list[int]]] = []
    same_rows: dict[tuple[str, tuple[tuple[str, int], ...]], list[int]] = {}
    for i, fp in enumerate(earlier):
        same_rows.setdefault((fp.subset_key(), fp.versions), []).append(i)

    def companions(fp: Footprint, exclude: int) -> list[int]:
        same = [j for j in same_rows.get((fp.subset_key(), fp.versions), []) if j != exclude]
        fewer = [j for j in same if set(earlier[j].dims) <= set(fp.dims)]
        return sorted(set(fewer) | set([j for j in same if j not in fewer][-COMPANIONS:]))

    linked_to_new: list[int] = []
    for i, (fp, sz) in enumerate(zip(earlier, sizes, strict=True)):
        shared = [site for site in new.sites if site in sz]
        if not shared or not (fp.hidden or new.hidden):
            continue
        theirs = pieces_of(fp, sz)
        if fp.hidden and any(site in mine and _aligned(mine[site].cells(), theirs[site], k) for site in shared):
            groups.append((i, [i, *companions(fp, i)]))
        if new.hidden and any(site in mine and _aligned(theirs[site].cells(), mine[site], k) for site in shared):
            linked_to_new.append(i)
    if new.hidden and linked_to_new:
        around = sorted(set(linked_to_new) | set(companions(new, -1)))
        groups.append((-1, around))
    return merge_foci(groups)


def merge_foci(groups: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
    """Groups around earlier foci with the same members (the results of everyone by the same columns have the
    same companions) checked once, as focus -3: the hidden cells of every member are its targets (a superset
    of each focus's, all of them results already in the group: one decomposition instead of one per focus)."""
    foci: dict[tuple[int, ...], list[int]] = {}
    for focus, around in groups:
        if focus >= 0:
            foci.setdefault(tuple(sorted(set(around))), []).append(focus)
    out, done = [], set()
    for focus, around in groups:
        members = tuple(sorted(set(around)))
        if focus < 0 or len(foci[members]) == 1:
            out.append((focus, around))
        elif members not in done:
            done.add(members)
            out.append((-3, list(members)))
    return out


FAMILY_SPAN = 40  # earlier results in a filter family checked together with the new one (the most recent)
FAMILIES_OF_EVERYONE = 4  # families checked for a new result without filters


@lru_cache(maxsize=200_000)
def _filter_columns(subset: str) -> tuple[frozenset[str], str]:
    d = json.loads(subset)
    return (frozenset(f["column"] for f in [*d["filters"], *d.get("split", [])]),
            json.dumps(d["exists"], sort_keys=True))


def filter_families(new: Footprint, earlier: list[Footprint]) -> list[tuple[int, list[int]]]:
    """Groups for the span check without a hidden cell (focus -2): the new result with the most recent earlier
    results whose filters use only the columns the new one filters on (none included), on the same exists
    filters, at any sites (a count of the other sites takes them out of an all-sites result: the red team's
    D2). Filters on one column cut the same rows into groups: everyone minus `arm == DD4A`, `EE4A` and `M`
    is arm NR, four results no pair or triple search sees. A new result without filters is checked with
    the families of the columns most recently filtered on alone."""
    columns, exists = _filter_columns(new.subset)
    candidates = [i for i, fp in enumerate(earlier) if _filter_columns(fp.subset)[1] == exists]
    if columns:
        family = [i for i in candidates if _filter_columns(earlier[i].subset)[0] <= columns]
        return [(-2, family[-FAMILY_SPAN:])] if family else []
    groups: list[tuple[int, list[int]]] = []
    seen: set[frozenset[str]] = set()
    for i in reversed(candidates):
        cols = _filter_columns(earlier[i].subset)[0]
        if len(cols) != 1 or cols in seen:
            continue
        seen.add(cols)
        family = [j for j in candidates if _filter_columns(earlier[j].subset)[0] <= cols]
        groups.append((-2, family[-FAMILY_SPAN:]))
        if len(groups) == FAMILIES_OF_EVERYONE:
            break
    return groups


_ROWS: dict[str, dict[str, tuple[int, int]]] = {}


def _rows_of(key: str, sizes: Sizes) -> dict[str, tuple[int, int]]:
    """A result's rows at each site: (units, sketch bits) of the union of its cells (they cover its subset)."""
    got = _ROWS.get(key)
    if got is None:
        got = {}
        for site, cells in sizes.items():
            units, bits = 0, 0
            for _, n, sketch in cells:
                units += int(n)
                bits |= int(sketch, 16)
            got[site] = (units, bits)
        if len(_ROWS) > 200_000:
            _ROWS.clear()
        _ROWS[key] = got
    return got


def row_family(new: Footprint, new_sizes: Sizes, earlier: list[Footprint], earlier_sizes: list[Sizes]
               ) -> list[tuple[int, list[int]]]:
    """A filter family by rows, not by column names: the earlier whole results whose rows lie inside the new
    result's, or hold them, at every site they share (sizes and sketches), the closest first (the fewest
    rows between them), up to FAMILY_SPAN. The sixth red team's B1 and B3: everyone in S at site-a and the
    groups of S in three of four arms (a filter on arm too), in either order, four cells no family by
    columns held together, and no triple."""
    mine = _rows_of(new.key(), new_sizes)
    scored: list[tuple[int, int]] = []
    for i, (fp, sizes) in enumerate(zip(earlier, earlier_sizes, strict=True)):
        if fp.split() or fp.study_id != new.study_id or fp.table != new.table:
            continue
        theirs = _rows_of(fp.key(), sizes)
        shared = set(mine) & set(theirs)
        if not shared:
            continue
        gap, inside, holds = 0, True, True
        for site in shared:
            (n, bits), (m, other) = mine[site], theirs[site]
            inside &= m <= n and other & ~bits == 0
            holds &= n <= m and bits & ~other == 0
            gap += abs(n - m)
        if inside or holds:
            scored.append((gap, -i))
    members = sorted(-i for _, i in sorted(scored)[:FAMILY_SPAN])
    return [(-2, members)] if members else []


@lru_cache(maxsize=200_000)
def _part_cuts(subset: str) -> tuple[frozenset[str], frozenset[tuple[str, float]]]:
    """A part's own filter columns (the query's) and its split's thresholds as whole-day cut points."""
    d = json.loads(subset)
    cuts = frozenset((f["column"], float(math.ceil(f["value"] - 1e-9))) for f in d.get("split", [])
                     if f["op"] in ("<", ">=") and isinstance(f["value"], int | float))
    return frozenset(f["column"] for f in d["filters"]), cuts


def aligned_parts(new: Footprint, earlier: list[Footprint]) -> list[int]:
    """Parts of curves (numbers at risk, events before a time) whose time falls on a threshold the new result
    filters at, on the new result's filter columns, exists filters and sites: with them a count of a
    follow-up window is the difference of two numbers at risk (the red team's D2: two curves, a count of
    the other sites and a count of one site without one group, four results), at any sites. Added to the
    new result's filter family (the most recent FAMILY_SPAN); integer days, so a curve time t is the cut
    point ceil(t)."""
    d = json.loads(new.subset)
    cuts = {(f["column"], float(f["value"])) for f in d["filters"]
            if f["op"] in ("<", ">=") and isinstance(f["value"], int | float)}
    if not cuts:
        return []
    columns, exists = _filter_columns(new.subset)
    out = []
    for i, fp in enumerate(earlier):
        if "split" not in fp.subset:
            continue
        own, theirs = _part_cuts(fp.subset)
        if theirs & cuts and own <= columns and _filter_columns(fp.subset)[1] == exists:
            out.append(i)
    return out[-FAMILY_SPAN:]
