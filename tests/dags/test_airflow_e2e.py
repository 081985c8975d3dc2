"""End to end with a real Airflow: `airflow standalone` (scheduler, dag-processor, triggerer, api-server)
on 127.0.0.1 with its own AIRFLOW_HOME and SQLite; the DAG is triggered and watched through the REST API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from federation.ingest.pipeline import read_catalog
from federation.orchestration import airflow_env
from federation.settings import Settings, load_settings
from federation.storage import StorageConfig, open_store
from tests.ingest.helpers import upload

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(base: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    req = urllib.request.Request(base + path, method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: dict[str, object] = json.loads(resp.read())
        return data


def _wait(what: str, fn, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}: {last}")


def _stop(proc: subprocess.Popen[bytes], home: Path) -> None:
    """Stop standalone and every Airflow process it started (some start sessions of their own)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    marker = f"AIRFLOW_HOME={home}".encode()
    for _ in range(5):  # children may still be spawning while we look
        left = 0
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                environ = (pid_dir / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                left += 1
                try:
                    os.kill(int(pid_dir.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not left:
            break
        time.sleep(1)


def test_standalone_airflow_runs_site_ingest(tmp_path: Path, clean_exports: Path, broken_exports: Path) -> None:
    settings = Settings(storage=StorageConfig(kind="local", root=tmp_path / "storage"),
                        sites_dir=clean_exports / "sites")
    upload(settings, "site-a", clean_exports / "site-a" / "PONC-WT-01")
    upload(settings, "site-b", broken_exports / "site-b" / "PONC-NB-02", study="PONC-NB-02")
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"storage": settings.storage.model_dump(mode="json"),
                                      "sites_dir": str(settings.sites_dir)}))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = airflow_env(tmp_path / "airflow", {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # only the run this test triggers
        "FEDERATION_CONFIG": str(config),
    })
    (tmp_path / "airflow").mkdir()
    log = (tmp_path / "standalone.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait("the DAG to be parsed", lambda: _api(base, "/api/v2/dags/site_ingest").get("dag_id"), 180)
        run = _api(base, "/api/v2/dags/site_ingest/dagRuns", {"logical_date": None, "dag_run_id": "e2e-1"})
        assert run["state"] == "queued"
        # paused DAGs do not run; unpause through the API, as an operator would
        req = urllib.request.Request(f"{base}/api/v2/dags/site_ingest", method="PATCH",
                                     data=json.dumps({"is_paused": False}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).close()
        state = _wait("the run to finish", lambda: (
            s if (s := _api(base, "/api/v2/dags/site_ingest/dagRuns/e2e-1")["state"]) in ("success", "failed")
            else None), 300)
        assert state == "success", (tmp_path / "standalone.log").read_text()[-3000:]
        tis = _api(base, "/api/v2/dags/site_ingest/dagRuns/e2e-1/taskInstances")["task_instances"]
        assert isinstance(tis, list)
        assert sorted((t["task_id"], t["state"]) for t in tis) == [("announce", "success"), ("discover", "success"),
            ("process", "success"), ("process", "success"), ("summarize", "success")]
        # the UI names each mapped task by its site and upload
        assert sorted(str(t["rendered_map_index"]).split(" / ")[0] for t in tis if t["task_id"] == "process") == [
            "site-a", "site-b"]
    finally:
        _stop(proc, tmp_path / "airflow")
    loaded = load_settings(config)
    status = {e.site_id: e.status for e in read_catalog(open_store(loaded.storage), loaded)}
    assert status == {"site-a": "published", "site-b": "quarantined"}
