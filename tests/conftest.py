from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

AS_OF = dt.date(2025, 6, 30)


@pytest.fixture(scope="session")
def as_of() -> dt.date:
    return AS_OF


@pytest.fixture(scope="session")
def clean_exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean synthetic exports of all six site styles (PONC-WT-01)."""
    from federation.synth import synthesize

    out = tmp_path_factory.mktemp("clean")
    synthesize(out, 6, "PONC-WT-01", 60, AS_OF, seed=3)
    return out


@pytest.fixture()
def export(clean_exports: Path, tmp_path: Path) -> Path:
    """A copy of site-a's clean PONC-WT-01 export that a test may change."""
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(clean_exports / "site-a" / "PONC-WT-01", folder)
    return folder


@pytest.fixture(scope="session")
def broken_exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exports of all six site styles with every error kind injected (PONC-NB-02)."""
    from federation.synth import synthesize

    out = tmp_path_factory.mktemp("broken")
    synthesize(out, 6, "PONC-NB-02", 120, AS_OF, seed=5, error_sites=["all"])
    return out


@pytest.fixture(scope="session")
def broken_exports_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exports of all six site styles of a dictionary v2 study (PONC-NB-03) with every error kind injected."""
    from federation.synth import synthesize

    out = tmp_path_factory.mktemp("broken-v2")
    synthesize(out, 6, "PONC-NB-03", 100, AS_OF, seed=6, error_sites=["all"])
    return out


SITES = ["site-a", "site-b", "site-c", "site-d", "site-e", "site-f"]
BUCKETS = ["landing", "reports", "harmonized", "pipeline"]


class Seaweed:
    """A running SeaweedFS with one identity per site, the pipeline and per-site query identities."""

    def __init__(self, workdir: Path) -> None:
        from federation.storage import StorageConfig
        from federation.storage.identities import new_secrets, render_seaweedfs
        from federation.storage.seaweed import SeaweedServer

        self.workdir = workdir
        self.cfg = StorageConfig(kind="s3", secrets_dir=workdir / "secrets")
        self.creds = new_secrets(SITES, self.cfg, workdir / "secrets")
        identities = workdir / "s3.json"
        identities.write_text(render_seaweedfs(SITES, self.cfg, self.creds))
        self.server = SeaweedServer(workdir, identities, BUCKETS, ready_check=self._ready)

    def _ready(self, endpoint: str) -> bool:
        from federation.storage import open_store

        store = open_store(self.cfg.model_copy(update={"endpoint": endpoint}), "pipeline")
        store.list("pipeline/")
        return True

    def start(self) -> Seaweed:
        self.server.start()
        self.cfg = self.cfg.model_copy(update={"endpoint": self.server.endpoint})
        return self

    def store(self, identity: str = "pipeline"):  # type: ignore[no-untyped-def]
        from federation.storage import open_store

        return open_store(self.cfg, identity)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real SeaweedFS on 127.0.0.1 (free ports), for the whole test session."""
    sw = Seaweed(tmp_path_factory.mktemp("seaweed")).start()
    yield sw
    sw.server.stop()


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDERATION_PSEUDONYM_KEY", "test-consortium-key-0123456789")


@pytest.fixture(autouse=True)
def _package_registry():  # type: ignore[no-untyped-def]
    """Each test starts and ends on the package's example registry (loading settings with a registry_dir
    activates that registry for the process)."""
    from federation.schema import use_registry

    use_registry(None)
    yield
    use_registry(None)


@pytest.fixture()
def fresh_seaweed(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A SeaweedFS of this test's own (empty), for tests that need a clean catalog."""
    sw = Seaweed(tmp_path / "seaweed").start()
    yield sw
    sw.server.stop()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clean_exports: Path):  # type: ignore[no-untyped-def]
    """Pipeline settings on an empty local store, or on an empty real SeaweedFS."""
    from federation.settings import Settings
    from federation.storage import StorageConfig

    if request.param == "local":
        cfg = StorageConfig(kind="local", root=tmp_path / "storage")
    else:
        cfg = request.getfixturevalue("fresh_seaweed").cfg
    return Settings(storage=cfg, sites_dir=clean_exports / "sites")


from tests.federated import federated, federated_nodes, federated_settings_file, fresh_audit, nb03  # noqa: E402,F401
