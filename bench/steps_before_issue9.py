"""Per-step timings of the validation path as it was before issue 9 (commit 20ff98d), by wrapping its functions:
the "before" column of docs/benchmarks.md. Run it on a checkout of that commit:

    git worktree add /tmp/before 20ff98d
    PYTHONPATH=/tmp/before .venv/bin/python bench/steps_before_issue9.py \
        bench/out/validate_1m/synth/site-a/PONC-WT-01 bench/out/validate_1m/synth/sites/site-a.yaml /tmp/report
"""
# ruff: noqa
import datetime as dt, json, resource, sys, time
from pathlib import Path
import federation
assert federation.__file__.startswith("/tmp/before"), federation.__file__
from federation.validation import reader, runner
from federation.config import load_site

acc = {}
stack = []
def timed(label, fn):
    def w(*a, **k):
        t = time.perf_counter(); stack.append(0.0)
        try:
            return fn(*a, **k)
        finally:
            inner = stack.pop(); el = time.perf_counter() - t
            acc[label] = acc.get(label, 0.0) + el - inner
            if stack: stack[-1] += el
    return w
reader._normalise = timed("conventions", reader._normalise)
runner.read_table = timed("read", runner.read_table)
runner.build_batch = timed("joins", runner.build_batch)
runner._findings_from = timed("report", runner._findings_from)
runner._run_suites = timed("gx", runner._run_suites)
export, site, out = map(Path, sys.argv[1:4])
t0 = time.perf_counter()
rep = runner.validate_export(runner.ValidationRequest(path=export, site=load_site(str(site)), study_id="PONC-WT-01",
                              upload_date=dt.date(2025, 6, 30)))
t = time.perf_counter(); rep.write(out); acc["report"] = acc.get("report", 0) + time.perf_counter() - t
acc["total"] = time.perf_counter() - t0
acc["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
acc["errors"] = len(rep.errors); acc["status"] = str(rep.status)
print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in acc.items()}))
