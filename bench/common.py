"""Shared pieces of the benchmarks: the synthetic 1M-adverse-event export and child-process measurement."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

AS_OF = dt.date(2025, 6, 30)
STUDY = "PONC-WT-01"

# pyarrow reading the given CSV files and writing each as Parquet: the floor of any CSV -> Parquet pipeline.
FLOOR = """
import sys, pathlib, pyarrow.csv as pc, pyarrow.parquet as pq
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for f in sys.argv[2:]:
    t = pc.read_csv(f, convert_options=pc.ConvertOptions(strings_can_be_null=True))
    pq.write_table(t, out / (pathlib.Path(f).stem + ".parquet"))
"""


def ensure_export(root: Path, ae_rows: int) -> Path:
    """One synthetic site (site-a conventions) with about `ae_rows` adverse events; generated once."""
    from federation.synth import synthesize

    export = root / "synth" / "site-a" / STUDY
    if not (export / "adverse_events.csv").exists():
        patients = max(ae_rows // 4, 50)
        print(f"generating an export with about {ae_rows:,} adverse events ({patients:,} patients)...", flush=True)
        t0 = time.perf_counter()
        # site-a is the first synthetic site and gets half of `patients`
        synthesize(root / "synth", 1, STUDY, patients * 2, AS_OF, seed=11, ae_per_patient=4.0)
        print(f"  generated in {time.perf_counter() - t0:.0f} s", flush=True)
    return export


def count_rows(paths: list[Path]) -> int:
    return sum(sum(1 for _ in p.open(encoding="utf-8")) - 1 for p in paths)


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
