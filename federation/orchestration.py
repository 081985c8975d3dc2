"""Run the real Airflow DAGs locally with `dag.test()`, in a child process with
its own AIRFLOW_HOME and SQLite metadata database, so the demo and the tests
exercise the same DAG files a production scheduler would run.

    python -m federation.orchestration AIRFLOW_HOME DAG_ID [CONF_JSON]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from federation.paths import PROJECT_ROOT

DAGS_DIR = PROJECT_ROOT / "dags"
# The Airflow Asset that site_ingest updates and consortium_report is scheduled on.
HARMONIZED_ASSET = {"name": "harmonized", "uri": "federation://harmonized/"}


def steps_in_task_log() -> None:
    """Show the platform's own log lines (each ingest step with rows and seconds, warnings such as a stale
    suite) in the Airflow task's log: Airflow captures the task's stdout, not every library logger."""
    import logging

    steps = logging.getLogger("federation")
    if not steps.handlers:
        steps.addHandler(logging.StreamHandler(sys.stdout))
        steps.setLevel(logging.INFO)
        steps.propagate = False


def airflow_env(airflow_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "GX_ANALYTICS_ENABLED": "false",
    })
    env.update(extra or {})
    return env


def run_dag(airflow_home: Path, dag_id: str, extra_env: dict[str, str] | None = None,
            log_file: Path | None = None, conf: dict[str, object] | None = None) -> dict[str, object]:
    """Run `dag_id` once with dag.test(); returns {"state": ..., "tasks": {task[map_index]: state},
    "labels": {task[map_index]: its name in the UI (map_index_template)}}."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(airflow_home, extra_env)
    log_file = log_file or airflow_home / f"{dag_id}.log"
    with log_file.open("ab") as log:
        if not (airflow_home / "airflow.db").exists():
            subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                           stdout=log, stderr=subprocess.STDOUT)
        proc = subprocess.run([sys.executable, "-m", "federation.orchestration", str(airflow_home), dag_id,
                               json.dumps(conf or {})],
                              env=env, stdout=subprocess.PIPE, stderr=log)
    lines = [line for line in proc.stdout.decode().splitlines() if line.startswith("{\"state\"")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"running DAG {dag_id} failed (exit {proc.returncode}); see {log_file}")
    result: dict[str, object] = json.loads(lines[-1])
    return result


def _main(dag_id: str, conf: dict[str, object] | None = None) -> int:
    import contextlib

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    if bag.import_errors:
        print(json.dumps({"state": "import_error", "errors": bag.import_errors}))
        return 1
    dag = bag.get_dag(dag_id)
    with contextlib.redirect_stdout(sys.stderr):
        run = dag.test(run_conf=conf or None)
        tis = run.get_task_instances()
        tasks = {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in tis}
        labels = {f"{ti.task_id}[{ti.map_index}]": ti.rendered_map_index for ti in tis if ti.rendered_map_index}
    print(json.dumps({"state": str(run.state), "tasks": tasks, "labels": labels}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None))
