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
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AS_OF, FLOOR, count_rows, ensure_export, peak_of  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ae-rows", type=int, default=1_000_000, help="target adverse_events rows (default 1M)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/validate_1m"))
    ap.add_argument("--memory-mb", type=int, default=1024, help="the validation's memory budget (default 1024)")
    args = ap.parse_args()

    out = args.out
    export = ensure_export(out, args.ae_rows)
    as_of = AS_OF
    ae = export / "adverse_events.csv"
    rows = sum(1 for _ in ae.open(encoding="utf-8")) - 1
    size = ae.stat().st_size / 2**20

    csvs = sorted(str(p) for p in export.glob("*.csv"))
    total_rows = count_rows([Path(p) for p in csvs])
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
        "--report-dir", str(out / "report"), "--quiet", "--memory-mb", str(args.memory_mb)])
    if v_proc.returncode != 0:
        print(v_proc.stdout, v_proc.stderr)
        return 1
    reports = sorted((out / "report").glob("**/*.json"), key=lambda p: p.stat().st_mtime)
    steps = json.loads(reports[-1].read_text()).get("steps", {}) if reports else {}
    result = {
        "adverse_events_rows": rows, "adverse_events_mib": round(size, 1),
        "validate_s": round(v_wall, 2), "validate_peak_mib": round(v_rss),
        "export_rows_all_tables": total_rows,
        "floor_ae_s": round(f_wall, 2), "floor_ae_peak_mib": round(f_rss),
        "floor_all_s": round(a_wall, 2), "floor_all_peak_mib": round(a_rss),
        "time_ratio_vs_ae_floor": round(v_wall / f_wall, 1), "time_ratio_vs_all_floor": round(v_wall / a_wall, 1),
        "memory_ratio_vs_ae_floor": round(v_rss / f_rss, 1), "steps_s": steps,
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
    print()
    print("| step of validation | seconds |")
    print("|---|---|")
    for step, seconds in steps.items():
        print(f"| {step} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
