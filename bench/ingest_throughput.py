"""Benchmark: landing-to-published throughput of one large upload.

Uploads the synthetic export (1,000,000 adverse events, about 2.6M rows in
all five tables) to the landing zone, then runs the pipeline on it
(download and sha256 check, validation, harmonization, atomic publish),
and reports rows per second next to the floor measured in the same run:
pyarrow reading the same CSV files and writing them as Parquet.

    .venv/bin/python bench/ingest_throughput.py [--backend local|seaweedfs] [--ae-rows N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOOR, STUDY, count_rows, ensure_export, peak_of  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ae-rows", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=["local", "seaweedfs"], default="local")
    ap.add_argument("--out", type=Path, default=Path("bench/out/validate_1m"))
    ap.add_argument("--memory-mb", type=int, default=1024, help="the pipeline's memory budget (default 1024)")
    args = ap.parse_args()
    os.environ.setdefault("FEDERATION_PSEUDONYM_KEY", "benchmark-key-0123456789")

    from federation.ingest.landing import UploadRef, upload_export
    from federation.ingest.pipeline import process_upload
    from federation.settings import Settings
    from federation.storage import StorageConfig, open_store

    export = ensure_export(args.out, args.ae_rows)
    if not (args.out / "generated-earlier").exists():  # generating holds every row in memory: measure apart
        (args.out / "generated-earlier").touch()
        print("the export was generated in this process; run again to measure peak memory", flush=True)
    csvs = sorted(export.glob("*.csv"))
    rows = count_rows(csvs)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    server = None
    try:
        if args.backend == "local":
            cfg = StorageConfig(kind="local", root=work / "storage")
        else:
            from federation.storage.identities import new_secrets, render_seaweedfs
            from federation.storage.seaweed import SeaweedServer

            cfg = StorageConfig(kind="s3", secrets_dir=work / "secrets")
            creds = new_secrets(["site-a"], cfg, work / "secrets")
            (work / "s3.json").write_text(render_seaweedfs(["site-a"], cfg, creds))
            server = SeaweedServer(work, work / "s3.json", ["landing", "reports", "harmonized", "pipeline"],
                                   ready_check=lambda ep: bool(open_store(
                                       cfg.model_copy(update={"endpoint": ep}), "pipeline").list("pipeline/")
                                       or True)).start()
            cfg = cfg.model_copy(update={"endpoint": server.endpoint})
        settings = Settings(storage=cfg, sites_dir=args.out / "synth" / "sites", memory_mb=args.memory_mb)
        site_store = open_store(cfg, "site-a" if cfg.kind == "s3" else "pipeline")

        print("floor: pyarrow read the export's CSVs + write Parquet ...", flush=True)
        f_wall, _, f_proc = peak_of([sys.executable, "-c", FLOOR, str(work / "floor"), *map(str, csvs)])
        assert f_proc.returncode == 0, f_proc.stderr

        print(f"upload to {site_store.describe()} ...", flush=True)
        t0 = time.perf_counter()
        m = upload_export(site_store, cfg, "site-a", STUDY, "1", export,
                          now=dt.datetime(2025, 6, 30, 12, tzinfo=dt.UTC))
        up_s = time.perf_counter() - t0
        print("pipeline: download + verify, validate, harmonize, publish ...", flush=True)
        t1 = time.perf_counter()
        entry = process_upload(settings, UploadRef("site-a", m.upload_id, True), workdir=work)
        proc_s = time.perf_counter() - t1
        assert entry.status == "published", entry.message
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = up_s + proc_s
    result = {"backend": args.backend, "rows": rows, "upload_s": round(up_s, 2), "pipeline_s": round(proc_s, 2),
              "stages_s": entry.seconds, "landing_to_published_rows_per_s": round(rows / proc_s),
              "with_upload_rows_per_s": round(rows / total), "floor_s": round(f_wall, 2),
              "floor_rows_per_s": round(rows / f_wall), "ratio": round(proc_s / f_wall, 1),
              "peak_mib": round(peak), "memory_mb": args.memory_mb}
    (args.out / f"ingest_{args.backend}.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"| {args.backend}: {rows:,} rows (5 tables) | seconds | rows/s |")
    print("|---|---|---|")
    print(f"| upload (site -> landing, with sha256) | {up_s:.1f} | {rows / up_s:,.0f} |")
    print(f"| landing -> published (pipeline) | {proc_s:.1f} | {rows / proc_s:,.0f} |")
    print(f"| floor: pyarrow CSV -> Parquet, same files | {f_wall:.1f} | {rows / f_wall:,.0f} |")
    print(f"| pipeline / floor | {proc_s / f_wall:.1f}x | |")
    print(f"stages: {entry.seconds}")
    print(f"peak memory of this process (upload and pipeline): {peak:,.0f} MiB (budget {args.memory_mb:,} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
