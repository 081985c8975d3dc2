"""The guards the query service runs on the sites' first answers, before anything is combined.

Each guard asks the sites for what it needs in the first round (`requests`) and then refuses the query,
or restricts what is released (`check`). Suppression of small cells is a guard too
(`disclosure.ComplementarySuppressionGuard`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation.query.central.atoms import AtomSpace, history_answers, subsets_at
from federation.query.central.candidates import (
    CellTable,
    Sizes,
    filter_families,
    hidden_linked,
    nested_near,
    related,
    triple_near,
)
from federation.query.central.differencing import Vectors
from federation.query.central.history import Earlier, Footprint
from federation.query.central.runner import Context, released_cells
from federation.query.central.span import new_leak
from federation.query.central.statistics import Statistic
from federation.query.central.statistics.counts import check_filters
from federation.query.columns import GROUPABLE, require
from federation.query.guard import Guard, QueryRefused
from federation.query.model import Query
from federation.query.site.guards import small_subset, small_subset_reason
from federation.query.site.partial import SiteTask
from federation.query.site.summaries import (
    MAX_EARLIER,
    Answer,
    FootprintSizes,
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


class DifferencingGuard(CentralGuard):
    """No combination of this result with earlier released results (every analyst's, every site selection,
    every version) may isolate fewer than k patients, for an analyst or for a site insider. It runs on the
    cells the result would show: a cell suppressed here, or in an earlier result, is in no difference."""

    def released(self, ctx: Context) -> None:
        q = ctx.query
        earlier = [e for e in ctx.history.earlier(q.study_id, q.table) if comparable(ctx, e)]
        if not earlier:
            return
        levels, hidden = released_cells(ctx.result.payload)
        new = Footprint.of(q, ctx.version_numbers, per_site=Statistic.for_query(q).per_site, levels=levels,
                           hidden=hidden)
        new_sizes = ask_sizes(ctx, [new])[new.key()]  # its cells on every column it reveals counts of
        picked, groups = find_candidates(ctx, new, new_sizes, earlier)
        ctx.result.checked["candidates"] = len(picked)
        if not picked:
            return
        if len(picked) > MAX_EARLIER:
            raise QueryRefused("this query is related to more earlier results than the differencing check compares "
                               "in one query; nothing was released",
                               "ask the consortium's data team to review the query history of this study")
        space = AtomSpace.ask(ctx, [new, *(e.footprint for e in picked)])
        pool = space.vectors(range(1, len(picked) + 1))
        spans = [SpanGroup.of(space, focus, around) for focus, around in groups]
        found = leak_of(space, space.vectors([0]), pool, spans, ctx.k)
        if found is not None and Statistic.for_query(q).per_site:  # the same groups, combined values only
            combined = leak_of(space, space.vectors([0], per_site=False), pool, spans, ctx.k)
            if combined is None:
                ctx.combined_only = True
                ctx.result.notes.append(
                    "per-site values are withheld: with " + cite(ctx, picked, found[1]) + " they would isolate "
                    "fewer than k patients at a site (differencing); the combined values are exact")
                return
            found = combined
        if found is not None:
            how, involved = found
            raise QueryRefused(
                f"with {cite(ctx, picked, involved)}, this result would isolate fewer than {ctx.k} patients "
                f"(differencing: {how.replace('k patients', f'{ctx.k} patients')})",
                "ask for the groups you compare in one query (e.g. with --by), so that disclosure control "
                "covers them together")


@dataclass
class SpanGroup:
    """One group of the span check, built once per query: the earlier results in it (indexes of the atom
    space's footprints), their shown cells, and the hidden cells to protect."""

    members: list[int]
    before: np.ndarray
    targets: np.ndarray

    @classmethod
    def of(cls, space: AtomSpace, focus: int, around: list[int]) -> SpanGroup:
        members = [i + 1 for i in around]
        if focus == -2:  # a filter family: every hidden cell of its results and of the new one
            targets = np.vstack([space.hidden_sets(x) for x in [0, *members]])
        else:  # around a result with hidden cells: an earlier one, or the new one (-1)
            targets = space.hidden_sets(0 if focus == -1 else focus + 1)
        return cls(members=members, before=space.vectors(members).matrix.toarray() > 0.5, targets=targets)


def leak_of(space: AtomSpace, new: Vectors, pool: Vectors, groups: list[SpanGroup], k: int
            ) -> tuple[str, list[int]] | None:
    """How the new cells isolate fewer than k patients with earlier ones, and which earlier results (indexes
    of the space's footprints); None when they do not. Pairs and triples over every candidate, then the
    span check on each group."""
    leak = space.first_leak(new, pool, k)
    if leak is not None:
        return leak.how, [pool.owner[i] for i in leak.earlier]
    shown = new.matrix.toarray() > 0.5
    for group in groups:
        found = new_leak(group.before, shown, group.targets, space.weight, space.site_of, space.sites, k)
        if found is not None:
            who = "" if found.insider is None else f" for an insider at {found.insider}"
            return (f"together they pin down {found.what} of fewer than k patients{who}, which no single result "
                    "shows", group.members)
    return None


TRIPLE_FAMILY = 1000  # related footprints searched for triples (the most recent): bounds the work per query
TRIPLE_RECENT = 500  # and the most recent footprints of any filters (e.g. two categorical filters and everyone)
_TABLES: dict[tuple[int, str, str, tuple[str, ...]], tuple[CellTable, list[str]]] = {}


def find_candidates(ctx: Context, new: Footprint, new_sizes: Sizes, earlier: list[Earlier]
                    ) -> tuple[list[Earlier], list[tuple[int, list[int]]]]:
    """Earlier footprints that could combine with the new one: a cell nested in a new cell with 1..k-1 rows
    between them (for the analyst, a site insider, or at one site), filters of the same family (for
    triples), and results with hidden cells around which the span check runs (with its groups, as indexes
    into the list returned; -1 is the new result). Cells of footprints not yet sized are asked of the sites
    once and kept in the history index."""
    sizes = sized(ctx, earlier)
    sites = sorted({s for e in earlier for s in e.footprint.sites} | set(new.sites))
    keys = [e.footprint.key() for e in earlier]
    cache = (id(ctx.history), new.study_id, new.table, tuple(sites))
    table, covered = _TABLES.get(cache, (None, []))
    if table is None or keys[:len(covered)] != covered or len(keys) - len(covered) > 500:
        table, covered = CellTable.build([(i, sizes[k]) for i, k in enumerate(keys)], sites), keys
        _TABLES[cache] = (table, covered)
    near = nested_near(new_sizes, table, sites, ctx.k)
    if len(keys) > len(covered):  # released since the table was built: compared directly
        recent = CellTable.build([(i, sizes[keys[i]]) for i in range(len(covered), len(keys))], sites)
        near |= nested_near(new_sizes, recent, sites, ctx.k)
    # triples: among the most recent related footprints and the most recent of all (pairs: the whole history)
    members = sorted(set([i for i, e in enumerate(earlier) if related(new, e.footprint)][-TRIPLE_FAMILY:])
                     | set(range(max(0, len(earlier) - TRIPLE_RECENT), len(earlier))))
    family = CellTable.build([(i, sizes[keys[i]]) for i in members], sites)
    triples = triple_near(new_sizes, family, sites, ctx.k)
    footprints = [e.footprint for e in earlier]
    groups = hidden_linked(new, new_sizes, footprints, [sizes[key] for key in keys], ctx.k)
    groups += filter_families(new, footprints)
    around = {i for focus, members in groups for i in [focus, *members] if i >= 0}
    ctx.result.checked = {"earlier_footprints": len(earlier), "nested_near": len(near), "related": len(members),
                          "triple_near": len(triples), "hidden_linked": len(groups)}
    chosen = sorted(near | triples | around)
    at = {i: n for n, i in enumerate(chosen)}
    return [earlier[i] for i in chosen], [(at[f] if f >= 0 else f, [at[i] for i in m]) for f, m in groups]


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
        check_filters(Query(study_id=fp.study_id, table=fp.table, filters=filters, exists=exists),  # type: ignore[arg-type]
                      ctx.policy)
        for d in fp.dims:
            require(ctx.policy, fp.study_id, fp.table, d, "grouping", GROUPABLE)
    except (QueryRefused, ValueError):
        return False
    return True


def cite(ctx: Context, earlier: list[Earlier], involved: list[int]) -> str:
    """The earlier results a leak involves (indexes of the atom space's footprints, 0 being the new one), as
    the analyst may see them: their own queries described, another analyst's only by audit number."""
    parts = []
    for i in dict.fromkeys(involved):
        if i == 0:
            continue
        e = earlier[i - 1]
        if e.analyst == ctx.result.analyst:
            parts.append(f"your earlier result #{e.audit_id} ({e.described})")
        else:
            parts.append(f"an earlier result released to another analyst (audit #{e.audit_id})")
    return " and ".join(parts) or "an earlier result"


CENTRAL_GUARDS: list[type[CentralGuard]] = [SubsetGuard, DifferencingGuard]
