"""Benchmark: the differencing guard's time per query with 100,000 released results in the history.

Six synthetic sites are published; an audit log of --history released results is written (a valid hash
chain, as the service writes it) from a consortium-like mix: routine report queries repeated by many
analysts, and exploratory queries with filters on declared cut points and codes, group-bys, statistics and
site selections. Then new exploratory queries run through the in-process gateway (the same site and
central code the service runs), and the benchmark reports per query the total time and the differencing
guard's share, against the same queries on an empty history in the same run (the floor).

Suppressed cells: a result's hidden cells are part of its footprint (the span check runs around them). The
written history marks them the way small sites make them: in about a third of the results with a group-by,
one group at the smallest site selected and, as its complement, another group there (codes drawn from the
dictionary's); a synthetic pattern, not the one suppression would choose, but the same load on the check.

The first query after the history was written also indexes it (reading the audit log into the SQLite
index) and sizes every distinct footprint at the sites (one `FootprintSizes` task per site); that one-off
cost is reported on its own.

    .venv/bin/python bench/differencing_history.py [--history 100000] [--patients 3000] [--queries 30] [--reuse]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROUTINE_DIMS = [[], ["arm"], ["sex"], ["stage"], ["arm", "sex"], ["stage", "arm"], ["age_group"], ["risk_group"],
                ["histology_risk"], ["age_group", "arm"]]
CODES = {"sex": ["M", "F"], "arm": ["EE4A", "DD4A", "M", "NR"], "stage": ["I", "II", "III", "IV", "V"],
         "risk_group": ["LOW", "STANDARD", "HIGH"]}


def exploratory(rng: random.Random, sites: list[str], study: str) -> dict[str, Any]:
    filters = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        kind = rng.random()
        if kind < 0.4:
            col = rng.choice(list(CODES))
            filters.append({"column": col, "op": rng.choice(["==", "!="]), "value": rng.choice(CODES[col])})
        elif kind < 0.8:
            filters.append({"column": "age_at_diagnosis_years", "op": rng.choice(["<", ">="]),
                            "value": rng.randrange(2, 30) / 2})
        else:
            filters.append({"column": "os_days", "op": rng.choice(["<", ">="]),
                            "value": float(round(30.4375 * rng.randrange(3, 61)))})
    chosen = sites if rng.random() < 0.9 else sorted(rng.sample(sites, rng.randrange(2, len(sites))))
    query = {"study_id": study, "statistic": rng.choice(["count", "count", "mean", "proportion"]),
             "filters": filters, "group_by": rng.choice(ROUTINE_DIMS)[:2]}
    if query["statistic"] == "mean":
        query["column"] = "os_days"
    if query["statistic"] == "proportion":
        query["column"], query["value"] = "os_event", True
    if chosen != sites:
        query["sites"] = chosen
    return query


def routine(i: int, study: str) -> dict[str, Any]:
    dims = ROUTINE_DIMS[i % len(ROUTINE_DIMS)]
    return {"study_id": study, "statistic": "count", "group_by": dims}


def hidden_cells(rng: random.Random, dims: list[str], chosen: list[str], smallest: str) -> dict[str, Any]:
    """A synthetic suppression pattern: two groups hidden at the smallest site, in a third of the results."""
    values = [CODES.get(d, ["1-4", "<1", "5-9", "10-14"] if d == "age_group" else []) for d in dims]
    if not dims or smallest not in chosen or not all(values) or rng.random() > 1 / 3:
        return {}
    keys = {tuple(rng.choice(v) for v in values) for _ in range(2)}
    return {"hidden": [[smallest, dims, list(key)] for key in keys]}


def write_history(path: Path, n: int, sites: list[str], study: str, seed: int) -> int:
    """`n` released results as the service would have audited them; returns the distinct footprints."""
    from federation.query.central.audit import GENESIS, _hash
    from federation.query.central.history import footprints_of_entry
    from federation.query.model import Query

    rng = random.Random(seed)
    prev, distinct = GENESIS, set()
    smallest = sites[0]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(1, n + 1):
            raw = routine(i, study) if rng.random() < 0.6 else exploratory(rng, sites, study)
            q = Query.model_validate(raw)
            chosen = q.sites or sites
            when = (start + dt.timedelta(seconds=30 * i)).isoformat(timespec="microseconds")
            entry: dict[str, Any] = {"id": i, "time": when,
                     "analyst": f"analyst-{rng.randrange(50)}", "query": q.model_dump(mode="json"),
                     "fingerprint": q.fingerprint(), "versions": {s: f"{s}/{study}@v1" for s in chosen},
                     "outcome": "released", "reason": "", "excluded": {},
                     "released": {"sha256": "", "suppressed": 0, "per_site": rng.random() < 0.8, "bytes": 0,
                                  **hidden_cells(rng, q.group_by, chosen, smallest),
                                  **({"levels": [q.group_by, []]} if q.statistic == "count" else {})},
                     "prev": prev}
            if q.statistic == "proportion":  # its x, a part of its groups (`runner.released_splits`)
                entry["released"]["splits"] = [{"split": [{"column": q.column, "op": "==", "value": q.value}],
                                                "hidden": entry["released"].get("hidden", [])}]
            entry["hash"] = _hash(entry)
            prev = entry["hash"]
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            distinct.update(fp.key() for fp in footprints_of_entry(entry))
    return len(distinct)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=int, default=100_000)
    ap.add_argument("--patients", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("bench/out/differencing_history"))
    ap.add_argument("--reuse", action="store_true",
                    help="start from the history saved (indexed and sized) by an earlier run with the same "
                         "--history, skipping the one-off indexing and sizing (for trying changes to the guard)")
    args = ap.parse_args()
    os.environ.setdefault("FEDERATION_PSEUDONYM_KEY", "benchmark-key-0123456789")

    from federation.ingest.landing import upload_export
    from federation.ingest.pipeline import ingest_all
    from federation.query import Query, run_local
    from federation.query.central import guards
    from federation.query.central.audit import AuditLog
    from federation.query.central.history import History
    from federation.settings import Settings
    from federation.storage import StorageConfig, open_store
    from federation.synth import synthesize

    study = "PONC-WT-01"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = Settings(storage=StorageConfig(kind="local", root=out / "storage"), sites_dir=out / "exports" / "sites",
                        audit_log=out / "history.jsonl")
    if not (out / "storage" / "harmonized").exists():
        print(f"generating 6 sites (~{args.patients:,} patients) and publishing them ...", flush=True)
        written = synthesize(out / "exports", 6, study, round(args.patients / 6 / 1.25), dt.date(2025, 6, 30), seed=7)
        store = open_store(settings.storage)
        for w in written:
            upload_export(store, settings.storage, w.site.site_id, study, "1", w.folder,
                          now=dt.datetime(2025, 6, 30, 12, tzinfo=dt.UTC))
        assert {e.status for e in ingest_all(settings, progress=lambda _m: None)} == {"published"}
    sites = sorted(p.name for p in (out / "storage" / "harmonized").iterdir())

    for p in out.glob("*.jsonl*"):
        p.unlink()
    saved = out / "sized"
    meta = saved / "meta.json"
    reuse = args.reuse and meta.exists() and json.loads(meta.read_text())["history"] == args.history
    if reuse:
        for p in saved.glob("*.jsonl*"):
            shutil.copyfile(p, out / p.name)
        distinct = json.loads(meta.read_text())["distinct"]
        print(f"history: reused from {saved} ({args.history:,} results, {distinct:,} distinct footprints)")
    else:
        t0 = time.perf_counter()
        distinct = write_history(settings.audit_log, args.history, sites, study, seed=1)
        print(f"history: {args.history:,} released results, {distinct:,} distinct footprints "
              f"(written in {time.perf_counter() - t0:.1f} s)", flush=True)

    guard_times: list[float] = []
    original = guards.DifferencingGuard.released

    def timed_check(self: Any, ctx: Any) -> None:
        t = time.perf_counter()
        try:
            original(self, ctx)
        finally:
            guard_times.append(time.perf_counter() - t)

    guards.DifferencingGuard.released = timed_check  # type: ignore[method-assign]
    rng = random.Random(99)
    new_queries = [Query.model_validate(exploratory(rng, sites, study)) for _ in range(args.queries)]

    index_s = first_s = 0.0
    if not reuse:
        t0 = time.perf_counter()
        History.of(AuditLog(settings.audit_log)).sync()
        index_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = run_local(new_queries[0], settings, "bench")
        first_s = time.perf_counter() - t0
        print(f"indexing the audit log: {index_s:.1f} s; first query (sizes every distinct footprint at the "
              f"sites): {first_s:.1f} s ({first.status} {first.reason})", flush=True)
        saved.mkdir(exist_ok=True)
        for p in out.glob("history.jsonl*"):
            shutil.copyfile(p, saved / p.name)
        meta.write_text(json.dumps({"history": args.history, "distinct": distinct}))

    reasons: list[str] = []

    def run(settings_: Settings, label: str) -> tuple[list[float], list[float], list[str], list[dict[str, int]]]:
        guard_times.clear()
        totals, statuses, checked = [], [], []
        reasons.clear()
        for q in new_queries[1:]:
            t = time.perf_counter()
            r = run_local(q, settings_, "bench")
            totals.append(time.perf_counter() - t)
            statuses.append(r.status)
            reasons.append(r.reason)
            checked.append(r.checked)
            print(f"    {len(totals):>3}/{len(new_queries) - 1} {totals[-1]:6.1f} s  {r.status:<8} {r.checked}",
                  flush=True)
        print(f"  {label}: query median {statistics.median(totals) * 1000:,.0f} ms, guard median "
              f"{statistics.median(guard_times) * 1000:,.0f} ms (max {max(guard_times) * 1000:,.0f} ms)", flush=True)
        return totals, list(guard_times), statuses, checked

    empty = settings.model_copy(update={"audit_log": out / "empty.jsonl"})
    floor_total, floor_guard, floor_status, _ = run(empty, "empty history (floor)")
    hist_total, hist_guard, hist_status, checked = run(settings, f"{args.history:,} results in the history")
    ratio = statistics.median(hist_total) / statistics.median(floor_total)
    candidates = [c.get("candidates", 0) for c in checked]
    print("checked per query:", checked, flush=True)
    why = [r.split(" (differencing")[0].split(", this result")[-1][:90] for r in reasons if r]
    print("refusals by reason:", {w: why.count(w) for w in sorted(set(why))}, flush=True)
    print(f"ratio (median query time, history / empty): {ratio:.2f}x; candidates compared exactly per query: "
          f"median {statistics.median(candidates):.0f}, max {max(candidates)}; outcomes with history: "
          f"{ {s: hist_status.count(s) for s in set(hist_status)} }", flush=True)
    (out / "result.json").write_text(json.dumps({
        "history": args.history, "distinct_footprints": distinct, "index_s": index_s, "first_query_s": first_s,
        "floor_query_ms": [t * 1000 for t in floor_total], "floor_guard_ms": [t * 1000 for t in floor_guard],
        "history_query_ms": [t * 1000 for t in hist_total], "history_guard_ms": [t * 1000 for t in hist_guard],
        "ratio_median": ratio, "candidates": candidates, "statuses": hist_status, "reasons": reasons}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
