"""Run a federated query: per-site summaries in parallel, guards, exact combination,
disclosure control, audit.

Order of work (each step can refuse, and every refusal is audited):
1. check the query against the allow-list and the harmonized schema;
2. open each site's published version with that site's query identity;
3. keep the sites with at least `min_site_rows` rows in the unit table;
4. subset guard: a filter must select 0 or at least k rows, and leave 0 or
   at least k rows out, at every site and combined;
5. differencing guard: the rows where this query and an earlier released
   query of the same analyst differ must be 0 or at least k in every cell;
6. compute and combine the statistic, then suppress what must not be shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from federation.exceptions import ConfigurationError, FederationError
from federation.query import stats
from federation.query.audit import AuditLog
from federation.query.disclosure import suppress
from federation.query.model import Filter, Query
from federation.query.policy import NEVER_QUERYABLE, DisclosurePolicy, load_query_policy
from federation.query.sites import EVENT_PATIENT_COLUMNS, PATIENT_LEVEL, SiteData, open_site
from federation.query.sql import group_select, ident, subset, where
from federation.schema import load_dictionary, load_registry
from federation.settings import Settings

MISSING = "(missing)"
GROUPABLE = {"string", "bool", "int8", "int16"}
NUMERIC = {"int8", "int16", "int32", "float64"}
QUANTILE_TOL = 1e-6


class QueryRefused(FederationError):
    def __init__(self, reason: str, suggestion: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.suggestion = suggestion


@dataclass
class Result:
    query: Query
    analyst: str
    status: str = "released"  # released | refused
    reason: str = ""
    suggestion: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    audit_id: int | None = None

    @property
    def sites(self) -> list[str]:
        return sorted(self.versions)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "suggestion": self.suggestion,
                "query": self.query.model_dump(mode="json"), "description": self.query.describe(),
                "analyst": self.analyst, "versions": self.versions, "excluded": self.excluded,
                "result": self.payload, "notes": self.notes, "audit_id": self.audit_id}


# ---- columns -----------------------------------------------------------------------------------
def unit_columns(study_id: str, table: str) -> dict[str, str]:
    """Column -> harmonized Arrow type name of a unit table (patients joined with diagnosis and outcome)."""
    d = load_dictionary(load_registry().study(study_id).schema_version)
    h = d.harmonized
    types = {c.name: c.type for c in h.common}
    if table == "patients":
        types.update({c.name: c.type for c in h.tables["patients"]})
        for t, cols in PATIENT_LEVEL.items():
            types.update({c.name: c.type for c in h.tables[t] if c.name in cols})
    else:
        types.update({c.name: c.type for c in h.tables[table]})
        patients = unit_columns(study_id, "patients")
        types.update({c: patients[c] for c in EVENT_PATIENT_COLUMNS})
    return types


def _check_columns(q: Query, settings: Settings) -> None:
    policy = load_query_policy(settings.query_policy)
    try:
        load_registry().study(q.study_id)
        allowed = set(policy.allowed(q.study_id, q.table))
    except ConfigurationError as exc:
        raise QueryRefused(str(exc)) from None
    types = unit_columns(q.study_id, q.table)

    def need(col: str, what: str, kinds: set[str] | None = None, table: str | None = None) -> None:
        tbl = table or q.table
        ok = set(policy.allowed(q.study_id, tbl)) if table else allowed
        if col in NEVER_QUERYABLE:
            raise QueryRefused(f"{col} is an identifier or free text and is never queryable")
        if col not in ok:
            raise QueryRefused(f"{col} is not a queryable column of {tbl} ({what})",
                               f"queryable columns: {', '.join(sorted(ok))}")
        col_types = types if table is None else unit_columns(q.study_id, tbl)
        if kinds and col_types.get(col) not in kinds:
            raise QueryRefused(f"{col} cannot be used for {what} (it is {col_types.get(col)})")

    for g in q.group_by:
        need(g, "grouping", GROUPABLE)
    for f in q.filters:
        need(f.column, "filtering")
    for e in q.exists:
        for f in e.where:
            need(f.column, f"filtering {e.table}", table=e.table)
    stat = q.statistic
    if stat == "crosstab" and len(q.group_by) != 2:
        raise QueryRefused("a crosstab needs exactly two group-by columns", "give --by twice")
    if stat in ("sum", "mean", "variance", "quantiles"):
        if not q.column:
            raise QueryRefused(f"{stat} needs a numeric --column")
        need(q.column, stat, NUMERIC)
    if stat == "proportion":
        if not q.column or q.value is None:
            raise QueryRefused("a proportion needs --column and --value (the share of rows where column == value)")
        need(q.column, "a proportion")
    if stat in ("km", "cox") and q.table != "patients":
        raise QueryRefused("survival models are computed on patients", "use --table patients")
    if stat == "cox":
        if not q.covariates:
            raise QueryRefused("a Cox model needs at least one --covariate")
        for c in q.covariates:
            need(c, "a covariate")
    if stat == "logistic":
        if q.outcome is None or not q.covariates:
            raise QueryRefused("logistic regression needs --outcome and at least one --covariate")
        need(q.outcome.column, "the outcome")
        for c in q.covariates:
            need(c, "a covariate")
    if stat == "quantiles":
        bad = [p for p in q.probs if p not in policy.disclosure.quantile_probs]
        if bad:
            raise QueryRefused(f"quantiles {bad} are not released (extreme quantiles reveal single patients)",
                               f"ask for probabilities among {list(policy.disclosure.quantile_probs)}")


# ---- the run -----------------------------------------------------------------------------------
def run_query(q: Query, settings: Settings, analyst: str, *, audit: AuditLog | None = None) -> Result:
    """Run `q` for `analyst`; the result is released or refused, and recorded in the audit log."""
    audit = audit or AuditLog(settings.audit_log)
    result = Result(query=q, analyst=analyst)
    sites_data: dict[str, SiteData] = {}
    try:
        _check_columns(q, settings)
        consortium = load_query_policy(settings.query_policy).disclosure
        sites_data = _open_sites(q, settings, result)
        policies = {s: _site_policy(consortium, settings, s) for s in sites_data}
        base_rows = _take_part(q, sites_data, policies, result)
        if not sites_data:
            raise QueryRefused("no site can take part in this query", "check the study id and published data")
        k = max(p.min_cell for p in policies.values())
        _subset_guard(q, sites_data, policies, k, base_rows)
        combined_only = _differencing_guard(q, sites_data, policies, audit, analyst, k, consortium)
        result.payload = COMPUTE[q.statistic](q, sites_data, policies, k, result)
        if combined_only:
            result.payload = _hide_per_site(result.payload)
            result.notes.append("per-site values are withheld: with one of your earlier queries they would "
                                "isolate a few patients at a site (differencing); the combined values are exact")
    except QueryRefused as exc:
        result.status, result.reason, result.suggestion, result.payload = "refused", exc.reason, exc.suggestion, {}
    finally:
        for data in sites_data.values():
            data.close()
    entry = audit.append({"analyst": analyst, "query": q.model_dump(mode="json"), "fingerprint": q.fingerprint(),
                          "versions": result.versions, "outcome": result.status, "reason": result.reason,
                          "excluded": result.excluded, "released": _digest(result.payload)})
    result.audit_id = entry["id"]
    return result


def _digest(payload: dict[str, Any]) -> dict[str, Any]:
    """What was released, for the audit log: counts of suppressed entries and a hash of the values."""
    import hashlib
    import json

    text = json.dumps(payload, sort_keys=True, default=str)
    per_site = any(v != {"suppressed": True} for v in _per_site_values(payload))
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "suppressed": text.count('"suppressed"'),
            "per_site": per_site, "bytes": len(text)}


def _per_site_values(payload: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(payload, dict):
        for k, v in payload.items():
            if k == "per_site" and isinstance(v, dict):
                out.extend(v.values())
            else:
                out.extend(_per_site_values(v))
    elif isinstance(payload, list):
        for v in payload:
            out.extend(_per_site_values(v))
    return out


def _site_policy(consortium: DisclosurePolicy, settings: Settings, site_id: str) -> DisclosurePolicy:
    try:
        site = settings.site(site_id)
    except ConfigurationError:
        return consortium
    return DisclosurePolicy(min_cell=max(consortium.min_cell, site.disclosure.min_cell),
                            min_site_rows=max(consortium.min_site_rows, site.disclosure.min_site_rows),
                            glm_max_param_ratio=consortium.glm_max_param_ratio,
                            quantile_probs=consortium.quantile_probs,
                            differencing_lookback=consortium.differencing_lookback)


def _published_sites(settings: Settings, study_id: str) -> list[str]:
    from federation.storage import open_store

    store = open_store(settings.storage, "pipeline") if settings.storage.kind == "local" else None
    if store is not None:
        prefix = f"{settings.storage.harmonized_bucket}/"
        found = {o.key.split("/")[1] for o in store.list(prefix) if f"/{study_id}/_versions/" in o.key}
        return sorted(found)
    return settings.site_ids()  # on S3 the query runner cannot list across sites: it asks each configured site


def _open_sites(q: Query, settings: Settings, result: Result) -> dict[str, SiteData]:
    wanted = q.sites or _published_sites(settings, q.study_id)
    opened: dict[str, SiteData] = {}
    errors: dict[str, str] = {}

    def one(site: str) -> tuple[str, SiteData | None, str]:
        try:
            pinned = (q.versions or {}).get(site)
            return site, open_site(settings.storage, site, q.study_id, pinned), ""
        except Exception as exc:  # noqa: BLE001 - any failure of one site is reported for that site
            return site, None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=min(8, max(len(wanted), 1))) as pool:
        for site, data, error in pool.map(one, wanted):
            if data is not None:
                opened[site] = data
                result.versions[site] = data.version.version_id
            elif q.sites is not None or "has no published version" not in error:
                errors[site] = error
    if errors and not q.allow_partial:
        for data in opened.values():
            data.close()
        raise QueryRefused("some sites could not be reached: " + "; ".join(f"{s}: {e}" for s, e in errors.items()),
                           "retry later, or release the result without them with --allow-partial")
    for site, error in errors.items():
        result.excluded[site] = f"missing from this result: {error}"
        result.notes.append(f"PARTIAL RESULT: {site} is not included ({error})")
    return opened


def _take_part(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy],
               result: Result) -> dict[str, int]:
    """Drop the sites with too few rows in the unit table; the row count of each site that takes part."""
    base_rows: dict[str, int] = {}
    for site in list(sites):
        n = sites[site].sql(f"SELECT count(*) FROM unit_{q.table}")[0][0]
        base_rows[site] = int(n)
        if n < policies[site].min_site_rows:
            result.excluded[site] = f"fewer than {policies[site].min_site_rows} rows in {q.table}: does not take part"
            result.versions.pop(site, None)
            sites.pop(site).close()
            del base_rows[site]
    return base_rows


def _counts(site: SiteData, q: Query, dims: list[str], filters_sql: tuple[str, list[Any]] | None = None
            ) -> dict[tuple[Any, ...], int]:
    frm, params = filters_sql or subset(q)
    sel, grp = group_select(dims)
    rows = site.sql(f"SELECT {sel}count(*) {frm}{grp}", params)
    return {tuple(r[:-1]): int(r[-1]) for r in rows}


def _subset_guard(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
                  base_rows: dict[str, int]) -> None:
    if not q.filters and not q.exists:
        return
    totals = [0, 0]
    frm, params = subset(q)
    for site, data in sites.items():
        base = base_rows[site]
        chosen = data.sql(f"SELECT count(*) {frm}", params)[0][0]
        ks = policies[site].min_cell
        totals[0] += base
        totals[1] += chosen
        if 0 < chosen < ks or 0 < base - chosen < ks:
            raise QueryRefused(
                f"the filter selects fewer than {ks} rows, or leaves fewer than {ks} rows out, at one or more "
                "sites: comparing it with the unfiltered result would isolate a few patients",
                "use a broader filter, or group by the variable instead of filtering on it")
    if 0 < totals[1] < k or 0 < totals[0] - totals[1] < k:
        raise QueryRefused(f"the filter selects fewer than {k} rows, or leaves fewer than {k} out, in all sites "
                           "together", "use a broader filter")


def _small_difference(only_new: int, only_old: int, k: int) -> bool:
    """Nested subsets whose difference is a few rows: subtracting the two results isolates them."""
    return (only_new == 0 and 0 < only_old < k) or (only_old == 0 and 0 < only_new < k)


def _differencing_guard(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy],
                        audit: AuditLog, analyst: str, k: int, consortium: DisclosurePolicy) -> bool:
    """Compare with the analyst's earlier released queries on the same rows.

    Refuse when the combined results of the two would differ by a few rows in some cell. When only
    a site's results would (its per-site values are part of both releases), return True: release the
    combined values only.
    """
    earlier = [e for e in audit.entries() if e.get("analyst") == analyst and e.get("outcome") == "released"]
    earlier = earlier[-consortium.differencing_lookback:] if consortium.differencing_lookback else []
    combined_only = False
    for entry in reversed(earlier):
        try:
            old = Query.model_validate(entry["query"])
        except ValueError:
            continue
        if old.study_id != q.study_id or old.table != q.table:
            continue
        if (old.filters, old.exists) == (q.filters, q.exists):
            continue
        dims = [d for d in q.group_by if d in old.group_by]
        new_p: list[Any] = []
        new_w = where(q.filters, q.exists, new_p)
        old_p: list[Any] = []
        old_w = where(old.filters, old.exists, old_p)
        sel, grp = group_select(dims)
        in_new, in_old = f"(({new_w}) IS TRUE)", f"(({old_w}) IS TRUE)"
        sql = (f"SELECT {sel}count(*) FILTER (WHERE {in_new} AND NOT {in_old}), "
               f"count(*) FILTER (WHERE {in_old} AND NOT {in_new}) FROM unit_{q.table}{grp}")
        combined: dict[tuple[Any, ...], list[int]] = {}
        old_had_sites = bool(entry.get("released", {}).get("per_site", True))
        for site, data in sites.items():
            for row in data.sql(sql, new_p + old_p + old_p + new_p):
                only_new, only_old = int(row[-2]), int(row[-1])
                cell = combined.setdefault(tuple(row[:-2]), [0, 0])
                cell[0] += only_new
                cell[1] += only_old
                if old_had_sites and _small_difference(only_new, only_old, policies[site].min_cell):
                    combined_only = True
        if any(_small_difference(a, b, k) for a, b in combined.values()):
            raise QueryRefused(
                f"this query and your earlier query #{entry['id']} ({old.describe()}) differ by fewer than {k} "
                "rows in a cell: subtracting one result from the other would isolate a few patients "
                "(differencing)",
                "ask for the groups you compare directly, e.g. with --by, so that disclosure control covers them")
    return combined_only


def _hide_per_site(payload: Any) -> Any:
    """Drop every per-site value of a result (the combined values stay)."""
    if isinstance(payload, dict):
        return {k: ({s: {"suppressed": True} for s in v} if k == "per_site" and isinstance(v, dict)
                    else _hide_per_site(v)) for k, v in payload.items()}
    if isinstance(payload, list):
        return [_hide_per_site(v) for v in payload]
    return payload


# ---- statistics --------------------------------------------------------------------------------
def _label(v: Any) -> Any:
    if v is None:
        return MISSING
    if isinstance(v, float) and math.isnan(v):
        return MISSING
    return v.item() if hasattr(v, "item") else v


def _sorted_keys(keys: set[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(keys, key=lambda t: tuple((x is None, str(x)) for x in t))


def _cell(v: float, suppressed: bool) -> Any:
    return {"suppressed": True} if suppressed else int(v)


def _count_table(per_site: dict[str, dict[tuple[Any, ...], int]], policies: dict[str, DisclosurePolicy], k: int,
                 keys: list[tuple[Any, ...]], *, totals: bool = True) -> tuple[np.ndarray, Any]:
    """Suppression of counts by group for every site and combined; `totals` when the result releases
    the total over the groups too (a count does; the n behind means and quantiles does not)."""
    sites = sorted(per_site)
    cells = np.array([[[per_site[s].get(key, 0)] for key in keys] for s in sites], dtype=float)
    released = suppress(cells, [policies[s].min_cell for s in sites], k, col_margin=False, row_margin=totals)
    return cells, released


def compute_count(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
                  result: Result) -> dict[str, Any]:
    if q.statistic == "crosstab":
        return compute_crosstab(q, sites, policies, k, result)
    per_site = {s: _counts(d, q, q.group_by) for s, d in sites.items()}
    keys = _sorted_keys({key for c in per_site.values() for key in c}) or [()]
    _, rel = _count_table(per_site, policies, k, keys)
    names = sorted(per_site)
    S, R = len(names), len(keys)
    rows = []
    for r, key in enumerate(keys):
        rows.append({"group": [_label(x) for x in key],
                     "combined": _cell(rel.values[S, r, 0], np.isnan(rel.values[S, r, 0])),
                     "per_site": {s: _cell(rel.values[i, r, 0], np.isnan(rel.values[i, r, 0]))
                                  for i, s in enumerate(names)}})
    total = {"combined": _cell(rel.values[S, R, 0], np.isnan(rel.values[S, R, 0])),
             "per_site": {s: _cell(rel.values[i, R, 0], np.isnan(rel.values[i, R, 0])) for i, s in enumerate(names)}}
    return {"statistic": "count", "dims": q.group_by, "rows": rows, "total": total,
            "suppressed_entries": rel.n_suppressed}


def compute_crosstab(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
                     result: Result) -> dict[str, Any]:
    per_site = {s: _counts(d, q, q.group_by) for s, d in sites.items()}
    keys = {key for c in per_site.values() for key in c}
    row_keys = _sorted_keys({(key[0],) for key in keys})
    col_keys = _sorted_keys({(key[1],) for key in keys})
    names = sorted(per_site)
    cells = np.array([[[per_site[s].get((r[0], c[0]), 0) for c in col_keys] for r in row_keys] for s in names],
                     dtype=float)
    rel = suppress(cells, [policies[s].min_cell for s in names], k)

    def matrix(i: int) -> list[list[Any]]:
        v = rel.values[i]
        return [[_cell(v[r, c], np.isnan(v[r, c])) for c in range(v.shape[1])] for r in range(v.shape[0])]

    return {"statistic": "crosstab", "rows_dim": q.group_by[0], "cols_dim": q.group_by[1],
            "rows": [_label(r[0]) for r in row_keys] + ["total"], "cols": [_label(c[0]) for c in col_keys] + ["total"],
            "combined": matrix(len(names)), "per_site": {s: matrix(i) for i, s in enumerate(names)},
            "suppressed_entries": rel.n_suppressed}


def compute_moments(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
                    result: Result) -> dict[str, Any]:
    assert q.column
    frm, params = subset(q)
    sel, grp = group_select(q.group_by)
    col = ident(q.column)
    per_site: dict[str, dict[tuple[Any, ...], tuple[int, float, float]]] = {}
    for s, d in sites.items():
        fetched = d.sql(f"SELECT {sel}count({col}), avg({col}), coalesce(var_pop({col}) * count({col}), 0) "
                        f"{frm} AND {col} IS NOT NULL{grp}", params)
        per_site[s] = {tuple(r[:-3]): (int(r[-3]), float(r[-2] or 0.0), float(r[-1])) for r in fetched}
    keys = _sorted_keys({key for c in per_site.values() for key in c}) or [()]
    names = sorted(per_site)
    counts = {s: {key: per_site[s].get(key, (0, 0.0, 0.0))[0] for key in keys} for s in names}
    _, rel = _count_table(counts, policies, k, keys, totals=False)
    S = len(names)

    def describe(m: tuple[int, float, float], hidden: bool) -> dict[str, Any]:
        n, mean, m2 = m
        if hidden or n == 0:
            return {"suppressed": True} if hidden else {"n": 0}
        var = m2 / (n - 1) if n > 1 else float("nan")
        out: dict[str, Any] = {"n": n, "mean": mean, "variance": var, "sd": math.sqrt(var) if n > 1 else None}
        if q.statistic == "sum":
            out["sum"] = mean * n
        return out

    rows = []
    for r, key in enumerate(keys):
        merged = stats.merge_moments(per_site[s].get(key, (0, 0.0, 0.0)) for s in names)
        rows.append({"group": [_label(x) for x in key],
                     "combined": describe(merged, bool(np.isnan(rel.values[S, r, 0]))),
                     "per_site": {s: describe(per_site[s].get(key, (0, 0.0, 0.0)), bool(np.isnan(rel.values[i, r, 0])))
                                  for i, s in enumerate(names)}})
    result.notes.append("no minimum or maximum is released; means and variances are exact (Chan's merge)")
    return {"statistic": q.statistic, "column": q.column, "dims": q.group_by, "rows": rows}


def compute_proportion(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
                       result: Result) -> dict[str, Any]:
    assert q.column
    frm, params = subset(q)
    sel, grp = group_select(q.group_by)
    col = ident(q.column)
    per_site: dict[str, dict[tuple[Any, ...], int]] = {}
    for s, d in sites.items():
        fetched = d.sql(f"SELECT {sel}({col} = ?) AS hit, count(*) {frm}{grp}{', hit' if grp else ' GROUP BY hit'}",
                        [q.value, *params])
        per_site[s] = {(*r[:-2], bool(r[-2]) if r[-2] is not None else False): int(r[-1]) for r in fetched}
    group_keys = _sorted_keys({key[:-1] for c in per_site.values() for key in c}) or [()]
    names = sorted(per_site)
    cells = np.array([[[sum(v for kk, v in per_site[s].items() if kk[:-1] == g and kk[-1] is True),
                        sum(v for kk, v in per_site[s].items() if kk[:-1] == g and kk[-1] is False)]
                       for g in group_keys] for s in names], dtype=float)
    rel = suppress(cells, [policies[s].min_cell for s in names], k)
    S = len(names)

    def share(i: int, r: int) -> dict[str, Any]:
        x, n = rel.values[i, r, 0], rel.values[i, r, 2]
        if np.isnan(x) or np.isnan(n):
            return {"suppressed": True}
        lo, hi = stats.wilson(int(x), int(n))
        return {"x": int(x), "n": int(n), "proportion": x / n if n else None, "ci95": [lo, hi]}

    rows = [{"group": [_label(v) for v in g], "combined": share(S, r),
             "per_site": {s: share(i, r) for i, s in enumerate(names)}} for r, g in enumerate(group_keys)]
    result.notes.append("95% confidence intervals by Wilson's score method")
    return {"statistic": "proportion", "column": q.column, "value": q.value, "dims": q.group_by, "rows": rows}


def compute_quantiles(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
                      result: Result) -> dict[str, Any]:
    """Federated bisection on counts at or below a candidate: the smallest c with F(c) >= p, within a stated bound."""
    assert q.column
    frm, params = subset(q)
    col = ident(q.column)
    sel, grp = group_select(q.group_by)
    keys: set[tuple[Any, ...]] = set()
    n_per: dict[str, dict[tuple[Any, ...], int]] = {}
    lo_hi = [math.inf, -math.inf]
    for s, d in sites.items():
        fetched = d.sql(f"SELECT {sel}count({col}), min({col}), max({col}) {frm} AND {col} IS NOT NULL{grp}",
                        params)
        n_per[s] = {tuple(f[:-3]): int(f[-3]) for f in fetched}
        keys |= set(n_per[s])
        for f in fetched:  # the range only brackets the search; it is never released
            lo_hi = [min(lo_hi[0], float(f[-2])), max(lo_hi[1], float(f[-1]))]
    ordered = _sorted_keys(keys) or [()]
    names = sorted(n_per)
    _, rel = _count_table({s: {key: n_per[s].get(key, 0) for key in ordered} for s in names}, policies, k, ordered,
                          totals=False)
    S = len(names)
    out_rows = []
    in_group = "".join(f" AND {ident(g)} IS NOT DISTINCT FROM ?" for g in q.group_by)
    span = max(lo_hi[1] - lo_hi[0], 1.0)
    tol = max(QUANTILE_TOL * span, 1e-9)
    for r, key in enumerate(ordered):
        n = sum(n_per[s].get(key, 0) for s in names)
        row: dict[str, Any] = {"group": [_label(x) for x in key]}
        if np.isnan(rel.values[S, r, 0]) or n == 0:
            row["combined"] = {"suppressed": True}
            out_rows.append(row)
            continue
        values: dict[str, Any] = {}
        for p in q.probs:
            if n * min(p, 1 - p) < k:
                values[str(p)] = {"suppressed": True, "why": f"fewer than {k} rows on one side of it"}
                continue
            lo, hi = lo_hi[0] - tol, lo_hi[1]
            target = math.ceil(p * n - 1e-12)
            while hi - lo > tol:
                mid = (lo + hi) / 2
                below = 0
                for d in sites.values():
                    below += d.sql(f"SELECT count(*) {frm} AND {col} <= ?{in_group}", [*params, mid, *key])[0][0]
                if below >= target:
                    hi = mid
                else:
                    lo = mid
            values[str(p)] = {"value": hi, "error_bound": hi - lo}
        row["combined"] = {"n": n, "quantiles": values}
        out_rows.append(row)
    result.notes.append(f"quantiles by federated bisection on counts (inverse empirical CDF); each value is within "
                        f"its error_bound (<= {tol:.3g}) above the exact pooled quantile; only combined values "
                        "are released")
    return {"statistic": "quantiles", "column": q.column, "dims": q.group_by, "rows": out_rows}


def compute_km(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
               result: Result) -> dict[str, Any]:
    time_col, event_col = (f"{q.endpoint}_days", f"{q.endpoint}_event")
    grid = np.arange(0.0, q.horizon_days + q.grid_days, q.grid_days)
    frm, params = subset(q)
    sel, _ = group_select(q.group_by)
    per_site: dict[str, dict[tuple[Any, ...], tuple[np.ndarray, ...]]] = {}
    for s, d in sites.items():
        data = d.arrays(f"SELECT {sel}{time_col} AS t, {event_col} AS e {frm} AND {time_col} IS NOT NULL", params)
        groups: dict[tuple[Any, ...], list[int]] = {}
        gcols = [data[g] for g in q.group_by]
        for i in range(len(data["t"])):
            groups.setdefault(tuple(c[i] for c in gcols), []).append(i)
        per_site[s] = {}
        for key, idx in groups.items():
            t = np.asarray(data["t"][idx], dtype=float)
            e = np.asarray(data["e"][idx], dtype=bool)
            per_site[s][tuple(_label(x) for x in key)] = stats.km_grid_counts(t, e, grid)
    keys = _sorted_keys({key for c in per_site.values() for key in c}) or [()]
    names = sorted(per_site)
    n_int = len(grid) - 1
    zero = (np.zeros(n_int, int), np.zeros(n_int, int), np.zeros(n_int, int))
    curves = []
    for key in keys:
        parts = {s: per_site[s].get(key, zero) for s in names}
        at_risk = sum(p[0] for p in parts.values())
        events = sum(p[1] for p in parts.values())
        combined = _release_curve(np.asarray(at_risk), np.asarray(events), grid, k)
        combined["risk_table"] = _risk_table(np.asarray(at_risk), grid, k)
        common = _common_points({s: (parts[s][0], parts[s][1]) for s in names}, policies)
        # a site's number at risk at the start is shown only if every site's is (else: combined minus the rest)
        risk_ok = {j for j in range(n_int)
                   if all(parts[s][0][j] >= policies[s].min_cell or parts[s][0][j] == 0 for s in names)}
        site_curves = {s: _release_curve(parts[s][0], parts[s][1], grid, policies[s].min_cell, only=common,
                                         risk_ok=risk_ok) for s in names}
        curves.append({"group": [x for x in key], "combined": combined, "per_site": site_curves})
    result.notes.append(f"Kaplan-Meier on a grid of {q.grid_days:g} days: per interval, sites return the number at "
                        "risk, events and censorings; the combined curve equals the pooled estimate on this grid. "
                        f"A point is released only with at least {k} at risk and at least {k} events since the "
                        "previous released point (or none).")
    return {"statistic": "km", "endpoint": q.endpoint, "grid_days": q.grid_days, "dims": q.group_by, "curves": curves}


def _risk_table(at_risk: np.ndarray, grid: np.ndarray, k: int, every_days: float = 365.25) -> list[dict[str, Any]]:
    """Number at risk at each whole year (the start of the grid interval containing it); small numbers hidden."""
    out: list[dict[str, Any]] = []
    year = 0
    while year * every_days <= grid[-1]:
        j = int(np.searchsorted(grid, year * every_days, side="right") - 1)
        if j >= len(at_risk):
            break
        n = int(at_risk[j])
        out.append({"year": year, "at_risk": n if n >= k or n == 0 else {"suppressed": True}})
        year += 1
    return out


def _common_points(parts: dict[str, tuple[np.ndarray, np.ndarray]], policies: dict[str, DisclosurePolicy]) -> set[int]:
    """Grid points where every site's curve may be shown (so sites cannot be subtracted from the combined)."""
    n_int = len(next(iter(parts.values()))[0])
    ok: set[int] = set()
    since = {s: 0 for s in parts}
    for j in range(n_int):
        for s, (_, ev) in parts.items():
            since[s] += int(ev[j])
        if all(parts[s][0][j] >= policies[s].min_cell and (since[s] == 0 or since[s] >= policies[s].min_cell)
               for s in parts):
            ok.add(j)
            since = {s: 0 for s in parts}
    return ok


def _release_curve(at_risk: np.ndarray, events: np.ndarray, grid: np.ndarray, k: int,
                   only: set[int] | None = None, risk_ok: set[int] | None = None) -> dict[str, Any]:
    """The released points of one curve. For per-site curves, `only` are the grid points where every
    site's curve may be shown and `risk_ok` the intervals where every site's number at risk may be."""
    surv, var = stats.km_from_counts(at_risk, events)

    def risk(j: int) -> Any:
        n = int(at_risk[j])
        shown = (n >= k or n == 0) and (risk_ok is None or j in risk_ok)
        return n if shown else {"suppressed": True}

    points = [{"day": 0.0, "survival": 1.0, "ci95": [1.0, 1.0], "at_risk": risk(0) if len(at_risk) else 0}]
    since = 0
    for j in range(len(at_risk)):
        since += int(events[j])
        if at_risk[j] < k:
            break  # fewer than k at risk: the curve stops here
        if only is not None and j not in only:
            continue
        if since and since < k:
            continue  # coarsen: wait until k events have accumulated
        lo, hi = stats.log_log_ci(float(surv[j]), float(var[j]))
        points.append({"day": float(grid[j + 1]), "survival": float(surv[j]), "ci95": [lo, hi],
                       "at_risk": risk(j + 1) if j + 1 < len(at_risk) else {"suppressed": True}})
        since = 0
    return {"points": points}


def _design(q: Query, data: dict[str, Any], levels: dict[str, list[Any]]) -> tuple[np.ndarray, list[str]]:
    cols = [np.ones(len(data[q.covariates[0]]))]
    names = ["(intercept)"]
    for c in q.covariates:
        if c in levels:
            values = np.array([_label(v) for v in data[c]], dtype=object)
            for level in levels[c][1:]:
                cols.append((values == level).astype(float))
                names.append(f"{c}[{level}]")
        else:
            cols.append(np.asarray(data[c], dtype=float))
            names.append(c)
    return np.column_stack(cols), names


def _outcome(f: Filter, values: np.ndarray) -> np.ndarray:
    v = f.value
    ops: dict[str, Callable[[Any], Any]] = {
        "==": lambda x: x == v, "!=": lambda x: x != v, "<": lambda x: x < v, "<=": lambda x: x <= v,
        ">": lambda x: x > v, ">=": lambda x: x >= v,
        "in": lambda x: x in v, "not in": lambda x: x not in v}
    return np.array([1.0 if ops[f.op](x) else 0.0 for x in values])


def _regression_data(q: Query, sites: dict[str, SiteData], extra: list[str]
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
    """Each site's complete cases of the covariates (and `extra` columns), and the categorical levels."""
    types = unit_columns(q.study_id, q.table)
    frm, params = subset(q)
    cols = list(dict.fromkeys([*q.covariates, *extra]))
    not_null = " AND ".join(f"{ident(c)} IS NOT NULL" for c in cols)
    local = {s: d.arrays(f"SELECT {', '.join(ident(c) for c in cols)} {frm} AND {not_null}", params)
             for s, d in sites.items()}
    categorical = [c for c in q.covariates if types.get(c) in ("string", "bool")]
    levels = {c: sorted({_label(v) for s in local for v in local[s][c]}, key=str) for c in categorical}
    return local, levels


def _regression_checks(q: Query, local: dict[str, dict[str, Any]], levels: dict[str, list[Any]],
                       policies: dict[str, DisclosurePolicy], outcome: dict[str, np.ndarray], what: str) -> None:
    """Refuse a model a site's rows cannot safely support (DataSHIELD's nfilter.glm and cell checks)."""
    n_params = 1 + sum(len(levels[c]) - 1 if c in levels else 1 for c in q.covariates)
    ratio = min(p.glm_max_param_ratio for p in policies.values())
    for s, data in local.items():
        n = len(next(iter(data.values())))
        ks = policies[s].min_cell
        if n_params > ratio * n:
            raise QueryRefused(f"the model has {n_params} parameters, more than {ratio} x the {n} rows at one site",
                               "use fewer covariates or coarser categories")
        events = int(outcome[s].sum())
        if 0 < events < ks or 0 < n - events < ks:
            raise QueryRefused(f"the {what} has fewer than {ks} events or non-events at one site",
                               "choose a more common outcome")
        for c in levels:
            values = [_label(v) for v in data[c]]
            for level in levels[c]:
                m = values.count(level)
                if 0 < m < ks:
                    raise QueryRefused(f"category {c} = {level} has fewer than {ks} rows at one site",
                                       f"merge rare categories of {c} or leave it out")


def _newton(names: list[str], site_terms: Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray, float]]]
            ) -> tuple[np.ndarray, np.ndarray, float, int, bool]:
    """Newton-Raphson on summed per-site scores and information matrices."""
    beta = np.zeros(len(names))
    info = np.eye(len(names))
    loglik, iterations, converged = 0.0, 0, False
    for iterations in range(1, 51):  # noqa: B007 - the count is reported
        terms = site_terms(beta)
        score = sum((t[0] for t in terms), np.zeros(len(names)))
        info = sum((t[1] for t in terms), np.zeros((len(names), len(names))))
        loglik = float(sum(t[2] for t in terms))
        new = stats.newton_step(beta, score, info)
        done = bool(np.max(np.abs(new - beta)) < 1e-10)
        beta = new
        if done:
            converged = True
            break
    if converged:  # information and log-likelihood at the final estimate
        terms = site_terms(beta)
        info = sum((t[1] for t in terms), np.zeros((len(names), len(names))))
        loglik = float(sum(t[2] for t in terms))
    return beta, info, loglik, iterations, converged


def _coefficients(names: list[str], beta: np.ndarray, info: np.ndarray, ratio_name: str) -> list[dict[str, Any]]:
    se = np.sqrt(np.diag(np.linalg.inv(info)))
    z, p = stats.z_test(beta, se)
    return [{"term": n, "estimate": float(b), "se": float(e), "z": float(zz), "p": float(pp),
             "ci95": [float(b - 1.959963984540054 * e), float(b + 1.959963984540054 * e)],
             ratio_name: float(np.exp(b))} for n, b, e, zz, pp in zip(names, beta, se, z, p, strict=True)]


def compute_logistic(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
                     result: Result) -> dict[str, Any]:
    assert q.outcome is not None
    local, levels = _regression_data(q, sites, [q.outcome.column])
    y = {s: _outcome(q.outcome, local[s][q.outcome.column]) for s in local}
    _regression_checks(q, local, levels, policies, y, "outcome")
    designs = {s: _design(q, local[s], levels) for s in local}
    names = designs[next(iter(designs))][1]
    beta, info, loglik, iterations, converged = _newton(
        names, lambda b: [stats.logistic_site(designs[s][0], y[s], b) for s in local])
    result.notes.append("fitted by Newton-Raphson on summed per-site score vectors and information matrices; "
                        "equals the pooled maximum-likelihood fit")
    return {"statistic": "logistic", "outcome": q.outcome.describe(), "n": sum(len(v) for v in y.values()),
            "iterations": iterations, "converged": converged, "log_likelihood": loglik,
            "coefficients": _coefficients(names, beta, info, "odds_ratio")}


def compute_cox(q: Query, sites: dict[str, SiteData], policies: dict[str, DisclosurePolicy], k: int,
                result: Result) -> dict[str, Any]:
    time_col, event_col = f"{q.endpoint}_days", f"{q.endpoint}_event"
    local, levels = _regression_data(q, sites, [time_col, event_col])
    events = {s: np.asarray(local[s][event_col], dtype=bool) for s in local}
    _regression_checks(q, local, levels, policies, {s: e.astype(float) for s, e in events.items()},
                       f"{q.endpoint.upper()} endpoint")
    designs = {s: _design(q, local[s], levels) for s in local}
    names = designs[next(iter(designs))][1][1:]  # no intercept: the baseline hazard is per site
    x = {s: designs[s][0][:, 1:] for s in local}
    t = {s: np.asarray(local[s][time_col], dtype=float) for s in local}
    beta, info, loglik, iterations, converged = _newton(
        names, lambda b: [stats.cox_site(t[s], events[s], x[s], b) for s in local])
    result.notes.append("Cox proportional hazards stratified by site (each site its own baseline hazard, Breslow "
                        "ties), fitted by Newton-Raphson on summed per-site scores and information matrices; "
                        "equals the pooled fit stratified by site")
    return {"statistic": "cox", "endpoint": q.endpoint, "n": sum(len(v) for v in t.values()),
            "events": int(sum(e.sum() for e in events.values())), "iterations": iterations, "converged": converged,
            "log_likelihood": loglik, "coefficients": _coefficients(names, beta, info, "hazard_ratio")}


COMPUTE: dict[str, Callable[[Query, dict[str, SiteData], dict[str, DisclosurePolicy], int, Result], dict[str, Any]]] = {
    "count": compute_count, "crosstab": compute_crosstab, "sum": compute_moments, "mean": compute_moments,
    "variance": compute_moments, "quantiles": compute_quantiles, "proportion": compute_proportion,
    "km": compute_km, "logistic": compute_logistic, "cox": compute_cox,
}
