"""Run a federated query in the query service: ask the sites for summaries, run the central guards,
combine exactly, suppress what must not be shown, and record the query in the audit log.

Order of work (each step can refuse, and every refusal is audited):
1. check the query against the allow-list and the harmonized schema (the nodes check again);
2. first round, one task per site: its row count, the subset sizes and differences the guards need, and
   the statistic's first summaries; each site answers from its latest (or pinned) version and runs its
   own guards; a site with too few rows takes no part;
3. central guards (`central.guards`): subset sizes over all sites;
4. the statistic combines the summaries, asking further rounds on the same versions if it needs them
   (quantile search, Newton iterations), and suppresses small cells (`central.disclosure`);
5. central guards on what would be released: differencing of the cells actually shown (suppressed cells
   are not shown, so they are not in any difference) against every earlier released result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from federation.exceptions import ConfigurationError
from federation.query.central.audit import AuditLog
from federation.query.central.gateway import SiteGateway
from federation.query.central.history import History, key_json
from federation.query.central.statistics import Statistic
from federation.query.central.statistics.km import curve_hidden, year_start
from federation.query.columns import check_collected
from federation.query.guard import QueryRefused
from federation.query.model import CAUSE_COLUMN, Filter, Query
from federation.query.policy import EffectiveThresholds, QueryPolicy
from federation.query.site.partial import SiteTask
from federation.query.site.summaries import Answer, Refusal, Request, RowCount

log = logging.getLogger("federation.service")


@dataclass
class Result:
    query: Query
    analyst: str
    status: str = "released"  # released | refused | failed
    reason: str = ""
    suggestion: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    audit_id: int | None = None
    checked: dict[str, int] = field(default_factory=dict)  # what the differencing check compared (not released)

    @property
    def sites(self) -> list[str]:
        return sorted(self.versions)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "suggestion": self.suggestion,
                "query": self.query.model_dump(mode="json"), "description": self.query.describe(),
                "analyst": self.analyst, "versions": self.versions, "excluded": self.excluded,
                "result": self.payload, "notes": self.notes, "audit_id": self.audit_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        return cls(query=Query.model_validate(data["query"]), analyst=data.get("analyst", ""),
                   status=data["status"], reason=data.get("reason", ""), suggestion=data.get("suggestion", ""),
                   versions=data.get("versions", {}), excluded=data.get("excluded", {}),
                   payload=data.get("result", {}), notes=data.get("notes", []), audit_id=data.get("audit_id"))


@dataclass
class Context:
    """One query in the service: the sites taking part, their versions and thresholds, and a way to ask them."""

    query: Query
    gateway: SiteGateway
    policy: QueryPolicy
    result: Result
    history: History  # every released result, of every analyst (the differencing guard compares with it)
    thresholds: dict[str, EffectiveThresholds] = field(default_factory=dict)
    version_numbers: dict[str, int] = field(default_factory=dict)
    combined_only: bool = False
    # distinct patients of every coarser level of the groups (a count's total, a crosstab's margins) per site,
    # on a table of several rows per patient (`guards.RowMultiplicityGuard`); None when not asked
    level_patients: dict[tuple[str, ...], dict[str, dict[tuple[Any, ...], int]]] | None = None

    @property
    def sites(self) -> list[str]:
        return sorted(self.thresholds)

    def exclude(self, site: str, reason: str) -> None:
        """Leave `site` out of this query (a guard decided it cannot take part); the others go on."""
        for held in (self.thresholds, self.version_numbers, self.result.versions):
            held.pop(site, None)
        self.result.excluded[site] = reason

    @property
    def k(self) -> int:
        """The threshold of the combined table: the strictest of the sites taking part."""
        return max(t.min_cell for t in self.thresholds.values())

    def task(self, requests: list[Request], version: int | None) -> SiteTask:
        return SiteTask(study_id=self.query.study_id, version=version, thresholds=self.policy.disclosure,
                        requests=requests)

    def first_round(self, sites: list[str], requests: list[Request]) -> dict[str, list[Answer]]:
        """Ask every candidate site; keep those that answer and take part, pin their versions."""
        q = self.query
        pinned = q.versions or {}
        replies = self.gateway.ask({s: self.task(requests, pinned.get(s)) for s in sites})
        errors: dict[str, str] = {}
        answers: dict[str, list[Answer]] = {}
        for site in sites:
            reply = replies.get(site, "no reply")
            if isinstance(reply, str):
                if q.sites is not None or "has no published version" not in reply:
                    errors[site] = reply
                continue
            if len(reply.answers) != len(requests):
                errors[site] = f"{site} sent {len(reply.answers)} answers to {len(requests)} requests"
                continue
            answers[site] = list(reply.answers)
        if errors and not q.allow_partial:
            raise QueryRefused("some sites could not be reached: " + "; ".join(f"{s}: {e}" for s, e in errors.items()),
                               "retry later, or release the result without them with --allow-partial")
        for site, error in errors.items():
            self.result.excluded[site] = f"missing from this result: {error}"
            self.result.notes.append(f"PARTIAL RESULT: {site} is not included ({error})")
        for site in list(answers):
            out = [a for a in answers[site] if isinstance(a, Refusal) and a.not_taking_part]
            if out:
                self.result.excluded[site] = out[0].reason
                del answers[site]
                continue
            self.thresholds[site] = replies[site].thresholds  # type: ignore[union-attr]
            self.version_numbers[site] = replies[site].version_number  # type: ignore[union-attr]
            self.result.versions[site] = replies[site].version_id  # type: ignore[union-attr]
        if not answers:
            why = "; ".join(f"{s}: {r}" for s, r in sorted(self.result.excluded.items()))
            raise QueryRefused("no site can take part in this query" + (f" ({why})" if why else ""),
                               "use a broader filter, or check the study id and published data")
        return answers

    def ask(self, requests: list[Request]) -> dict[str, list[Answer]]:
        """A further round, on the versions of the first one, to every site taking part."""
        replies = self.gateway.ask({s: self.task(requests, self.version_numbers[s]) for s in self.sites})
        out: dict[str, list[Answer]] = {}
        for site in self.sites:
            reply = replies.get(site, "no reply")
            if isinstance(reply, str) or len(reply.answers) != len(requests):
                why = reply if isinstance(reply, str) else "a malformed reply"
                raise QueryRefused(f"{site} stopped answering during the query ({why}); nothing was released",
                                   "ask again")
            out[site] = self.refuse_on_refusal(list(reply.answers))
        return out

    @staticmethod
    def refuse_on_refusal(answers: list[Answer]) -> list[Answer]:
        for a in answers:
            if isinstance(a, Refusal):
                raise QueryRefused(a.reason, a.suggestion)
        return answers


def run_query(q: Query, gateway: SiteGateway, policy: QueryPolicy, audit: AuditLog, analyst: str) -> Result:
    """Run `q` for the authenticated `analyst`; the result is released or refused, and audited. Queries on
    one study and table run one at a time, so that each is checked against every result released before."""
    history = History.of(audit)
    with history.serialized(q.study_id, q.table):
        return _run(q, gateway, policy, audit, analyst, history)


def _run(q: Query, gateway: SiteGateway, policy: QueryPolicy, audit: AuditLog, analyst: str,
         history: History) -> Result:
    from federation.query.central.guards import CENTRAL_GUARDS

    result = Result(query=q, analyst=analyst)
    notes_kept: int | None = None  # a refused result keeps the notes from before the statistic combined
    try:
        statistic = Statistic.for_query(q)
        try:
            check_collected(q.study_id, [q.table, *(e.table for e in q.exists)])
        except ConfigurationError as exc:
            raise QueryRefused(str(exc)) from None
        statistic.check(q, policy)
        ctx = Context(query=q, gateway=gateway, policy=policy, result=result, history=history)
        sites = q.sites or gateway.candidate_sites(q.study_id)
        if not sites:
            raise QueryRefused("no site can take part in this query", "check the study id and published data")
        parts: list[tuple[Any, list[Request]]] = [(None, [RowCount(table=q.table)])]
        guards = [g() for g in CENTRAL_GUARDS if g.enabled()]
        parts += [(g, g.requests(ctx)) for g in guards]
        parts.append((statistic, statistic.requests(q)))
        first = ctx.first_round(sites, [r for _, reqs in parts for r in reqs])
        split: dict[int, dict[str, list[Answer]]] = {}
        start = 0
        for i, (_, reqs) in enumerate(parts):
            split[i] = {s: a[start:start + len(reqs)] for s, a in first.items()}
            start += len(reqs)
        for i, (owner, _) in enumerate(parts[1:-1], start=1):  # a guard may leave sites out of the query
            owner.check(ctx, {s: ctx.refuse_on_refusal(a) for s, a in split[i].items() if s in ctx.thresholds})
        stat_answers = {s: ctx.refuse_on_refusal(a) for s, a in split[len(parts) - 1].items() if s in ctx.thresholds}
        notes_kept = len(result.notes)
        result.payload = statistic.combine(ctx, stat_answers)
        for guard in guards:  # on the cells this result would show
            guard.released(ctx)
        if ctx.combined_only:  # the differencing guard said why in a note
            result.payload = hide_per_site(result.payload)
        statistic.finish(ctx)  # e.g. a curve's median from the points it shows
        released_cells(result.payload)  # the history must be able to record it (else refused, before release)
    except QueryRefused as exc:
        result.status, result.reason, result.suggestion, result.payload = "refused", exc.reason, exc.suggestion, {}
        result.notes = result.notes[:notes_kept]
    except ValidationError as exc:  # a parameter outside what any site answers (e.g. too many filters)
        error = exc.errors()[0]
        result.status, result.payload = "refused", {}
        result.reason = (f"the query asks for something sites do not compute: {error['msg']} "
                         f"({'.'.join(map(str, error['loc']))})")
    except Exception as exc:  # noqa: BLE001 - anything else: nothing is released, and the failure is audited
        log.exception("query failed")
        result.status, result.payload, result.suggestion = "failed", {}, "report it to the consortium's data team"
        result.reason = f"the query could not be computed ({type(exc).__name__}); nothing was released"
    entry = audit.append({"analyst": analyst, "query": q.model_dump(mode="json"), "fingerprint": q.fingerprint(),
                          "versions": result.versions, "outcome": result.status, "reason": result.reason,
                          "excluded": result.excluded, "released": digest(result.payload, q)})
    result.audit_id = entry["id"]
    return result


def digest(payload: dict[str, Any], q: Query) -> dict[str, Any]:
    """What was released, for the audit log: counts of suppressed entries and a hash of the values, and which
    cells were shown (their levels, the cells of those levels that were hidden, and the parts of the groups
    the statistic showed counts of) for the history."""
    text = json.dumps(payload, sort_keys=True, default=str)
    per_site = any(not _is_withheld(v) for v in _per_site_values(payload))
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "suppressed": text.count('"suppressed"'),
            "per_site": per_site, "bytes": len(text), **released_record(q, payload)}


def released_record(q: Query, payload: dict[str, Any]) -> dict[str, Any]:
    """What a result shows, for the history (`history.footprints_of`): its levels and hidden cells, the
    parts of its groups it shows counts of, and for a logistic model the categorical covariates whose
    levels it shows counts by (its estimates and standard errors invert to n and events by level when it
    is saturated on one covariate; events by level are recorded for every categorical covariate)."""
    levels, hidden = released_cells(payload)
    record: dict[str, Any] = {"levels": levels, "hidden": hidden, "splits": released_splits(q, payload, hidden)}
    if q.table != "patients" and payload.get("statistic") in (*ROW_STATISTICS, "crosstab"):
        # the groups it shows, for its shadows on patients (`history.shadow_footprints`): one per row-level key
        record["keys"] = released_keys(payload)
    if payload.get("statistic") == "logistic" and q.outcome is not None:
        terms = [str(t.get("term", "")) for t in payload.get("coefficients") or []]
        categorical = [c for c in q.covariates if any(t.startswith(f"{c}[") for t in terms)]
        if categorical == list(q.covariates) and len(categorical) == 1:
            record["dims"], record["levels"] = categorical, [categorical, []]
        if categorical:
            record["splits"] = [{**part, "dims": categorical, "levels": [[c] for c in categorical] + [[]]}
                                for part in record["splits"]]
    return record


def released_keys(payload: dict[str, Any]) -> list[list[Any]]:
    """The keys of the groups of each level a row-statistic or crosstab result has, as [level, [key, ...]]."""
    dims = list(payload.get("dims") or [])
    if payload.get("statistic") == "crosstab":
        r, c = payload["rows_dim"], payload["cols_dim"]
        rows, cols = payload["rows"][:-1], payload["cols"][:-1]  # the last of each is its total
        return [[[r, c], [[a, b] for a in rows for b in cols]], [[r], [[a] for a in rows]], [[c], [[b] for b in cols]]]
    return [[dims, [row["group"] for row in payload.get("rows") or []]]] if dims else []


def released_splits(q: Query, payload: dict[str, Any], hidden: list[list[Any]]) -> list[dict[str, Any]]:
    """The parts of its groups a result shows counts of, beside the groups themselves, each as the filters
    that select it and the cells of it that stay hidden: a proportion's `column == value` (its x), a model's
    outcome (its events, which the estimates give), a Kaplan-Meier curve's number at risk at each time it
    shows one (`time >= t`) and its events before each point it shows. In the history each part is a
    footprint like a result's, so that two results on nested subsets cannot differ by a few patients inside
    a group either (the red team's P1, P2, K1)."""
    if not payload:
        return []
    kind = payload.get("statistic")

    def part(*filters: Filter, hidden_cells: list[list[Any]] | None = None) -> dict[str, Any]:
        return {"split": [f.model_dump(mode="json") for f in filters], "hidden": hidden_cells or []}

    if kind == "proportion" and q.column is not None:
        return [part(Filter(column=q.column, op="==", value=q.value), hidden_cells=hidden)]
    if kind == "logistic" and q.outcome is not None:
        return [part(q.outcome)]
    if kind == "cox":
        return [part(Filter(column=f"{q.endpoint}_event", op="==", value=True))]
    if kind in CURVES and isinstance(payload.get("curves"), list):
        return km_splits(q, payload)
    return []


def km_splits(q: Query, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """A curve's numbers at risk (risk table and points) and its events before each point, as parts: at risk
    at day t are the patients followed at least t days; hidden where the result does not show that number
    for a group (combined, or at a site). Events before a point (and, for a cumulative incidence, the events
    of its cause) are a part at every point the curve shows: across a step of one grid interval from a point
    showing its number at risk they follow exactly (d = n (1 - S_j / S_j-1)), and across longer steps the
    survival ratio narrows them so closely that they round to the count (the red team of decision 0013: a
    Kaplan-Meier point and a cumulative-incidence point a month apart, or two cause lists, gave 1..k-1
    events)."""
    time, event = f"{q.endpoint}_days", f"{q.endpoint}_event"
    dims = list(payload.get("dims") or [])
    at_risk: dict[float, set[tuple[str, str]]] = {}  # day -> (site or "", group as key_json) shown
    points: dict[float, set[tuple[str, str]]] = {}
    groups: list[list[Any]] = []
    sites: set[str] = set()
    for curve in payload["curves"]:
        key = key_json(curve["group"])
        groups.append(curve["group"])
        for site, value in [("", curve.get("combined")), *(curve.get("per_site") or {}).items()]:
            sites.add(site)
            if not isinstance(value, dict):
                continue
            for p in value.get("points") or []:
                day = float(p["day"])
                if day > 0:
                    points.setdefault(day, set()).add((site, key))
                    if isinstance(p.get("at_risk"), int):
                        at_risk.setdefault(day, set()).add((site, key))
            for r in value.get("risk_table") or []:
                if isinstance(r.get("at_risk"), int):  # at the start of the interval holding the year
                    day = year_start(r["year"], q.grid_days)
                    if day > 0:
                        at_risk.setdefault(day, set()).add((site, key))

    def not_shown(shown: set[tuple[str, str]]) -> list[list[Any]]:
        return [[site, dims, g] for site in sorted(sites) for g in groups if (site, key_json(g)) not in shown]

    out = [{"split": [Filter(column=time, op=">=", value=day).model_dump(mode="json")], "hidden": not_shown(shown)}
           for day, shown in sorted(at_risk.items())]
    out += [{"split": [Filter(column=event, op="==", value=True).model_dump(mode="json"),
                       Filter(column=time, op="<", value=day).model_dump(mode="json")], "hidden": not_shown(shown)}
            for day, shown in sorted(points.items())]
    if payload.get("statistic") == "cif":  # and the events of the cause before each such point
        cause = Filter(column=CAUSE_COLUMN[q.endpoint], op="in", value=list(q.cause)).model_dump(mode="json")
        out += [{"split": [Filter(column=event, op="==", value=True).model_dump(mode="json"), cause,
                           Filter(column=time, op="<", value=day).model_dump(mode="json")], "hidden": not_shown(shown)}
                for day, shown in sorted(points.items())]
    return out


def released_cells(payload: dict[str, Any]) -> tuple[list[list[str]], list[list[Any]]]:
    """The kinds of count cells a result shows (its levels: group-by columns, () for a total) and the cells
    of those levels it hides, as [site or "" for combined, level, key], read from the payload itself so that
    the history records what was shown, not what a statistic meant to show. Models keep the default (their
    groups, all shown); a shape it does not know is refused."""
    if not payload:
        return [], []
    dims = list(payload.get("dims") or [])
    levels: list[list[str]] = []
    hidden: list[list[Any]] = []

    def note(level: list[str], key: list[Any], value: Any, site: str) -> None:
        if _is_withheld(value) or (isinstance(value, dict) and value.get("suppressed") is True):
            hidden.append([site, level, key])

    def cell(level: list[str], key: list[Any], entry: dict[str, Any]) -> None:
        note(level, key, entry.get("combined"), "")
        for site, value in (entry.get("per_site") or {}).items():
            note(level, key, value, site)

    kind = payload.get("statistic")
    if kind == "crosstab":
        rows_dim, cols_dim = payload["rows_dim"], payload["cols_dim"]
        rows, cols = payload["rows"], payload["cols"]
        levels = [[rows_dim, cols_dim], [rows_dim], [cols_dim], []]
        tables = {"": payload["combined"], **payload.get("per_site", {})}
        for site, matrix in tables.items():
            for r, label_r in enumerate(rows):
                for c, label_c in enumerate(cols):
                    last_r, last_c = r == len(rows) - 1, c == len(cols) - 1
                    level = ([] if last_r and last_c else [cols_dim] if last_r else [rows_dim] if last_c
                             else [rows_dim, cols_dim])
                    key = [x for x, last in ((label_r, last_r), (label_c, last_c)) if not last]
                    note(level, key, matrix[r][c], site)
        return levels, hidden
    if kind in ROW_STATISTICS and isinstance(payload.get("rows"), list):
        levels = [dims]
        for row in payload["rows"]:
            cell(dims, row["group"], row)
        if isinstance(payload.get("total"), dict):
            if [] not in levels:
                levels.append([])
            cell([], [], payload["total"])
        return levels, hidden
    if kind in CURVES and isinstance(payload.get("curves"), list):
        # a curve shows its group's count (the number at risk at day 0, or through its steps and intervals)
        # unless it is withheld, or stops at day 0 with that number hidden
        for curve in payload["curves"]:
            for site, value in [("", curve.get("combined")), *(curve.get("per_site") or {}).items()]:
                if curve_hidden(value):
                    hidden.append([site, dims, curve["group"]])
        return [dims], hidden
    if kind in ("logistic", "cox"):  # no groups: one combined fit (its parts, `released_splits`)
        return [dims], []
    # a result whose shape this does not know: what it showed and hid cannot be recorded, so it is not released
    # (the seventh red team's V1: a variance by arm recorded no hidden cell, and a later mean of the cell it
    # hid as a complement, with the total, gave the hidden one-patient group's exact values)
    raise QueryRefused(f"the differencing history cannot record what a {kind!r} result shows; nothing was "
                       "released", "report this to the consortium's data team")


CURVES = ("km", "cif")  # results of curves by group, with numbers at risk (Kaplan-Meier, cumulative incidence)
ROW_STATISTICS = ("count", "sum", "mean", "variance", "sd", "proportion", "quantiles")  # rows of groups, a total


def _is_withheld(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_withheld(v) for v in value)
    return value in ({"suppressed": True}, {"points": [], "withheld": True})


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


def _withheld(value: Any) -> Any:
    """A per-site value withheld, in the shape readers expect: a matrix stays a matrix, a curve a curve."""
    if isinstance(value, list):
        return [_withheld(v) for v in value]
    if isinstance(value, dict) and "points" in value:
        return {"points": [], "withheld": True}
    return {"suppressed": True}


def hide_per_site(payload: Any) -> Any:
    """Drop every per-site value of a result (the combined values stay)."""
    if isinstance(payload, dict):
        return {k: ({s: _withheld(x) for s, x in v.items()} if k == "per_site" and isinstance(v, dict)
                    else hide_per_site(v)) for k, v in payload.items()}
    if isinstance(payload, list):
        return [hide_per_site(v) for v in payload]
    return payload
