"""`federation storage init` on local storage, and its answer when storage cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federation.cli import main


def test_init_creates_the_local_buckets_and_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "settings.yaml").write_text("storage: {kind: local, root: store}\n")
    assert main(["storage", "init", "--config", str(tmp_path / "settings.yaml")]) == 0
    out = capsys.readouterr().out
    assert "storage ready: 4 buckets writable (landing, reports, harmonized, pipeline created)" in out
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["harmonized", "landing", "pipeline", "reports"]
    assert not list((tmp_path / "store").rglob("*init-probe*"))  # the probes are removed
    assert main(["storage", "init", "--config", str(tmp_path / "settings.yaml")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("storage ready: 4 buckets writable")


def test_init_says_what_failed_when_storage_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for identity in ("storage-admin", "pipeline"):
        (secrets / f"{identity}.json").write_text(json.dumps({"access_key": identity, "secret_key": "x" * 20}))
    (tmp_path / "settings.yaml").write_text(
        f"storage: {{kind: s3, endpoint: 'http://127.0.0.1:9', secrets_dir: {secrets}}}\n")
    assert main(["storage", "init", "--config", str(tmp_path / "settings.yaml"), "--wait", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not create bucket landing as storage-admin: storage at http://127.0.0.1:9")
    assert "Traceback" not in err
