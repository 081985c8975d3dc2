"""The atoms of the sites a set of footprints involves, and each footprint's released cells as 0/1 vectors
over them (the input of `differencing`). One `HistoryAtoms` task per site, in one round."""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from federation.query.central.differencing import (
    NESTED,
    EmptyCombinationGuard,
    Leak,
    TooMuchHistory,
    Union,
    Units,
    Vectors,
    pair_leaks,
    triple_leaks,
)
from federation.query.central.history import Footprint, key_json
from federation.query.central.structure import CellDef, is_disjoint_union
from federation.query.guard import QueryRefused
from federation.query.policy import QueryPolicy
from federation.query.site.partial import SiteReply, SiteTask
from federation.query.site.summaries import Answer, Atoms, HistoryAtoms, Refusal, Released, Subset

if TYPE_CHECKING:
    from federation.query.central.runner import Context


def subsets_at(footprints: list[Footprint], site: str) -> tuple[list[Subset], list[tuple[int, int]]]:
    """The distinct subsets of the footprints that involve `site`, and (footprint, subset) for each of them:
    what a site is asked about, each subset once."""
    index: dict[str, int] = {}
    defs: list[Subset] = []
    pairs: list[tuple[int, int]] = []
    for x, fp in enumerate(footprints):
        if site not in fp.sites:
            continue
        key = fp.subset_key()
        if key not in index:
            filters, exists = fp.filters()
            index[key] = len(defs)
            defs.append(Subset(filters=filters, exists=exists, split=fp.split()))
        pairs.append((x, index[key]))
    return defs, pairs


def history_answers(ctx: Context, replies: dict[str, SiteReply | str], site: str, kind: type[Answer]
                    ) -> list[Answer] | None:
    """A site's one answer of `kind` to a differencing-check task. None when the site is down and outside
    this query: its rows only widen earlier results, so leaving them out can only make differences look
    smaller (refuse more), never hide one. Refused when a site of this query cannot answer, or any site
    refuses."""
    reply = replies.get(site, "no reply")
    if isinstance(reply, str) and site not in ctx.sites:
        return None
    if not isinstance(reply, str):
        refusal = next((a for a in reply.answers if isinstance(a, Refusal)), None)
        if refusal is not None:
            raise QueryRefused(f"the differencing check was refused at {site}: {refusal.reason}",
                               refusal.suggestion)
        if len(reply.answers) == 1 and isinstance(reply.answers[0], kind):
            return list(reply.answers)
    why = reply if isinstance(reply, str) else "a malformed reply"
    raise QueryRefused(f"the differencing check needs every site that answered earlier results, and {site} "
                       f"could not answer it ({why}); nothing was released", "ask again later")


class AtomSpace:
    def __init__(self, footprints: list[Footprint], sites: list[str], dims: list[str]) -> None:
        self.footprints = footprints
        self.sites = sites
        self.dims = dims
        self.skipped: list[str] = []
        self.site_of = np.zeros(0, dtype=int)
        self.weight = np.zeros(0)
        self.units = Units.additive(self.weight)  # patients in sets of atoms (`differencing.Units`)
        self.member = np.zeros((0, len(footprints)), dtype=bool)  # atom x footprint
        self.keys: list[tuple[Any, ...]] = []
        self._code_cache: dict[tuple[str, ...], tuple[np.ndarray, list[str]]] = {}
        self._cells_cache: dict[tuple[int, bool], list[tuple[np.ndarray, bool, frozenset[str], str]]] = {}
        self.policy: QueryPolicy | None = None  # the groups it offers bound what a cell can hold by definition

    @classmethod
    def ask(cls, ctx: Context, footprints: list[Footprint]) -> AtomSpace:
        """Ask every site any footprint involves for its atoms over all of them."""
        dims = sorted({d for fp in footprints for d in fp.dims})
        sites = sorted({s for fp in footprints for s in fp.sites})
        space = cls(footprints, sites, dims)
        space.policy = ctx.policy
        tasks, columns_of = {}, {}
        for site in sites:
            defs, pairs = subsets_at(footprints, site)
            columns: list[Released] = []
            col_index: dict[tuple[int, int], int] = {}
            where: dict[int, int] = {}  # footprint -> column at this site
            for x, sub in pairs:
                col = (sub, footprints[x].sites[site])
                if col not in col_index:
                    col_index[col] = len(columns)
                    columns.append(Released(subset=col[0], version=col[1]))
                where[x] = col_index[col]
            columns_of[site] = where
            request = HistoryAtoms(table=footprints[0].table, subsets=defs, columns=columns, dims=dims)  # type: ignore[arg-type]
            tasks[site] = SiteTask(study_id=footprints[0].study_id, version=None,
                                   thresholds=ctx.policy.disclosure, requests=[request])
        replies = ctx.gateway.ask(tasks)
        site_of: list[int] = []
        weight: list[float] = []
        keys: list[tuple[Any, ...]] = []
        member_rows: list[np.ndarray] = []
        pattern_atoms: list[list[int]] = []  # patients with rows in several atoms: those atoms (global indexes)
        pattern_n: list[int] = []
        for i, site in enumerate(sites):
            answers = history_answers(ctx, replies, site, Atoms)
            if answers is None:
                space.skipped.append(site)
                continue
            (atoms,) = answers
            assert isinstance(atoms, Atoms)
            where = columns_of[site]
            first = len(keys)
            for p in atoms.patterns:
                if any(not 0 <= a < len(atoms.cells) for a in p.atoms):
                    raise QueryRefused(f"the differencing check got a malformed reply from {site}; nothing was "
                                       "released", "ask again later")
                pattern_atoms.append([first + a for a in p.atoms])
                pattern_n.append(p.n)
            for cell in atoms.cells:
                bits = int(cell.bits, 16)
                row = np.zeros(len(footprints), dtype=bool)
                for x, c in where.items():
                    row[x] = bool(bits >> c & 1)
                site_of.append(i)
                weight.append(cell.n if footprints[0].table == "patients" else cell.patients)
                keys.append(tuple(cell.key))
                member_rows.append(row)
        space.site_of = np.asarray(site_of, dtype=int)
        space.weight = np.asarray(weight, dtype=float)
        patterns = None
        if pattern_atoms:
            cols = np.concatenate([np.asarray(a, dtype=np.int64) for a in pattern_atoms])
            indptr = np.cumsum([0] + [len(a) for a in pattern_atoms])
            patterns = sparse.csr_matrix((np.ones(len(cols)), cols, indptr), shape=(len(pattern_atoms), len(weight)))
        space.units = Units(upper=space.weight, patterns=patterns, counts=np.asarray(pattern_n, dtype=float))
        space.keys = keys
        space.member = np.asarray(member_rows, dtype=bool).reshape(len(member_rows), len(footprints))
        return space

    def _codes(self, dims: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
        """One integer per atom naming its cell on `dims`, and each cell's key (as `key_json`)."""
        cached = self._code_cache.get(dims)
        if cached is None:
            pos = [self.dims.index(d) for d in dims]
            seen: dict[str, int] = {}
            codes = np.asarray([seen.setdefault(key_json([k[p] for p in pos]), len(seen)) for k in self.keys],
                               dtype=int)
            cached = self._code_cache[dims] = (codes, list(seen))
        return cached

    def vectors(self, indexes: Iterable[int], per_site: bool = True) -> Vectors:
        """The cells the given footprints showed, at each of their levels: combined over their sites, and per
        site when they released per-site values (and `per_site`); cells they hid are left out."""
        rows: list[np.ndarray] = []
        owner: list[int] = []
        flags: list[bool] = []
        cond: list[frozenset[str]] = []
        where: list[str] = []
        for x in indexes:
            for atoms, flag, group, site in self._cells_of(x, per_site):
                rows.append(atoms)
                owner.append(x)
                flags.append(flag)
                cond.append(group)
                where.append(site)
        indptr = np.cumsum([0] + [len(r) for r in rows])
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=int)
        matrix = sparse.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(rows), len(self.keys)))
        return Vectors(matrix=matrix, owner=owner, per_site=flags, cond=cond, where=where)

    def _cells_of(self, x: int, per_site: bool) -> list[tuple[np.ndarray, bool, frozenset[str], str]]:
        """Footprint `x`'s shown cells as (atoms, per site or not, conditions, site), in `vectors`' order;
        computed on the footprint's own atoms (not over all of them) and kept: span groups share members."""
        cached = self._cells_cache.get((x, per_site))
        if cached is not None:
            return cached
        fp = self.footprints[x]
        out: list[tuple[np.ndarray, bool, frozenset[str], str]] = []
        inside = np.nonzero(self.member[:, x])[0] if len(self.keys) else np.zeros(0, dtype=np.int64)
        if len(inside):
            filters, exists = fp.conditions()
            base = filters | {f"exists {e}" for e in exists}
            for level in fp.levels:
                codes, names = self._codes(level)
                present, which = np.unique(codes[inside], return_inverse=True)
                order = np.argsort(which, kind="stable")  # atoms stay in increasing order within a cell
                bounds = np.searchsorted(which[order], np.arange(len(present) + 1))
                for u, code in enumerate(present):
                    here = inside[order[bounds[u]:bounds[u + 1]]]
                    group = base | group_conditions(level, names[code])
                    if not fp.is_hidden("", level, names[code]):
                        out.append((here, False, group, ""))
                    if fp.per_site and per_site:
                        at = self.site_of[here]
                        for s in np.unique(at):
                            if not fp.is_hidden(self.sites[s], level, names[code]):
                                out.append((here[at == s], True, group, self.sites[s]))
        self._cells_cache[(x, per_site)] = out
        return out

    def hidden_sets(self, x: int) -> np.ndarray:
        """The atoms of each cell footprint `x` hid, as rows of a (hidden cells, atoms) 0/1 matrix."""
        fp = self.footprints[x]
        inside = self.member[:, x] if len(self.keys) else np.zeros(0, dtype=bool)
        sets: list[np.ndarray] = []
        for site, level, key in fp.hidden:
            codes, names = self._codes(level)
            if key not in names or (site and site not in self.sites):
                continue
            here = inside & (codes == names.index(key))
            if site:
                here &= self.site_of == self.sites.index(site)
            sets.append(here)
        return np.asarray(sets, dtype=bool).reshape(len(sets), len(self.keys))

    def empty_hidden(self, x: int) -> list[CellDef]:
        """The cells footprint `x` hid that hold no row (what they are by definition, for `structure.phantoms`)."""
        fp = self.footprints[x]
        inside = self.member[:, x] if len(self.keys) else np.zeros(0, dtype=bool)
        filters, exists = fp.conditions()
        base = filters | {f"exists {e}" for e in exists}
        out = []
        for site, level, key in fp.hidden:
            codes, names = self._codes(level)
            if key in names and (not site or site in self.sites):
                here = inside & (codes == names.index(key))
                if site:
                    here &= self.site_of == self.sites.index(site)
                if here.any():
                    continue
            group = base | group_conditions(level, key)
            out.append(CellDef(cond=frozenset(group), site=site, versions=fp.versions))
        return out

    def cell_defs(self, v: Vectors) -> list[CellDef]:
        """What each cell of `v` is by definition."""
        return [CellDef(cond=c, site=w, versions=self.footprints[o].versions)
                for c, w, o in zip(v.cond, v.where, v.owner, strict=True)]

    def first_leak(self, new: Vectors, pool: Vectors, k: int, shown: Vectors | None = None) -> Leak | None:
        """The first small set `new` makes derivable with `pool` (indexes into the vectors given); `shown` are
        every cell of the new result, `new` and those it shows again (by default `new`)."""
        shown = new if shown is None else shown
        mine = set(row_bytes(shown.matrix))
        same = self.same_patients(new, pool, shown)
        if same is not None:
            return same
        (new, new_at), (pool, pool_at) = informative(new, pool, self.units, k)
        leaks = [Leak(new=int(new_at[x.new]), earlier=tuple(int(pool_at[i]) for i in x.earlier), how=x.how)
                 for x in self._leaks(new, pool, k, np.array([r in mine for r in row_bytes(pool.matrix)]))]
        return leaks[0] if leaks else None

    def same_patients(self, new: Vectors, pool: Vectors, shown: Vectors) -> Leak | None:
        """A new cell with the same patients as an earlier cell of other conditions (filters, split and group,
        however written): released, it would tell that none lies between them where 1..k-1 would be refused,
        so it is refused with the same text (the red team's D6 and E1 found a patient's follow-up month with
        windows with and without a filter; E2 and E3 through a curve's withheld times and a proportion).
        Not when the new result shows that earlier cell itself (a curve's number at risk before anyone has
        left is its group's count), nor when some earlier cell of the new cell's own conditions had those
        patients (then that was known)."""
        own: dict[bytes, set[frozenset[str]]] = {}  # row -> conditions of the new result's cells showing it
        for row, c in zip(row_bytes(shown.matrix), shown.cond, strict=True):
            own.setdefault(row, set()).add(c)
        where: dict[bytes, list[int]] = {}
        for i, row in enumerate(row_bytes(pool.matrix)):
            if row in own:
                where.setdefault(row, []).append(i)
        for j, row in enumerate(row_bytes(new.matrix)):
            earlier = where.get(row, [])
            if any(pool.cond[i] == new.cond[j] for i in earlier):
                continue  # released before with these very conditions: nothing new about what lies between
            for i in earlier:
                if pool.cond[i] not in own[row]:
                    return Leak(new=j, earlier=(i,), how=NESTED)  # the same text: no oracle either
        return None

    def _union(self, new: Vectors, pool: Vectors) -> Union | None:
        """Whether a cell is two others apart by definition (`structure.is_disjoint_union`), for triples."""
        if not EmptyCombinationGuard.enabled() or not self.footprints or not new.where or not pool.where:
            return None
        study, table = self.footprints[0].study_id, self.footprints[0].table

        def cell(ref: tuple[str, int]) -> CellDef:
            v = new if ref[0] == "new" else pool
            i = ref[1]
            return CellDef(cond=v.cond[i], site=v.where[i], versions=self.footprints[v.owner[i]].versions)

        def union(whole: tuple[str, int], x: tuple[str, int], y: tuple[str, int]) -> bool:
            return is_disjoint_union(study, table, cell(whole), cell(x), cell(y), self.policy)
        return union

    def _leaks(self, new: Vectors, pool: Vectors, k: int, also_new: np.ndarray) -> list[Leak]:
        # an earlier cell the new result shows too is no pair with it: their difference is the new result's
        # own (a curve's number at risk at two times, one also asked as a filter), under its own control
        apart, at = select_rows(pool, ~also_new) if len(also_new) else (pool, np.arange(0))
        leaks = [Leak(new=x.new, earlier=tuple(int(at[i]) for i in x.earlier), how=x.how)
                 for x in pair_leaks(new, apart, self.units, self.site_of, len(self.sites), k)]
        if not leaks:
            try:
                leaks = triple_leaks(new, pool, self.units, k, union=self._union(new, pool), also_new=also_new)
            except TooMuchHistory:
                raise QueryRefused("the differencing check found more combinations with earlier results than it "
                                   "checks in one query; nothing was released",
                                   "ask the consortium's data team to review the query history") from None
        return leaks


def row_bytes(m: sparse.csr_matrix) -> list[bytes]:
    """Each row's atoms, as bytes (rows with the same atoms are the same cell)."""
    return [m.indices[m.indptr[i]:m.indptr[i + 1]].tobytes() for i in range(m.shape[0])]


def group_conditions(level: Iterable[str], key: str) -> frozenset[str]:
    """A cell's group as conditions (`column == value`, canonical JSON as filters are written)."""
    return _group_conditions(tuple(level), key)


@lru_cache(maxsize=100_000)
def _group_conditions(level: tuple[str, ...], key: str) -> frozenset[str]:
    return frozenset(json.dumps({"column": c, "op": "==", "value": v}, sort_keys=True)
                     for c, v in zip(level, json.loads(key), strict=True))


def select_rows(v: Vectors, keep: np.ndarray) -> tuple[Vectors, np.ndarray]:
    idx = np.nonzero(keep)[0]
    return Vectors(matrix=v.matrix[idx], owner=[v.owner[i] for i in idx], per_site=[v.per_site[i] for i in idx],
                   cond=[v.cond[i] for i in idx] if v.cond else [],
                   where=[v.where[i] for i in idx] if v.where else []), idx


def informative(new: Vectors, pool: Vectors, units: Units, k: int
                ) -> tuple[tuple[Vectors, np.ndarray], tuple[Vectors, np.ndarray]]:
    """Leave out cells of 1..k-1 patients (suppressed when released, so never released as such) and new cells
    identical to an earlier one (they add nothing to what is known); with the indexes of the rows kept."""
    def small(v: Vectors) -> np.ndarray:
        sizes = units.of(v.matrix) if v.matrix.shape[0] else np.zeros(0)
        return (sizes > 0.5) & (sizes < k - 0.5)

    pool_kept, pool_at = select_rows(pool, ~small(pool))
    new_kept, new_at = select_rows(new, ~small(new))
    if pool_kept.matrix.shape[0] and new_kept.matrix.shape[0]:
        known = set(row_bytes(pool_kept.matrix))
        fresh = np.array([row not in known for row in row_bytes(new_kept.matrix)])
        new_kept, at = select_rows(new_kept, fresh)
        new_at = new_at[at]
    return (new_kept, new_at), (pool_kept, pool_at)
