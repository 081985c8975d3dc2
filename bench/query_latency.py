"""Benchmark: latency of federated queries over 10 sites with 100,000 patients in all, asked as an analyst
of the query service (HTTP, token) and answered by 10 site-node processes on 127.0.0.1.

Each query goes analyst -> service -> signed task per site -> each node (long poll) opens its site's
published version with DuckDB, checks and computes its summaries -> replies -> the service combines them
exactly, runs disclosure control (suppression with the LP audit, subset and differencing guards) and
writes the signed audit entry. "cold": the first query after the service and all nodes were started (every
node loads its site's tables); "warm": the same query again. The floor, measured in the same run, is the
same statistic from one DuckDB query over all sites' Parquet pooled (no federation, no disclosure
control). For comparison, the same query with every site answered in the benchmark's own process
(in-process gateway, no HTTP) is measured too. Node compute per task comes from the nodes' own logs.

    .venv/bin/python bench/query_latency.py [--patients 100000] [--repeat 5] [--cold-repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import duckdb
import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cold-repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/out/query_latency"))
    args = ap.parse_args()
    os.environ.setdefault("FEDERATION_PSEUDONYM_KEY", "benchmark-key-0123456789")

    from federation.ingest.landing import upload_export
    from federation.ingest.pipeline import ingest_all
    from federation.query import Query, run_local
    from federation.query.central import combine as fstats
    from federation.query.site import estimating
    from federation.settings import Settings
    from federation.storage import StorageConfig, open_store
    from federation.synth import synthesize

    study = "PONC-WT-01"
    out = args.out
    settings = Settings(storage=StorageConfig(kind="local", root=out / "storage"), sites_dir=out / "exports" / "sites",
                        audit_log=out / "audit.jsonl")
    harmonized = out / "storage" / "harmonized"
    if not harmonized.exists():
        # synthetic site sizes vary 0.5x..2x of the mid size; mean factor 1.25 over the repeating pattern
        mid = round(args.patients / (args.sites * 1.25))
        print(f"generating {args.sites} sites (~{args.patients:,} patients) and ingesting them ...", flush=True)
        t0 = time.perf_counter()
        written = synthesize(out / "exports", args.sites, study, mid, dt.date(2025, 6, 30), seed=5,
                             ae_per_patient=1.0)
        store = open_store(settings.storage)
        for w in written:
            upload_export(store, settings.storage, w.site.site_id, study, "1", w.folder,
                          now=dt.datetime(2025, 6, 30, 12, tzinfo=dt.UTC))
        entries = ingest_all(settings, progress=lambda m: print(" ", m, flush=True))
        assert {e.status for e in entries} == {"published"}
        print(f"  ready in {time.perf_counter() - t0:.0f} s", flush=True)

    con = duckdb.connect()
    glob = f"{harmonized}/*/{study}/data/*"
    n_patients = con.execute(f"SELECT count(*) FROM read_parquet('{glob}/patients.parquet')").fetchone()[0]  # type: ignore[index]
    n_sites = len(list(harmonized.iterdir()))
    crosstab_sql = (f"SELECT d.stage, p.arm, count(*) FROM read_parquet('{glob}/patients.parquet') p "
                    f"JOIN read_parquet('{glob}/diagnoses.parquet') d USING (pid) GROUP BY ALL")
    q_crosstab = Query(study_id=study, statistic="crosstab", group_by=["stage", "arm"])
    q_km = Query(study_id=study, statistic="km", endpoint="efs", group_by=["arm"])

    def floor_crosstab() -> object:
        return con.execute(crosstab_sql).fetchall()

    def floor_km() -> object:
        data = con.execute(f"SELECT arm, efs_days, efs_event FROM read_parquet('{glob}/patients.parquet')").fetchnumpy()
        grid = np.arange(0.0, q_km.horizon_days + q_km.grid_days, q_km.grid_days)
        curves = {}
        for arm in np.unique(data["arm"]):
            m = data["arm"] == arm
            n, d, _ = estimating.km_grid_counts(data["efs_days"][m].astype(float),
                                                data["efs_event"][m].astype(bool), grid)
            curves[arm] = fstats.km_from_counts(n, d)
        return curves

    def timed(fn, label: str) -> list[float]:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(f"  {label}: median {statistics.median(times) * 1000:,.0f} ms", flush=True)
        return times

    print(f"{n_sites} sites, {n_patients:,} patients; {args.repeat} warm runs, {args.cold_repeat} cold runs each",
          flush=True)
    from federation.client import Client
    from federation.localrun import LocalFederation

    settings_file = out / "settings.yaml"
    settings_file.write_text(f"storage: {{kind: local, root: {(out / 'storage').resolve()}}}\n"
                             f"sites_dir: {(out / 'exports' / 'sites').resolve()}\n")
    sites = sorted(p.name for p in harmonized.iterdir())
    run_dir = out / f"run-{time.time_ns()}"
    fed = LocalFederation(run_dir, {s: settings_file for s in sites}, poll_wait=20.0)
    fed.start()

    def service_query(q: Query) -> object:
        r = Client(fed.url, fed.token("analyst")).query(q)
        assert r.status == "released", r.reason
        return r

    def cold(q: Query) -> float:
        """Restart the service and every node (not timed), then time the first query."""
        fed.stop()
        fed.start()
        t0 = time.perf_counter()
        service_query(q)
        return time.perf_counter() - t0

    def cold_times(q: Query, label: str) -> list[float]:
        times = [cold(q) for _ in range(args.cold_repeat)]
        print(f"  {label}: median {statistics.median(times) * 1000:,.0f} ms", flush=True)
        return times

    analyst = f"bench-{time.time_ns()}"
    try:
        res = {
            "crosstab_service_cold": cold_times(q_crosstab, "crosstab through service + nodes, just started"),
            "crosstab_service": timed(lambda: service_query(q_crosstab), "crosstab through service + nodes, warm"),
            "crosstab_inprocess": timed(lambda: run_local(q_crosstab, settings, analyst),
                                        "crosstab in-process gateway, warm"),
            "crosstab_floor": timed(floor_crosstab, "pooled DuckDB crosstab (floor)"),
            "km_service_cold": cold_times(q_km, "Kaplan-Meier through service + nodes, just started"),
            "km_service": timed(lambda: service_query(q_km), "Kaplan-Meier through service + nodes, warm"),
            "km_inprocess": timed(lambda: run_local(q_km, settings, analyst), "Kaplan-Meier in-process gateway, warm"),
            "km_floor": timed(floor_km, "pooled DuckDB Kaplan-Meier (floor)"),
        }
        node_ms: dict[str, list[float]] = {}  # a node's own time per task once its site is loaded
        for log in (fed.workdir / "node-logs").glob("*.jsonl"):
            loaded = False
            for line in log.read_text().splitlines():
                e = json.loads(line)
                if e.get("event") == "started":
                    loaded = False
                elif e.get("event") == "answered" and e.get("requests"):
                    if loaded:
                        node_ms.setdefault("km" if "km_counts" in e["requests"] else "crosstab", []).append(e["ms"])
                    loaded = True
    finally:
        fed.stop()
    med = {k: statistics.median(v) for k, v in res.items()}
    summary = {"sites": n_sites, "patients": n_patients, "repeat": args.repeat, "cold_repeat": args.cold_repeat,
               **{f"{k}_median_ms": round(v * 1000, 1) for k, v in med.items()},
               **{f"{k}_node_task_median_ms": round(statistics.median(v), 1) for k, v in node_ms.items()}}
    for key in ("crosstab", "km"):
        summary[f"{key}_warm_ratio"] = round(med[f"{key}_service"] / med[f"{key}_floor"], 1)
        summary[f"{key}_cold_ratio"] = round(med[f"{key}_service_cold"] / med[f"{key}_floor"], 1)
        summary[f"{key}_inprocess_ratio"] = round(med[f"{key}_inprocess"] / med[f"{key}_floor"], 1)
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(f"| {n_sites} sites, {n_patients:,} patients | service + nodes, just started (ms) | service + nodes, "
          "warm (ms) | in-process, warm (ms) | pooled DuckDB floor (ms) | ratio cold / warm to floor | node task "
          "warm (median ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, key in (("crosstab stage x arm", "crosstab"), ("Kaplan-Meier EFS by arm (monthly grid)", "km")):
        print(f"| {name} | {med[key + '_service_cold'] * 1000:,.0f} | {med[key + '_service'] * 1000:,.0f} | "
              f"{med[key + '_inprocess'] * 1000:,.0f} | {med[key + '_floor'] * 1000:,.0f} | "
              f"{summary[key + '_cold_ratio']}x / {summary[key + '_warm_ratio']}x | "
              f"{summary.get(key + '_node_task_median_ms', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
