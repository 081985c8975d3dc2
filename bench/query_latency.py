"""Benchmark: latency of federated queries over 10 sites with 100,000 patients in all.

Each federated query opens every site's published version with that site's
query identity (DuckDB, one connection per site, sites in parallel),
computes the site summaries, combines them exactly, runs disclosure control
(suppression with the LP audit, subset and differencing guards) and writes
the audit entry. The floor, measured in the same run, is the same statistic
from one DuckDB query over all sites' Parquet pooled (no federation, no
disclosure control).

    .venv/bin/python bench/query_latency.py [--patients 100000] [--repeat 5]
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

    print(f"{n_sites} sites, {n_patients:,} patients; {args.repeat} runs each", flush=True)
    analyst = f"bench-{time.time_ns()}"
    from federation.query.site.data import clear_site_cache

    def cold(q: Query) -> object:
        clear_site_cache()  # every site's tables loaded again, as for the first query on new versions
        return run_local(q, settings, analyst)

    res = {
        "crosstab_federated_cold": timed(lambda: cold(q_crosstab), "federated crosstab, sites opened"),
        "crosstab_federated": timed(lambda: run_local(q_crosstab, settings, analyst),
                                    "federated crosstab, sites already open"),
        "crosstab_floor": timed(floor_crosstab, "pooled DuckDB crosstab (floor)"),
        "km_federated_cold": timed(lambda: cold(q_km), "federated Kaplan-Meier, sites opened"),
        "km_federated": timed(lambda: run_local(q_km, settings, analyst), "federated Kaplan-Meier, sites already open"),
        "km_floor": timed(floor_km, "pooled DuckDB Kaplan-Meier (floor)"),
    }
    check = run_local(q_crosstab, settings, analyst)
    assert check.status == "released", check.reason
    med = {k: statistics.median(v) for k, v in res.items()}
    summary = {"sites": n_sites, "patients": n_patients, "repeat": args.repeat,
               **{f"{k}_median_ms": round(v * 1000, 1) for k, v in med.items()},
               "crosstab_ratio": round(med["crosstab_federated"] / med["crosstab_floor"], 1),
               "crosstab_cold_ratio": round(med["crosstab_federated_cold"] / med["crosstab_floor"], 1),
               "km_ratio": round(med["km_federated"] / med["km_floor"], 1),
               "km_cold_ratio": round(med["km_federated_cold"] / med["km_floor"], 1)}
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(f"| {n_sites} sites, {n_patients:,} patients | federated, sites opened (ms) | federated, sites open (ms) "
          "| pooled DuckDB floor (ms) | ratio opened / open |")
    print("|---|---|---|---|---|")
    for name, key in (("crosstab stage x arm", "crosstab"), ("Kaplan-Meier EFS by arm (monthly grid)", "km")):
        print(f"| {name} | {med[key + '_federated_cold'] * 1000:,.0f} | {med[key + '_federated'] * 1000:,.0f} | "
              f"{med[key + '_floor'] * 1000:,.0f} | {summary[key + '_cold_ratio']}x / {summary[key + '_ratio']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
