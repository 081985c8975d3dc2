"""Storage as shipped: SeaweedFS started with exactly docker-compose.yml's flags (only ports, paths and the
loopback binding are this test's own), then the compose `storage-init` command, then six sites uploading
and the pipeline publishing all six. Before init, an upload fails as a new deployment's did (NoSuchBucket)."""

from __future__ import annotations

import datetime as dt
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from federation.ingest.landing import upload_export
from federation.ingest.pipeline import ingest_all
from federation.paths import PROJECT_ROOT
from federation.settings import Settings
from federation.storage import StorageConfig, open_store
from federation.storage.base import StorageError
from federation.storage.identities import new_secrets, render_seaweedfs
from federation.storage.seaweed import weed_binary
from federation.synth import synthesize

pytestmark = pytest.mark.integration

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
# what may differ from compose here: where data and identities are, which ports, and binding to 127.0.0.1
OWN = ("-dir=", "-s3.config=", "-s3.port=")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def compose_weed_flags() -> list[str]:
    args = shlex.split(COMPOSE["services"]["seaweedfs"]["command"])
    assert args[0] == "server"
    return args[1:]


def test_compose_weed_flags_leave_room_for_every_bucket() -> None:
    flags = dict(f.split("=", 1) for f in compose_weed_flags() if "=" in f)
    assert int(flags["-volume.max"]) >= 100 and int(flags["-master.volumeSizeLimitMB"]) <= 1024
    init = COMPOSE["services"]["storage-init"]
    assert init["command"][:3] == ["federation", "storage", "init"]
    for name, svc in COMPOSE["services"].items():  # nothing touches storage before init succeeded
        if name.startswith(("node-", "airflow-")) and name != "airflow-init":
            assert svc["depends_on"]["storage-init"] == {"condition": "service_completed_successfully"}, name


def test_seaweedfs_as_composed_with_init_ingests_six_sites(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    written = synthesize(exports, 6, "PONC-WT-01", 60, dt.date(2025, 6, 30), seed=5)
    sites = sorted(w.site.site_id for w in written)
    cfg = StorageConfig(kind="s3", secrets_dir=tmp_path / "secrets")
    new_secrets(sites, cfg, cfg.secrets_dir)  # type: ignore[arg-type]
    identities = tmp_path / "s3.json"
    identities.write_text(render_seaweedfs(sites, cfg))

    ports = dict(zip(["s3", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc"],
                     _free_ports(8), strict=True))
    flags = [f for f in compose_weed_flags() if not f.startswith(OWN)]
    cmd = [weed_binary(), "server", f"-dir={tmp_path / 'data'}", f"-s3.config={identities}", f"-s3.port={ports['s3']}",
           *flags, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
           f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
           f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
           f"-s3.port.grpc={ports['s3.grpc']}"]
    (tmp_path / "data").mkdir()
    log = (tmp_path / "weed.log").open("wb")
    weed = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cfg = cfg.model_copy(update={"endpoint": f"http://127.0.0.1:{ports['s3']}"})
        settings = Settings(storage=cfg, sites_dir=exports / "sites")
        config = tmp_path / "settings.yaml"
        config.write_text(yaml.safe_dump({"storage": cfg.model_dump(mode="json"), "sites_dir": str(exports / "sites")}))

        # a new deployment before init: no bucket exists (once the identities are loaded; AccessDenied until
        # then), and the pipeline's first write is refused (SeaweedFS would create the bucket only for Admin)
        pipeline = open_store(cfg, "pipeline")
        deadline = time.monotonic() + 60
        while True:
            try:
                pipeline.list("pipeline/")
                raise AssertionError("the pipeline bucket exists before init")
            except StorageError as exc:
                if "NoSuchBucket" in str(exc):
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        with pytest.raises(StorageError):
            pipeline.put_bytes("pipeline/probe", b"x")

        init = list(COMPOSE["services"]["storage-init"]["command"])
        init[init.index("--config") + 1] = str(config)
        proc = subprocess.run([sys.executable, "-m", "federation.cli", *init[1:]], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "storage ready: 4 buckets writable (landing, reports, harmonized, pipeline created)" in proc.stdout
        again = subprocess.run([sys.executable, "-m", "federation.cli", *init[1:]], capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0 and "storage ready: 4 buckets writable\n" in again.stdout  # idempotent

        # a pipeline key that does not match SeaweedFS's identities: said as such, after a short wait
        wrong = tmp_path / "wrong-secrets"
        wrong.mkdir()
        for f in (tmp_path / "secrets").glob("*.json"):
            (wrong / f.name).write_text(f.read_text())
        (wrong / "pipeline.json").write_text('{"access_key": "pipeline-x", "secret_key": "not-the-key-0000"}')
        bad = tmp_path / "bad-settings.yaml"
        bad.write_text(yaml.safe_dump({"storage": cfg.model_copy(update={"secrets_dir": wrong}).model_dump(
            mode="json"), "sites_dir": str(exports / "sites")}))
        denied = subprocess.run([sys.executable, "-m", "federation.cli", "storage", "init", "--config", str(bad),
                                 "--wait", "3"], capture_output=True, text=True, timeout=120)
        assert denied.returncode == 1 and "does not match the storage's identities" in denied.stderr, denied.stderr

        for w in written:
            upload_export(open_store(cfg, w.site.site_id), cfg, w.site.site_id, "PONC-WT-01", "1", w.folder,
                          now=dt.datetime(2025, 6, 30, 12, tzinfo=dt.UTC))
        entries = ingest_all(settings, progress=lambda _m: None)
        assert sorted((e.site_id, e.status) for e in entries) == [(s, "published") for s in sites], \
            [e.message for e in entries]
        # init's probes left nothing behind
        assert not [o for b in ("landing", "reports", "harmonized", "pipeline")
                    for o in pipeline.list(f"{b}/_federation/")]
    finally:
        weed.terminate()
        try:
            weed.wait(20)
        except subprocess.TimeoutExpired:
            weed.kill()
