"""One differencing history for every analyst, every site selection and every version, indexed.

Every released result leaves a *footprint*: the study, the unit table, the subset (filters and exists
filters), the group-by columns, the sites with the version each answered from, and whether per-site values
were released. The differencing guard compares a new query with every footprint on the same study and
table, whoever asked it: colluding analysts, or one analyst under several identities, share one history.

The audit log stays the record; this index (SQLite, next to the audit log) keeps one row per *distinct*
footprint with the first audit entry that released it, and reads only the audit lines appended since its
last sync (it remembers the byte offset). A consortium's 100,000 routine results collapse to the distinct
footprints the guard must compare with, found through an index on (study, table).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.query.central.audit import AuditLog
from federation.query.guard import Guard
from federation.query.model import Exists, Filter, Query

VERSION_NUMBER = re.compile(r"@v(\d+)$")


Level = tuple[str, ...]  # the group-by columns a released cell is keyed by (() for a total)
HiddenCell = tuple[str, Level, str]  # (site, or "" for the combined cell; its level; its key as JSON)


def key_json(key: Any) -> str:
    """A cell key in one canonical text (keys come from site answers, the payload and the audit log alike)."""
    return json.dumps(list(key), separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Footprint:
    """What one released result covered: rows of `subset` in `table` of `study_id`, by `dims`, at each
    (site, version), combined, and per site too when `per_site`. `levels` are the group-by columns of each
    kind of cell it released (a count releases its groups and their total; a crosstab its margins too), and
    `hidden` the cells of those levels that were suppressed (not released, so not in any difference)."""

    study_id: str
    table: str
    subset: str  # canonical JSON: {"exists": [...], "filters": [...]}
    dims: tuple[str, ...]
    versions: tuple[tuple[str, int], ...]
    per_site: bool
    levels: tuple[Level, ...] = ()
    hidden: tuple[HiddenCell, ...] = ()

    def __post_init__(self) -> None:
        if not self.levels:
            object.__setattr__(self, "levels", (self.dims,))

    @classmethod
    def of(cls, query: Query, versions: dict[str, int], per_site: bool,
           levels: list[list[str]] | None = None, hidden: list[list[Any]] | None = None,
           split: list[Filter] | None = None, dims: list[str] | None = None) -> Footprint:
        """The footprint of `query`'s result; with `split`, of the part of it a statistic splits its groups by
        (a proportion's `column == value`, a model's outcome, a curve's number at risk at a time): the same
        cells on the rows of the subset that also match `split`."""
        body: dict[str, Any] = {"filters": [f.model_dump(mode="json") for f in query.filters],
                                "exists": [e.model_dump(mode="json") for e in query.exists]}
        if split:
            body["split"] = [f.model_dump(mode="json") for f in split]
        subset = json.dumps(body, sort_keys=True, separators=(",", ":"))
        columns = list(query.group_by) if dims is None else dims  # a model's categorical covariates, e.g.
        return cls(study_id=query.study_id, table=query.table, subset=subset, dims=tuple(columns),
                   versions=tuple(sorted(versions.items())), per_site=per_site,
                   levels=tuple(tuple(level) for level in levels or [columns]),
                   hidden=tuple(sorted((str(site), tuple(level), key_json(key)) for site, level, key in hidden or [])))

    @classmethod
    def from_json(cls, text: str) -> Footprint:
        d = json.loads(text)
        return cls(study_id=d["study_id"], table=d["table"], subset=d["subset"], dims=tuple(d["dims"]),
                   versions=tuple((s, int(v)) for s, v in d["versions"]), per_site=bool(d["per_site"]),
                   levels=tuple(tuple(level) for level in d.get("levels", [d["dims"]])),
                   hidden=tuple((h[0], tuple(h[1]), h[2]) for h in d.get("hidden", [])))

    def to_json(self) -> str:
        body: dict[str, Any] = {"study_id": self.study_id, "table": self.table, "subset": self.subset,
                                "dims": list(self.dims), "versions": [list(v) for v in self.versions],
                                "per_site": self.per_site}
        if self.levels != (self.dims,):
            body["levels"] = [list(level) for level in self.levels]
        if self.hidden:
            body["hidden"] = [[site, list(level), key] for site, level, key in self.hidden]
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def is_hidden(self, site: str, level: Level, key: str) -> bool:
        hidden = self.__dict__.get("_hidden_set")
        if hidden is None:
            hidden = set(self.hidden)
            object.__setattr__(self, "_hidden_set", hidden)
        return (site, level, key) in hidden

    def key(self) -> str:
        cached: str | None = self.__dict__.get("_key")
        if cached is None:
            cached = hashlib.sha256(self.to_json().encode()).hexdigest()
            object.__setattr__(self, "_key", cached)
        return cached

    def subset_key(self) -> str:
        return hashlib.sha256(f"{self.table}\0{self.subset}".encode()).hexdigest()[:24]

    def filters(self) -> tuple[list[Filter], list[Exists]]:
        """The query's own filters and exists filters (what the analyst asked for; not the split)."""
        d = json.loads(self.subset)
        return ([Filter.model_validate(f) for f in d["filters"]], [Exists.model_validate(e) for e in d["exists"]])

    def split(self) -> list[Filter]:
        """The filters of the part of the result this footprint is (none for the whole result)."""
        return [Filter.model_validate(f) for f in json.loads(self.subset).get("split", [])]

    def conditions(self) -> tuple[frozenset[str], frozenset[str]]:
        """Its filters (the query's and the split's) and exists filters, each as canonical text (with a cell's
        group, a cell's conditions: `AtomSpace.vectors`)."""
        cached: tuple[frozenset[str], frozenset[str]] | None = self.__dict__.get("_conditions")
        if cached is None:
            d = json.loads(self.subset)
            cached = (frozenset(json.dumps(f, sort_keys=True) for f in [*d["filters"], *d.get("split", [])]),
                      frozenset(json.dumps(e, sort_keys=True) for e in d["exists"]))
            object.__setattr__(self, "_conditions", cached)
        return cached

    @property
    def sites(self) -> dict[str, int]:
        return dict(self.versions)


@dataclass(frozen=True)
class Earlier:
    """A distinct earlier footprint and the first audit entry that released it."""

    footprint: Footprint
    audit_id: int
    analyst: str
    described: str = ""  # the first query that released it, as its analyst wrote it


class ValuedRowsGuard(Guard):
    """A result counts the rows where its statistic's columns have a value (a mean's column, a model's
    covariates and outcome), and its footprint in the history says so (`valued`)."""


def valued(query: Query) -> Query:
    """`query` narrowed to the rows its statistic counts: a mean, sum, variance or quantile counts the rows
    where its column has a value, a model its complete cases (every covariate and the outcome). Where such a
    column may be empty, the footprint says so (`column present`): the twelfth red team's A1 (two means of an
    ototoxicity grade, 16 and 15 graded rows among 12 more without one, gave one patient's grade) and A2 (a
    count of patients minus a model's n was the hidden count of a missing risk group)."""
    from federation.query.columns import may_be_empty

    if query.statistic in ("sum", "mean", "variance", "sd", "quantiles") and query.column:
        needed = [query.column]
    elif query.statistic == "logistic" and query.outcome is not None:
        needed = [*query.covariates, query.outcome.column]
    elif query.statistic == "cox":
        needed = [*query.covariates, f"{query.endpoint}_days", f"{query.endpoint}_event"]
    else:
        return query
    if not ValuedRowsGuard.enabled():
        return query
    have = {f.column for f in query.filters if f.op == "present"}
    present = [Filter(column=c, op="present", value=True) for c in dict.fromkeys(needed)
               if c not in have and may_be_empty(query.study_id, query.table, c)]
    return query.model_copy(update={"filters": [*query.filters, *present]}) if present else query


def footprints_of(query: Query, versions: dict[str, int], per_site: bool, released: dict[str, Any]
                  ) -> list[Footprint]:
    """The footprints of one released result (`runner.released_record`): the whole of it, then each part a
    statistic splits its groups by, with the whole's columns and levels unless the part names its own,
    and its own hidden cells; all on the rows the statistic counts (`valued`)."""
    query = valued(query)
    levels, dims = released.get("levels"), released.get("dims")
    whole = Footprint.of(query, versions, per_site, levels, released.get("hidden"), dims=dims)
    parts = [Footprint.of(query, versions, per_site, part.get("levels", levels), part.get("hidden"),
                          split=[Filter.model_validate(f) for f in part["split"]], dims=part.get("dims", dims))
             for part in released.get("splits") or []]
    return [whole, *parts]


# columns every unit table carries with the same value for all of a patient's rows (`columns.EVENT_PATIENT_COLUMNS`
# and the site): a filter or group on them selects patients, any other column of a row table selects rows
PATIENT_SIDE = {"site_id", "sex", "arm", "age_group", "stage", "histology_risk", "risk_group"}


def shadow_footprints(query: Query, versions: dict[str, int], per_site: bool, released: dict[str, Any]
                      ) -> list[Footprint]:
    """A result on a table of several rows per patient, as the patients it covers (footprints on `patients`,
    checked and kept with that table's): each cell is the patients with a row in it, `exists <table>: <its
    row filters>` with its patient filters and groups, and for a level grouped by row-level columns (a count
    by category) one footprint per key shown, `exists <table>: <row filters> and category == <key>`. A count
    of rows is often one of patients (one row per patient and category, time point, agent or gene), so set
    beside counts of patients it differences like one (the tenth red team: patients with a hearing loss, minus
    the girls' and the boys' hearing-loss rows, was one patient). The parts a result splits its groups by (a
    proportion's `column == value`) have theirs too: a proportion of hearing losses among late effects gives
    the rows of hearing loss. None for `patients` itself."""
    if query.table == "patients":
        return []
    query = valued(query)
    dims = list(released.get("dims") or query.group_by)
    levels = [list(level) for level in (released.get("levels") or [dims])]
    hidden = [(h[0], list(h[1]), list(h[2]) if isinstance(h[2], list) else json.loads(h[2]))
              for h in released.get("hidden") or []]
    keys = {json.dumps(level): list(ks) for level, ks in released.get("keys") or []}
    rows = [f for f in query.filters if f.column not in PATIENT_SIDE]
    patients = [f for f in query.filters if f.column in PATIENT_SIDE]

    def shadow(where: list[Filter], by: list[str], kept: list[list[str]], hide: list[list[Any]]) -> Footprint:
        # built without the limits of an analyst's query (five exists filters): a result at that limit has a
        # shadow beyond it (the eleventh red team's A2, A3: one that could not be written was never compared);
        # a differencing subset takes one exists filter more, and an exists filter as many conditions as a
        # query's filters
        q = Query.model_construct(study_id=query.study_id, table="patients", filters=patients,
                                  exists=[*query.exists, Exists.model_construct(table=query.table, where=where)],  # type: ignore[arg-type]
                                  group_by=by)
        return Footprint.of(q, versions, per_site, kept, hide, dims=by)

    out: list[Footprint] = []
    plain = [level for level in levels if all(d in PATIENT_SIDE for d in level)]
    if plain:  # the levels without row-level columns: one footprint, grouped by the patient-level columns
        out.append(shadow(rows, [d for d in dims if d in PATIENT_SIDE], plain,
                          [[site, level, key] for site, level, key in hidden if level in plain]))
    for level in levels:
        on_rows = [d for d in level if d not in PATIENT_SIDE]
        if not on_rows:
            continue
        mine = [d for d in level if d in PATIENT_SIDE]
        at = [level.index(d) for d in on_rows]
        combos = list(dict.fromkeys(tuple(key[i] for i in at) for key in keys.get(json.dumps(level), [])))
        for combo in combos[:MAX_SHADOW_KEYS]:
            if any(v is None for v in combo):
                continue  # a missing value: no `==` filter selects it (decision 0009, Open)
            where = [*rows, *(Filter(column=d, op="==", value=v) for d, v in zip(on_rows, combo, strict=True))]
            hide = [[site, mine, [key[level.index(d)] for d in mine]] for site, lv, key in hidden
                    if lv == level and tuple(key[i] for i in at) == combo]
            out.append(shadow(where, mine, [mine], hide))
    for part in released.get("splits") or []:  # a proportion's x: the patients with a row of its value
        split = [Filter.model_validate(f) for f in part["split"]]
        sub = {**released, "hidden": part.get("hidden") or [], "splits": [],
               **{k: part[k] for k in ("levels", "dims") if k in part}}
        out += shadow_footprints(query.model_copy(update={"filters": [*query.filters, *split]}), versions, per_site,
                                 sub)
    return out


MAX_SHADOW_KEYS = 200  # row-level keys of one level given a shadow each


def footprints_of_entry(entry: dict[str, Any], shadows: bool = False) -> list[Footprint]:
    """The footprints of a released audit entry; none for anything that released nothing. With `shadows`,
    also those on `patients` of a result on another table (`shadow_footprints`)."""
    if entry.get("outcome") != "released":
        return []
    try:
        query = Query.model_validate(entry["query"])
        versions = {site: int(VERSION_NUMBER.search(v).group(1))  # type: ignore[union-attr]
                    for site, v in (entry.get("versions") or {}).items()}
        released = entry.get("released") or {}
        per_site = bool(released.get("per_site", True))
        return footprints_of(query, versions, per_site, released) + (
            shadow_footprints(query, versions, per_site, released) if shadows else [])
    except (ValueError, KeyError, AttributeError, TypeError):
        return []


SCHEMA_VERSION = "6"  # footprints with levels, hidden cells, splits and shadows; an index of another version is rebuilt
SCHEMA = """
CREATE TABLE IF NOT EXISTS footprints (key TEXT PRIMARY KEY, study TEXT NOT NULL, tbl TEXT NOT NULL,
                                       body TEXT NOT NULL, first_id INTEGER NOT NULL, analyst TEXT NOT NULL,
                                       releases INTEGER NOT NULL, described TEXT NOT NULL DEFAULT '',
                                       part INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS footprints_by_table ON footprints (study, tbl);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sizes (key TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


class History:
    """The index of released footprints of one audit log (see the module docstring)."""

    _open: dict[Path, History] = {}
    _open_lock = threading.Lock()

    def __init__(self, audit: AuditLog, path: Path | None = None) -> None:
        self.audit = audit
        self.path = path or audit.path.with_name(audit.path.name + ".history.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.executescript(SCHEMA)
        if self._meta("schema", "") != SCHEMA_VERSION:  # an index written by another release: rebuilt from the log
            self._db.executescript("DROP TABLE IF EXISTS footprints; DROP TABLE IF EXISTS meta; "
                                   "DROP TABLE IF EXISTS sizes;" + SCHEMA)
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self._db.commit()
        self._lock = threading.RLock()
        self._size_cache: dict[str, dict[str, list[tuple[tuple[object, ...], int, str]]]] = {}
        self._table_locks: dict[tuple[str, str], threading.Lock] = {}

    @classmethod
    def of(cls, audit: AuditLog) -> History:
        """The one index of `audit`'s file in this process (shared by every query, so that its locks hold)."""
        with cls._open_lock:
            key = audit.path.resolve()
            if key not in cls._open:
                cls._open[key] = cls(audit)
            return cls._open[key]

    @contextmanager
    def serialized(self, study_id: str, table: str) -> Iterator[None]:
        """Queries on one study are checked and recorded one at a time: two analysts' concurrent queries cannot
        both pass the check without seeing each other (a result on a row table is checked against results on
        `patients` too: `shadow_footprints`)."""
        with self._lock:
            lock = self._table_locks.setdefault((study_id, ""), threading.Lock())
        with lock:
            yield

    def _meta(self, name: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else default

    def sync(self) -> None:
        """Index the audit entries appended since the last sync (all of them if the log was replaced)."""
        with self._lock:
            path = self.audit.path
            offset = int(self._meta("offset", "0"))
            size = path.stat().st_size if path.exists() else 0
            head = self._meta("head", "")
            if size < offset or (offset and head != _line_hash_at(path, offset)):
                self._db.execute("DELETE FROM footprints")  # sizes stay: a footprint's cells never change
                offset = 0
            if size == offset:
                return
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read(size - offset)
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next sync
            for line in complete.splitlines():
                if line.strip():
                    self._record(json.loads(line))
            offset += len(complete)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('offset', ?)", (str(offset),))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (_line_hash_at(path, offset),))
            self._db.commit()

    def _record(self, entry: dict[str, Any]) -> None:
        footprints = footprints_of_entry(entry, shadows=True)
        if not footprints:
            return
        query = Query.model_validate(entry["query"])
        described = query.describe()
        # the whole result (part 0), its splits (1), its shadow on patients (2)
        for part, fp in enumerate(footprints):
            self._db.execute(
                "INSERT INTO footprints VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "releases = releases + 1", (fp.key(), fp.study_id, fp.table, fp.to_json(), int(entry["id"]),
                                             str(entry.get("analyst", "")), described,
                                             min(part, 1) if fp.table == query.table else 2))

    def earlier(self, study_id: str, table: str, shadows: bool = True) -> list[Earlier]:
        """Every distinct footprint released on `study_id`/`table`, oldest first; without `shadows`, not those
        first released as the shadow of a result on another table (`shadow_footprints`)."""
        self.sync()
        with self._lock:
            rows = self._db.execute("SELECT body, first_id, analyst, described FROM footprints WHERE study = ? AND "
                                    "tbl = ? AND part <= ? ORDER BY first_id",
                                    (study_id, table, 2 if shadows else 1)).fetchall()
        return [Earlier(Footprint.from_json(body), int(first), analyst, described)
                for body, first, analyst, described in rows]

    def sizes(self, keys: list[str]) -> dict[str, dict[str, list[tuple[tuple[object, ...], int, str]]]]:
        """Cached cell sizes of footprints (site -> [(cell key, units)]); footprints not yet sized are absent."""
        out: dict[str, dict[str, list[tuple[tuple[object, ...], int, str]]]] = {}
        with self._lock:
            for key in keys:
                if key in self._size_cache:
                    out[key] = self._size_cache[key]
            missing = [k for k in keys if k not in out]
            for i in range(0, len(missing), 500):
                chunk = missing[i:i + 500]
                rows = self._db.execute(f"SELECT key, body FROM sizes WHERE key IN ({','.join('?' * len(chunk))})",
                                        chunk).fetchall()
                for key, body in rows:
                    value = {site: [(tuple(c[0]), int(c[1]), str(c[2])) for c in cells]
                             for site, cells in json.loads(body).items()}
                    self._size_cache[key] = out[key] = value
        return out

    def store_sizes(self, sized: dict[str, dict[str, list[tuple[tuple[object, ...], int, str]]]]) -> None:
        with self._lock:
            for key, value in sized.items():
                body = json.dumps({site: [[list(k), n, sk] for k, n, sk in cells] for site, cells in value.items()})
                self._db.execute("INSERT OR REPLACE INTO sizes VALUES (?, ?)", (key, body))
                self._size_cache[key] = value
            self._db.commit()

    def counts(self) -> tuple[int, int]:
        """(released results indexed, distinct footprints of whole results and of their splits)."""
        self.sync()
        with self._lock:
            total, distinct = self._db.execute("SELECT coalesce(sum(releases * (part = 0)), 0), count(*) "
                                               "FROM footprints").fetchone()
        return int(total), int(distinct)


def _line_hash_at(path: Path, offset: int) -> str:
    """A fingerprint of the audit line that ends at `offset` (to notice a log replaced by another)."""
    if offset == 0 or not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, offset - 512))
        tail = fh.read(offset - max(0, offset - 512))
    return hashlib.sha256(tail).hexdigest()
