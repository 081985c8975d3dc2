"""The production shape stays valid: docker-compose.yml and the SeaweedFS identities policy."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from federation.paths import PROJECT_ROOT
from federation.storage import StorageConfig
from federation.storage.identities import policy


def test_compose_file_has_the_production_services() -> None:
    data = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    assert {"postgres", "seaweedfs", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-init"} <= set(data["services"])
    for name, service in data["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_nodes_hold_only_their_own_site_key_and_the_service_none() -> None:
    services = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
    assert not any("secrets" in str(v) or "settings" in str(v) for v in services["query-service"].get("volumes", []))
    nodes = {name.removeprefix("node-"): svc for name, svc in services.items() if name.startswith("node-")}
    assert set(nodes) == {f"site-{c}" for c in "abcdef"}
    for site, svc in nodes.items():
        keys = [v for v in svc["volumes"] if ".json:" in v]
        assert keys == [f"${{FEDERATION_SECRETS_DIR:-./secrets}}/query-{site}.json:"
                        f"/run/secrets/federation/query-{site}.json:ro"], site
        assert svc["command"][svc["command"].index("--site") + 1] == site


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_is_valid() -> None:
    env = {**os.environ, "POSTGRES_PASSWORD": "check", "AIRFLOW_JWT_SECRET": "check"}
    proc = subprocess.run(["docker-compose", "config", "-q"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_identities_policy_gives_sites_only_their_prefixes() -> None:
    p = policy(["site-a", "site-b"], StorageConfig())
    assert set(p) == {"storage-admin", "pipeline", "site-a", "site-b", "query-site-a", "query-site-b"}
    assert p["storage-admin"] == ["Admin"]  # creating buckets; no other identity may
    assert not any("Admin" in a for name, actions in p.items() if name != "storage-admin" for a in actions)
    assert all("site-a" in action for action in p["site-a"] + p["query-site-a"])
    assert not any(a.startswith("Write") for a in p["query-site-a"])
    assert not any("harmonized" in a for a in p["site-a"])


def test_identities_command_keeps_existing_keys_and_adds_missing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from federation.cli import main

    sites = tmp_path / "sites"
    sites.mkdir()
    for s in ("site-a", "site-b"):
        (sites / f"{s}.yaml").write_text(f"site_id: {s}\nname: {s}\n")
    (tmp_path / "settings.yaml").write_text(f"storage: {{kind: s3, endpoint: 'http://x', secrets_dir: secrets}}\n"
                                            f"sites_dir: {sites}\n")
    out = tmp_path / "s3.json"
    assert main(["storage", "identities", "--config", str(tmp_path / "settings.yaml"), "--out", str(out)]) == 0
    first = {i["name"]: i["credentials"][0]["accessKey"] for i in json.loads(out.read_text())["identities"]}
    assert set(first) == {"storage-admin", "pipeline", "site-a", "site-b", "query-site-a", "query-site-b"}
    (tmp_path / "secrets" / "site-b.json").unlink()  # rotate site-b only
    assert main(["storage", "identities", "--config", str(tmp_path / "settings.yaml"), "--out", str(out)]) == 0
    second = {i["name"]: i["credentials"][0]["accessKey"] for i in json.loads(out.read_text())["identities"]}
    assert second["site-b"] != first["site-b"]
    assert {k: v for k, v in second.items() if k != "site-b"} == {k: v for k, v in first.items() if k != "site-b"}


def test_compose_writes_reports_and_audit_on_a_volume_not_next_to_the_read_only_settings() -> None:
    from pathlib import Path

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    settings = yaml.safe_load((PROJECT_ROOT / "infra" / "settings.compose.yaml").read_text())  # container paths
    for name in ("airflow-scheduler", "airflow-apiserver", "airflow-dag-processor", "airflow-triggerer"):
        mounts = [v.split(":") for v in compose["services"][name]["volumes"]]
        writable = {target for source, target, *mode in mounts if mode != ["ro"]}
        for path in (Path(settings["report_dir"]), Path(settings["audit_log"])):
            assert path.is_absolute() and any(str(path).startswith(t + "/") for t in writable), (name, path)
            source = next(s for s, t, *_ in mounts if str(path).startswith(t + "/"))
            assert source in compose["volumes"], f"{path} is on {source}, not a named volume"


def test_the_settings_reference_names_every_key() -> None:
    from federation.settings import Settings

    text = (PROJECT_ROOT / "docs" / "operations.md").read_text(encoding="utf-8").split("## Settings reference")[1]
    keys = [f"`{k}`" for k in Settings.model_fields if k != "storage"]
    keys += [f"`storage.{k}`" for k in StorageConfig.model_fields]
    missing = [k for k in keys if f"| {k} |" not in text]
    assert not missing, f"docs/operations.md, Settings reference, lacks {missing}"


def test_compose_gives_each_container_only_its_own_secrets() -> None:
    services = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]

    def secrets_of(name: str) -> set[str]:
        sources = [":".join(str(v).split(":")[:-2]) for v in services[name].get("volumes", [])
                   if "FEDERATION_SECRETS_DIR" in str(v)]
        assert "${FEDERATION_SECRETS_DIR:-./secrets}" not in sources, f"{name} mounts the whole secrets folder"
        return {src.split("/")[-1] for src in sources}

    for name in ("airflow-scheduler", "airflow-apiserver", "airflow-dag-processor", "airflow-triggerer"):
        assert secrets_of(name) == {"pipeline.json", "pseudonym.key", "consortium-report.token"}, name
    assert secrets_of("storage-init") == {"storage-admin.json", "pipeline.json"}
    assert secrets_of("query-service") == set()
