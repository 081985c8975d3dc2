"""Benchmark: validating an export with a 1,000,000-row adverse_events table.

Compares, in the same run on the same files, the full validation
(`federation validate`: site conventions, Great Expectations suites,
cross-table joins, report) against the floor: pyarrow reading the same
adverse_events.csv and writing it as Parquet. Each side runs in its own
process so its peak memory (max RSS) is measured on its own.

    .venv/bin/python bench/validate_1m.py [--ae-rows 1000000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

FLOOR = """
import sys, pathlib, pyarrow.csv as pc, pyarrow.parquet as pq
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for f in sys.argv[2:]:
    t = pc.read_csv(f, convert_options=pc.ConvertOptions(strings_can_be_null=True))
    pq.write_table(t, out / (pathlib.Path(f).stem + ".parquet"))
"""


def peak_of(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall seconds and peak RSS (MiB) of `cmd`, measured by a fresh wrapper process around it alone."""
    wrapper = [sys.executable, "-c",
               "import resource,subprocess,sys,time,json;t=time.perf_counter();"
               "p=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
               "w=time.perf_counter()-t;"
               "print(json.dumps({'wall':w,'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
               "'rc':p.returncode,'out':p.stdout[-3000:],'err':p.stderr[-3000:]}))", *cmd]
    proc = subprocess.run(wrapper, capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    done = subprocess.CompletedProcess(cmd, data["rc"], data["out"], data["err"])
    return data["wall"], data["rss"] / 1024, done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ae-rows", type=int, default=1_000_000, help="target adverse_events rows (default 1M)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/validate_1m"))
    args = ap.parse_args()

    from federation.synth import synthesize

    as_of = dt.date(2025, 6, 30)
    out = args.out
    export = out / "synth" / "site-a" / "PONC-WT-01"
    patients = max(args.ae_rows // 4, 50)
    if not (export / "adverse_events.csv").exists():
        print(f"generating an export with about {args.ae_rows:,} adverse events ({patients:,} patients)...",
              flush=True)
        t0 = time.perf_counter()
        # site-a is the first synthetic site and gets half of `patients`
        synthesize(out / "synth", 1, "PONC-WT-01", patients * 2, as_of, seed=11, ae_per_patient=4.0)
        print(f"  generated in {time.perf_counter() - t0:.0f} s", flush=True)
    ae = export / "adverse_events.csv"
    rows = sum(1 for _ in ae.open(encoding="utf-8")) - 1
    size = ae.stat().st_size / 2**20

    csvs = sorted(str(p) for p in export.glob("*.csv"))
    total_rows = sum(sum(1 for _ in open(p, encoding="utf-8")) - 1 for p in csvs)
    print("floor: pyarrow read adverse_events.csv + write Parquet ...", flush=True)
    f_wall, f_rss, f_proc = peak_of([sys.executable, "-c", FLOOR, str(out / "floor"), str(ae)])
    assert f_proc.returncode == 0, f_proc.stderr
    print("floor: pyarrow read every CSV of the export + write Parquet ...", flush=True)
    a_wall, a_rss, a_proc = peak_of([sys.executable, "-c", FLOOR, str(out / "floor"), *csvs])
    assert a_proc.returncode == 0, a_proc.stderr
    print("federation validate ...", flush=True)
    v_wall, v_rss, v_proc = peak_of([
        sys.executable, "-m", "federation.cli", "validate", str(export), "--site",
        str(out / "synth" / "sites" / "site-a.yaml"), "--study", "PONC-WT-01", "--upload-date", as_of.isoformat(),
        "--report-dir", str(out / "report"), "--quiet"])
    if v_proc.returncode != 0:
        print(v_proc.stdout, v_proc.stderr)
        return 1
    result = {
        "adverse_events_rows": rows, "adverse_events_mib": round(size, 1),
        "validate_s": round(v_wall, 2), "validate_peak_mib": round(v_rss),
        "export_rows_all_tables": total_rows,
        "floor_ae_s": round(f_wall, 2), "floor_ae_peak_mib": round(f_rss),
        "floor_all_s": round(a_wall, 2), "floor_all_peak_mib": round(a_rss),
        "time_ratio_vs_ae_floor": round(v_wall / f_wall, 1), "time_ratio_vs_all_floor": round(v_wall / a_wall, 1),
        "memory_ratio_vs_ae_floor": round(v_rss / f_rss, 1),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("| what | wall time (s) | peak memory (MiB) |")
    print("|---|---|---|")
    print(f"| federation validate, whole export ({total_rows:,} rows in all; adverse_events {rows:,} rows, "
          f"{size:.0f} MiB) | {v_wall:.1f} | {v_rss:,.0f} |")
    print(f"| floor A: pyarrow read adverse_events.csv + write Parquet | {f_wall:.1f} | {f_rss:,.0f} |")
    print(f"| floor B: pyarrow read all {len(csvs)} CSVs of the export + write Parquet | {a_wall:.1f} | {a_rss:,.0f} |")
    print(f"| ratio to floor A | {v_wall / f_wall:.1f}x | {v_rss / f_rss:.1f}x |")
    print(f"| ratio to floor B | {v_wall / a_wall:.1f}x | {v_rss / a_rss:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
