"""The guards the query service runs on the sites' first answers, before anything is combined.

Each guard asks the sites for what it needs in the first round (`requests`) and then refuses the query,
or restricts what is released (`check`). Suppression of small cells is a guard too
(`disclosure.ComplementarySuppressionGuard`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from federation.query.central.atoms import AtomSpace, history_answers, row_bytes, select_rows, subsets_at
from federation.query.central.candidates import (
    CellTable,
    Sizes,
    aligned_parts,
    equal_near,
    filter_families,
    hidden_linked,
    may_share_conditions,
    nested_near,
    related,
    row_family,
    triple_near,
)
from federation.query.central.differencing import DistinctPatientsGuard, EmptyCombinationGuard, Vectors
from federation.query.central.history import Earlier, Footprint, footprints_of, shadow_footprints
from federation.query.central.runner import Context, released_record
from federation.query.central.span import new_leak, phantom_leak
from federation.query.central.statistics import Statistic
from federation.query.central.statistics.counts import check_filters
from federation.query.central.statistics.km import year_start
from federation.query.central.structure import CellDef, phantoms_of
from federation.query.columns import GROUPABLE, require
from federation.query.guard import Guard, QueryRefused
from federation.query.model import Query
from federation.query.site.guards import small_subset, small_subset_reason
from federation.query.site.partial import SiteTask
from federation.query.site.summaries import (
    MAX_EARLIER,
    Answer,
    Counts,
    FootprintSizes,
    GroupCounts,
    Request,
    Sized,
    SizeLists,
    SubsetCount,
    SubsetSize,
)


class CentralGuard(Guard, abstract=True):
    """Base of the guards that run in the query service."""

    def requests(self, ctx: Context) -> list[Request]:
        return []

    def check(self, ctx: Context, answers: dict[str, list[Answer]]) -> None:
        """On the sites' first answers, before the statistic combines them."""

    def released(self, ctx: Context) -> None:
        """On what the combined result would show (`ctx.result.payload`), before it is released."""


class SubsetGuard(CentralGuard):
    """A filter must keep at least k rows and leave at least k out at a site, or that site takes no part
    (none counts as fewer than k, so the answer never tells an empty subset from a small one)."""

    def requests(self, ctx: Context) -> list[Request]:
        q = ctx.query
        return [SubsetCount(table=q.table, filters=q.filters, exists=q.exists)] if q.filters or q.exists else []

    def check(self, ctx: Context, answers: dict[str, list[Answer]]) -> None:
        if not ctx.query.filters and not ctx.query.exists:
            return
        for site, (size,) in answers.items():
            assert isinstance(size, SubsetSize)
            ks = ctx.thresholds[site].min_cell
            if small_subset(size.chosen, size.left, ks):
                ctx.exclude(site, small_subset_reason(ks))
        if not ctx.sites:
            raise QueryRefused("no site can take part in this query: " + small_subset_reason(ctx.policy.disclosure
                                                                                              .min_cell),
                               "use a broader filter, or group by the variable instead of filtering on it")


class RowMultiplicityGuard(CentralGuard):
    """In a table of several rows per patient, a count whose rows exceed its patients by 1..k-1 is small, and
    so is a total or margin of 1..k-1 patients: with a count of the same patients (a result on patients with
    an exists filter), rows minus patients tells how many extra rows a few patients have (the eleventh red
    team: 49 cardiac or renal late effects of 48 patients, one patient with both). The sites are asked the
    distinct patients of the coarser levels too (a count's total, a crosstab's margins)."""

    def requests(self, ctx: Context) -> list[Request]:
        q = ctx.query
        if q.table == "patients" or not q.group_by:
            return []
        return [GroupCounts(table=q.table, filters=q.filters, exists=q.exists, dims=list(level))
                for level in coarser(q.group_by)]

    def check(self, ctx: Context, answers: dict[str, list[Answer]]) -> None:
        q = ctx.query
        if q.table == "patients":
            return
        levels = coarser(q.group_by) if q.group_by else []
        ctx.level_patients = {tuple(level): {} for level in levels}
        for site, got in answers.items():
            for level, counts in zip(levels, got, strict=True):
                assert isinstance(counts, Counts)
                ctx.level_patients[tuple(level)][site] = {tuple(c.key): c.patients or 0 for c in counts.cells}


def coarser(dims: list[str]) -> list[list[str]]:
    """Every level coarser than `dims` (its proper subsets, in order; the total last)."""
    return [[d for i, d in enumerate(dims) if mask >> i & 1] for mask in range(2 ** len(dims) - 2, -1, -1)]


class CrossTableGuard(Guard):
    """A result on a table of several rows per patient is also checked as the patients it covers, against
    results on patients: a count of rows is often one of patients."""


class DifferencingGuard(CentralGuard):
    """No combination of this result with earlier released results (every analyst's, every site selection,
    every version) may isolate fewer than k patients, for an analyst or for a site insider. It runs on the
    cells the result would show: a cell suppressed here, or in an earlier result, is in no difference."""

    def released(self, ctx: Context) -> None:
        q = ctx.query
        earlier = [e for e in ctx.history.earlier(q.study_id, q.table, shadows=CrossTableGuard.enabled())
                   if comparable(ctx, e)]
        for _ in range(MAX_TIMES_WITHHELD + 1):
            found = self._leak(ctx, earlier) if earlier else None
            if found is None:
                found = self._shadow_leak(ctx)
            if found is None:
                return
            how, _, part, cited = found
            # a curve's number at risk (or events) at one time that would give away a few patients with an
            # earlier result is withheld at that time, and the rest of the curve checked again
            if part is None or not withhold_time(ctx.result.payload, part):
                break
            ctx.result.notes.append(f"{part_name(part)} withheld: with {cited} it would isolate fewer than "
                                    f"{ctx.k} patients (differencing)")
        raise QueryRefused(
            f"with {cited}, this result would isolate fewer than {ctx.k} patients "
            f"(differencing: {how.replace('k patients', f'{ctx.k} patients')})",
            "ask for the groups you compare in one query (e.g. with --by), so that disclosure control "
            "covers them together")

    def _shadow_leak(self, ctx: Context) -> tuple[str, list[int], Footprint | None, str] | None:
        """A result on a row table as the patients it covers (`history.shadow_footprints`), against the results
        on `patients` (and the other row tables' shadows)."""
        q = ctx.query
        if q.table == "patients" or not CrossTableGuard.enabled():
            return None
        shadows = shadow_footprints(q, ctx.version_numbers, Statistic.for_query(q).per_site,
                                    released_record(q, ctx.result.payload))
        earlier = [e for e in ctx.history.earlier(q.study_id, "patients") if comparable(ctx, e)]
        if not shadows or not earlier:
            return None
        return self._leak(ctx, earlier, shadows)

    def _leak(self, ctx: Context, earlier: list[Earlier], shadows: list[Footprint] | None = None
              ) -> tuple[str, list[int], Footprint | None, str] | None:
        """The first leak of the result as it stands (how, the space's footprints involved, the new part
        that leaks or None for the whole result, the earlier results cited); None when there is none, or
        when withholding the per-site values leaves none (then `ctx.combined_only` says so). With `shadows`,
        of those footprints on `patients` in place of the result's own."""
        q = ctx.query
        known = {e.footprint.key() for e in earlier}
        # the whole result and the parts of its groups it shows counts of; a footprint released before adds
        # nothing to check, but its cells are still the new result's own (`AtomSpace.first_leak`)
        mine = shadows if shadows is not None else footprints_of(q, ctx.version_numbers,
                                                                 Statistic.for_query(q).per_site,
                                                                 released_record(q, ctx.result.payload))
        news = [fp for fp in mine if fp.key() not in known]
        again = [fp for fp in mine if fp.key() in known]
        if not news:
            return None
        new_sizes = ask_sizes(ctx, news)  # their cells on every column they reveal counts of
        picked, groups, triples, deciding = find_candidates(ctx, news, [new_sizes[fp.key()] for fp in news], earlier)
        ctx.result.checked["candidates"] = len(picked)
        if not picked:
            return None
        ctx.result.checked.update(triples=len(triples), deciding=len(deciding),
                                  largest_group=max((len(set(g[1]) | {g[0]}) for g in groups), default=0))
        batches = plan_batches(len(picked), triples, groups, MAX_EARLIER - len(mine), everywhere=deciding,
                               keys=[(e.footprint.subset_key(), e.footprint.versions) for e in picked])
        ctx.result.checked["batches"] = len(batches)
        per_site = Statistic.for_query(q).per_site
        withheld: str | None = None  # the earlier results that made the per-site values withheld
        for batch in batches:
            chosen = sorted(batch.members)
            at = {i: j for j, i in enumerate(chosen)}
            some = [picked[i] for i in chosen]
            spans_of = [(at.get(focus, focus), [at[i] for i in around])  # focus < 0: see SpanGroup.of
                        for focus, around in (groups[g] for g in batch.groups)]
            found = self._batch_leak(ctx, news, some, again, spans_of, per_site and withheld is None)
            if found is not None and per_site and withheld is None:  # the same groups, combined values only
                combined = self._batch_leak(ctx, news, some, again, spans_of, False)
                if combined is None:
                    withheld = cite(ctx, some, found[1], len(news))
                    continue  # the next batches are checked on the combined values (fewer cells: no new leak)
                found = combined
            if found is not None:
                how, involved, owner = found
                part = news[owner] if owner >= 0 and news[owner].split() else None
                return how, involved, part, cite(ctx, some, involved, len(news))
        if withheld is not None:
            ctx.combined_only = True
            ctx.result.notes.append(
                "per-site values are withheld: with " + withheld + " they would isolate fewer than k patients "
                "at a site (differencing); the combined values are exact")
        return None

    @staticmethod
    def _batch_leak(ctx: Context, news: list[Footprint], some: list[Earlier], again: list[Footprint],
                    groups: list[tuple[int, list[int]]], per_site: bool) -> tuple[str, list[int], int] | None:
        """`leak_of` the new footprints with one batch of earlier ones (`some`) and the span groups inside it,
        on one atom space; per-site values of the new result or its combined values only."""
        n, m = len(news), len(some)
        space = AtomSpace.ask(ctx, [*news, *(e.footprint for e in some), *again])
        pool = space.vectors(range(n, n + m))
        spans = [SpanGroup.of(space, n, focus, around) for focus, around in groups]
        whole = [0] if not news[0].split() else []  # the span check runs on whole results (not their parts)
        shown = [*range(n), *range(n + m, n + m + len(again))]
        return leak_of(space, space.vectors(shown, per_site=per_site), n, space.vectors(whole, per_site=per_site),
                       pool, spans, ctx.k)


@dataclass
class Batch:
    """Earlier footprints checked together on one atom space (indexes into the candidates), and the span groups
    (indexes into the groups) that lie wholly inside it."""

    members: set[int] = field(default_factory=set)
    groups: list[int] = field(default_factory=list)


MAX_BATCHES = 20  # batches of candidates checked per query before it is refused for capacity


def plan_batches(n: int, together: set[int], groups: list[tuple[int, list[int]]], capacity: int,
                 everywhere: set[int] | None = None, keys: list[Hashable] | None = None) -> list[Batch]:
    """Split `n` candidates into batches that each ask the sites about at most `capacity` distinct `keys` (a
    footprint's subset and versions: what one `HistoryAtoms` task holds, besides the new result's; many
    footprints on the same rows, e.g. the counts of everyone by every grouping, share one). A pair (a cell
    inside another, or with the same patients) needs only its earlier footprint in some batch. `together`
    (the triple candidates: both partners in one space) go into the first batch; a span group needs its
    focus and all its members in one batch (first fit); `everywhere` join every batch (cells that may have a
    new cell's own conditions, which let cells with the same patients through `AtomSpace.same_patients`; if
    they take more than half a batch, they join the first only: a batch without them can only refuse more,
    never less). The rest fill the free places and then batches of their own. Refused for capacity only
    when `together` or one group does not fit in a batch, or more than MAX_BATCHES batches are needed."""
    refused = QueryRefused("this query is related to more earlier results than the differencing check compares "
                           "in one query; nothing was released",
                           "ask the consortium's data team to review the query history of this study")
    key: list[Hashable] = list(range(n)) if keys is None else keys

    def size(members: set[int]) -> int:
        return len({key[i] for i in members})

    everywhere = set(everywhere or ())
    if size(everywhere) > capacity // 2:
        together, everywhere = together | everywhere, set()
    capacity -= size(everywhere)
    together = together - everywhere
    if capacity < 1 or size(together) > capacity:
        raise refused
    batches = [Batch(members=set(together))]
    for g, (focus, around) in enumerate(groups):
        need = {i for i in [focus, *around] if i >= 0} - everywhere
        if size(need) > capacity:
            raise refused
        home = next((b for b in batches if size(b.members | need) <= capacity), None)
        if home is None:
            home = Batch()
            batches.append(home)
        home.members |= need
        home.groups.append(g)
    placed = set().union(everywhere, *(b.members for b in batches))
    rest = deque(sorted((i for i in range(n) if i not in placed), key=lambda i: str(key[i])))  # same keys together

    def fill(b: Batch) -> None:
        have = {key[i] for i in b.members}
        while rest and (key[rest[0]] in have or len(have) < capacity):
            have.add(key[rest[0]])
            b.members.add(rest.popleft())

    for b in batches:
        fill(b)
    while rest:
        batches.append(Batch())
        fill(batches[-1])
    for b in batches:
        b.members |= everywhere
    batches = [b for b in batches if b.members]
    if len(batches) > MAX_BATCHES:
        raise refused
    return batches


MAX_TIMES_WITHHELD = 20  # times of a curve withheld one by one before the query is refused


def part_name(part: Footprint) -> str:
    """A part of a curve as the analyst reads it ("the number at risk at day 730.5")."""
    split = {f.op: f for f in part.split()}
    if ">=" in split:
        return f"the number at risk at day {float(split['>='].value):g}"
    return f"the curve's point at day {float(split['<'].value):g}"


def withhold_time(payload: dict[str, Any], part: Footprint) -> bool:
    """Withhold, in every curve of a Kaplan-Meier result, what shows `part` (`runner.km_splits`): the numbers
    at risk at its day (`time >= t`; risk table and points), or the point at its day (`event and time < t`:
    the next step then spans two intervals, and the events before it are no longer pinned down). False
    for anything else (the query is refused instead)."""
    if payload.get("statistic") not in ("km", "cif"):
        return False
    split = {f.op: float(f.value) for f in part.split() if f.op in (">=", "<")}
    if not split:
        return False
    grid = float(payload["grid_days"])
    changed = False
    for curve in payload["curves"]:
        for value in [curve.get("combined"), *(curve.get("per_site") or {}).values()]:
            if not isinstance(value, dict):
                continue
            points = value.get("points") or []
            if ">=" in split:
                day = split[">="]
                for p in points:
                    if abs(float(p["day"]) - day) < 1e-6 and p.get("at_risk") != {"suppressed": True}:
                        p["at_risk"], changed = {"suppressed": True}, True
                for r in value.get("risk_table") or []:
                    if abs(year_start(r["year"], grid) - day) < 1e-6 and r.get("at_risk") != {"suppressed": True}:
                        r["at_risk"], changed = {"suppressed": True}, True
            else:
                kept = [p for p in points if abs(float(p["day"]) - split["<"]) >= 1e-6]
                if len(kept) < len(points):
                    value["points"], changed = kept, True
    return changed


@dataclass
class SpanGroup:
    """One group of the span check, built once per query: the earlier results in it (indexes of the atom
    space's footprints), their shown cells, and the hidden cells to protect."""

    members: list[int]
    before: sparse.csr_matrix  # the members' shown cells x atoms
    targets: np.ndarray
    before_defs: list[CellDef] = field(default_factory=list)  # what each row of `before` is by definition
    empty: list[CellDef] = field(default_factory=list)  # hidden cells to protect that hold no row
    universe: CellDef | None = None  # a filter family: every kind of patient its cells tell apart

    @classmethod
    def of(cls, space: AtomSpace, n_new: int, focus: int, around: list[int]) -> SpanGroup:
        """The group around `focus` (an index into the earlier candidates, or -1 for the new result, -2 for a
        filter family, -3 for several earlier foci with the same members: `candidates.merge_foci`); the
        space's first `n_new` footprints are the new result's."""
        members = [i + n_new for i in around]
        owners = ([0, *members] if focus == -2 else [0] if focus == -1 else members if focus == -3
                  else [focus + n_new])
        # a filter family: every hidden cell of its results and of the new one; else those of the focus
        targets = np.vstack([space.hidden_sets(x) for x in owners])
        before = space.vectors(members)
        on = EmptyCombinationGuard.enabled()
        empty = [c for x in owners for c in space.empty_hidden(x)] if on else []
        # in a filter family, a set no cell shows that comes to nobody is pinned down like one of a few (the
        # fifth red team's A1b: everyone in S minus S by three arms, released when the fourth arm is empty)
        versions = {site: v for x in [0, *members] for site, v in space.footprints[x].versions}
        universe = (CellDef(cond=frozenset(), site="", versions=tuple(sorted(versions.items())))
                    if on and focus == -2 else None)
        return cls(members=members, before=before.matrix, targets=targets,
                   before_defs=space.cell_defs(before) if empty or universe else [], empty=empty, universe=universe)

    def phantom_kinds(self, space: AtomSpace, shown_defs: list[CellDef]) -> tuple[np.ndarray, np.ndarray]:
        """Hypothetical patients for the span check (`span.phantom_leak`): each kind a hidden cell that holds no
        row could hold by definition, and, in a filter family, each kind of patient its cells tell apart
        (`structure.phantoms_of`); as (cells of `before` x kinds, shown cells x kinds): whether such a patient
        would be in each cell."""
        n_before = len(self.before_defs)
        kinds: dict[tuple[bool, ...], None] = {}
        fp = space.footprints[0]
        rows = [*self.before_defs, *shown_defs]
        for found in phantoms_of(fp.study_id, fp.table, [*self.empty, *([self.universe] if self.universe else [])],
                                 rows, space.policy):
            for _, inside in found or []:
                kinds.setdefault(tuple(inside), None)
        member = np.asarray(list(kinds), dtype=bool).T.reshape(len(rows), len(kinds))
        return member[:n_before], member[n_before:]


def leak_of(space: AtomSpace, mine: Vectors, n_new: int, whole: Vectors, pool: Vectors, groups: list[SpanGroup],
            k: int) -> tuple[str, list[int], int] | None:
    """How the new cells isolate fewer than k patients with earlier ones, which earlier results (indexes
    of the space's footprints) and which new footprint (-1 for the span check's whole result); None when
    they do not. `mine` are every cell the new result shows, of which those of the space's first `n_new`
    footprints are new. Pairs and triples of every new cell (the result's and its parts') over every
    candidate, then the span check of the whole result's cells on each group."""
    new, _ = select_rows(mine, np.asarray(mine.owner) < n_new)
    leak = space.first_leak(new, pool, k, shown=mine)
    if leak is not None:
        return leak.how, [pool.owner[i] for i in leak.earlier], new.owner[leak.new]
    if not whole.matrix.shape[0]:
        return None
    shown_defs = space.cell_defs(whole) if any(g.empty or g.universe for g in groups) else []
    for group in groups:
        # only the atoms some cell or hidden cell of the group holds count (the others are in no row and no
        # target): the dense matrices are the group's, not the whole space's
        cols = np.union1d(np.union1d(group.before.indices, whole.matrix.indices),
                          np.nonzero(group.targets.any(axis=0))[0]).astype(np.int64)
        # repeated cells (results on the same rows: every count of everyone shows its total) add nothing to a
        # span: one of each, found on the sparse rows before anything is made dense
        rows = row_bytes(group.before)
        once = sorted({row: i for i, row in reversed(list(enumerate(rows)))}.values())
        shown = whole.matrix[:, cols].toarray() > 0.5
        found = new_leak(group.before[once][:, cols].toarray() > 0.5, shown, group.targets[:, cols],
                         space.units.take(cols), space.site_of[cols], space.sites, k)
        if found is None and (group.empty or group.universe):
            kinds_before, kinds_new = group.phantom_kinds(space, shown_defs)
            # the same cell with other hypothetical patients in it is another row here
            joint = sorted({(row, kinds_before[i].tobytes()): i for i, row in reversed(list(enumerate(rows)))}
                           .values())
            found = phantom_leak(group.before[joint][:, cols].toarray() > 0.5, shown, kinds_before[joint], kinds_new)
        if found is not None:
            who = "" if found.insider is None else f" for an insider at {found.insider}"
            return (f"together they pin down a hidden cell, or a set of patients no single cell shows, of fewer "
                    f"than k patients (possibly none){who}", group.members, -1)
    return None


TRIPLE_FAMILY = 1000  # related footprints searched for triples (the most recent): bounds the work per query
TRIPLE_RECENT = 500  # and the most recent footprints of any filters (e.g. two categorical filters and everyone)
_TABLES: dict[tuple[int, str, str, tuple[str, ...]], tuple[CellTable, list[str]]] = {}


def find_candidates(ctx: Context, news: list[Footprint], news_sizes: list[Sizes], earlier: list[Earlier]
                    ) -> tuple[list[Earlier], list[tuple[int, list[int]]], set[int], set[int]]:
    """Earlier footprints that could combine with the new ones (a result and the parts of it a statistic
    splits its groups by): a cell nested in a new cell with 1..k-1 rows between them (for the analyst, a
    site insider, or at one site), filters of the same family (for triples), and results with hidden cells
    around which the span check runs (with its groups, as indexes into the list returned; -1 is the new
    result), and for `plan_batches` the triple candidates (checked together) and, among the cells that may hold
    the same patients as a new cell, those that may have its own conditions (checked with every batch: one of
    them lets the others through `AtomSpace.same_patients`). Cells of footprints not yet sized are asked of the sites
    once and kept in the history index."""
    sizes = sized(ctx, earlier)
    sites = sorted({s for e in earlier for s in e.footprint.sites} | {s for new in news for s in new.sites})
    keys = [e.footprint.key() for e in earlier]
    cache = (id(ctx.history), news[0].study_id, news[0].table, tuple(sites))
    table, covered = _TABLES.get(cache, (None, []))
    if table is None or keys[:len(covered)] != covered or len(keys) - len(covered) > 500:
        table, covered = CellTable.build([(i, sizes[k]) for i, k in enumerate(keys)], sites), keys
        _TABLES[cache] = (table, covered)
    recent = CellTable.build([(i, sizes[keys[i]]) for i in range(len(covered), len(keys))], sites)
    # triples: among the most recent related footprints and the most recent of all (pairs: the whole history);
    # the most recent of all counted in whole results, so that a few curves' parts do not crowd them out
    wholes = [i for i, e in enumerate(earlier) if not e.footprint.split()]
    members = sorted(set([i for i, e in enumerate(earlier) if any(related(new, e.footprint) for new in news)]
                         [-TRIPLE_FAMILY:]) | {i for i in range(wholes[-TRIPLE_RECENT] if len(wholes) >= TRIPLE_RECENT
                                                                 else 0, len(earlier))})
    family = CellTable.build([(i, sizes[keys[i]]) for i in members], sites)
    footprints = [e.footprint for e in earlier]
    earlier_sizes = [sizes[key] for key in keys]
    near: set[int] = set()
    same: set[int] = set()
    triples: set[int] = set()
    # a patient's rows may lie in several cells of a row table: their counts of patients do not add up
    several = news[0].table != "patients" and DistinctPatientsGuard.enabled()
    for new_sizes in news_sizes:
        # cells with the same patients, whatever their conditions (`AtomSpace.same_patients`)
        same |= equal_near(new_sizes, table, sites) | equal_near(new_sizes, recent, sites)
        near |= nested_near(new_sizes, table, sites, ctx.k, several)
        if len(keys) > len(covered):  # released since the table was built: compared directly
            near |= nested_near(new_sizes, recent, sites, ctx.k, several)
        triples |= triple_near(new_sizes, family, sites, ctx.k, several)
    groups: list[tuple[int, list[int]]] = []
    if not news[0].split():  # span groups of the whole result, among earlier whole results
        parts = {i for i, fp in enumerate(footprints) if fp.split()}
        found = hidden_linked(news[0], news_sizes[0], footprints, earlier_sizes, ctx.k)
        found += filter_families(news[0], footprints)
        groups = [(focus, [i for i in around if i not in parts]) for focus, around in found if focus not in parts]
        aligned = aligned_parts(news[0], footprints)  # parts whose times fall on the new filter's thresholds
        if aligned:
            of_new = next((around for focus, around in groups if focus == -2), [])
            groups = [g for g in groups if g[0] != -2] + [(-2, sorted(set(of_new) | set(aligned)))]
        groups += row_family(news[0], news_sizes[0], footprints, earlier_sizes)
    grouped = {i for focus, members in groups for i in [focus, *members] if i >= 0}
    ctx.result.checked = {"earlier_footprints": len(earlier), "nested_near": len(near), "related": len(members),
                          "triple_near": len(triples), "hidden_linked": len(groups)}
    chosen = sorted(near | same | triples | grouped)
    at = {i: n for n, i in enumerate(chosen)}
    # of the cells with the same patients, those that may have a new cell's own conditions decide for the others
    deciding = {i for i in same if any(may_share_conditions(earlier[i].footprint, new) for new in news)}
    return ([earlier[i] for i in chosen], [(at[f] if f >= 0 else f, [at[i] for i in m]) for f, m in groups],
            {at[i] for i in triples}, {at[i] for i in deciding})


def sized(ctx: Context, earlier: list[Earlier]) -> dict[str, Sizes]:
    """Cell sizes of every earlier footprint, from the index, asking the sites for those not yet sized."""
    keys = [e.footprint.key() for e in earlier]
    have = ctx.history.sizes(keys)
    missing = [e.footprint for e in earlier if e.footprint.key() not in have]
    if missing:
        have.update(ask_sizes(ctx, missing))
    return have


SIZING_BATCH = 500  # footprints sized per round (bounds each task and each reply)


def ask_sizes(ctx: Context, footprints: list[Footprint]) -> dict[str, Sizes]:
    """Cell sizes and sketches of `footprints`, asked of their sites in rounds of SIZING_BATCH and kept."""
    out: dict[str, Sizes] = {}
    for i in range(0, len(footprints), SIZING_BATCH):
        out.update(_ask_sizes_round(ctx, footprints[i:i + SIZING_BATCH]))
    return out


def _ask_sizes_round(ctx: Context, footprints: list[Footprint]) -> dict[str, Sizes]:
    tasks: dict[str, SiteTask] = {}
    plan: dict[str, list[int]] = {}
    for site in sorted({s for fp in footprints for s in fp.sites}):
        defs, pairs = subsets_at(footprints, site)
        items = [Sized(subset=sub, version=footprints[x].sites[site], dims=list(footprints[x].dims))
                 for x, sub in pairs]
        plan[site] = [x for x, _ in pairs]
        requests: list[Request] = [FootprintSizes(table=footprints[0].table, subsets=defs,  # type: ignore[arg-type]
                                                  items=items)]
        tasks[site] = SiteTask(study_id=footprints[0].study_id, version=None, thresholds=ctx.policy.disclosure,
                               requests=requests)
    replies = ctx.gateway.ask(tasks)
    out: dict[str, Sizes] = {fp.key(): {} for fp in footprints}
    partial: set[str] = set()
    for site, xs in plan.items():
        answers = history_answers(ctx, replies, site, SizeLists)
        if answers is None:  # outside this query and down: sized on a later query
            partial.update(footprints[x].key() for x in xs)
            continue
        (sizes,) = answers
        assert isinstance(sizes, SizeLists)
        lists = sizes.items
        for x, cells in zip(xs, lists, strict=True):
            out[footprints[x].key()][site] = [(tuple(c.key), c.n if c.patients is None else c.patients,
                                               c.sketch or "0" * 128) for c in cells]
    ctx.history.store_sizes({key: sizes for key, sizes in out.items() if key not in partial})
    return out


_COMPARABLE: dict[tuple[int, str], bool] = {}


def comparable(ctx: Context, earlier: Earlier) -> bool:
    """An earlier footprint whose filters and columns today's policy still accepts (the sites check them
    again); remembered per policy object."""
    key = (id(ctx.policy), earlier.footprint.key())
    if key not in _COMPARABLE:
        _COMPARABLE[key] = _comparable(ctx, earlier)
    return _COMPARABLE[key]


def _comparable(ctx: Context, earlier: Earlier) -> bool:
    fp = earlier.footprint
    filters, exists = fp.filters()
    try:
        # constructed, not validated: a shadow has one exists filter more than a query may (`shadow_footprints`)
        check_filters(Query.model_construct(study_id=fp.study_id, table=fp.table, filters=filters,  # type: ignore[arg-type]
                                            exists=exists),
                      ctx.policy)
        for d in fp.dims:
            require(ctx.policy, fp.study_id, fp.table, d, "grouping", GROUPABLE)
    except (QueryRefused, ValueError):
        return False
    return True


def cite(ctx: Context, earlier: list[Earlier], involved: list[int], n_new: int = 1) -> str:
    """The earlier results a leak involves (indexes of the atom space's footprints, the first `n_new` being
    the new result's), as the analyst may see them: their own queries described, another analyst's only by
    audit number; beyond `CITED` of either kind, how many more (a dense history can involve dozens)."""
    found = sorted({e.audit_id: e for e in (earlier[i - n_new] for i in involved if i >= n_new)}.items())
    mine = [f"your earlier result #{a} ({e.described})" for a, e in found if e.analyst == ctx.result.analyst]
    others = [f"audit #{a}" for a, e in found if e.analyst != ctx.result.analyst]
    parts = mine[:CITED] + ([f"{len(mine) - CITED} more of your earlier results"] if len(mine) > CITED else [])
    if len(others) == 1:
        parts.append(f"an earlier result released to another analyst ({others[0]})")
    elif others:
        more = f" and {len(others) - CITED} more" if len(others) > CITED else ""
        parts.append(f"{len(others)} earlier results released to other analysts ({', '.join(others[:CITED])}"
                     f"{more})")
    return " and ".join(parts) or "an earlier result"


CITED = 5  # earlier results of each kind a message names


CENTRAL_GUARDS: list[type[CentralGuard]] = [SubsetGuard, RowMultiplicityGuard, DifferencingGuard]
