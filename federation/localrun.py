"""Run the query service and one node per site as local processes on 127.0.0.1 (demo, tests, benchmarks).

`LocalFederation` is what `federation serve` plus `federation node` look like on one machine: the
service in its own process with an environment stripped of every storage credential, each node in its
own process with only its site's settings file, tokens in mode-0600 files. It stops them all on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from federation.exceptions import FederationError
from federation.service.users import UserStore

CREDENTIAL_ENV_PREFIXES = ("FEDERATION_S3_", "FEDERATION_CONFIG", "AWS_", "FEDERATION_PSEUDONYM_KEY")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_secret(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any storage credential or settings file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CREDENTIAL_ENV_PREFIXES)}
    env.update(extra or {})
    return env


class LocalFederation:
    """The service and the nodes of `node_settings` (site -> that node's settings YAML)."""

    def __init__(self, workdir: Path, node_settings: dict[str, Path], *, policy: Path | None = None,
                 reply_timeout: float = 30.0, poll_wait: float = 10.0, analysts: tuple[str, ...] = ("analyst",)
                 ) -> None:
        self.workdir = workdir.resolve()
        self.state = self.workdir / "service-state"
        self.node_settings = {site: path.resolve() for site, path in node_settings.items()}
        self.policy = policy
        self.reply_timeout = reply_timeout
        self.poll_wait = poll_wait
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens: dict[str, Path] = {}
        self.service: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.analysts = analysts
        self.logs = self.workdir / "logs"

    # ---- users ------------------------------------------------------------------------------------------
    def add_user(self, name: str, role: str, site: str | None = None) -> Path:
        token = UserStore(self.state / "users.sqlite").add(name, role, site)
        self.tokens[name] = write_secret(self.workdir / "tokens" / name, token)
        return self.tokens[name]

    def token(self, name: str) -> str:
        return self.tokens[name].read_text().strip()

    # ---- processes --------------------------------------------------------------------------------------
    def _spawn(self, args: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{log_name}.log").open("ab")
        return subprocess.Popen([sys.executable, "-m", "federation.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=self.workdir)

    def start_service(self) -> None:
        args = ["serve", "--state", str(self.state), "--port", str(self.port), "--reply-timeout",
                str(self.reply_timeout)]
        if self.policy:
            args += ["--policy", str(self.policy)]
        self.service = self._spawn(args, "service", clean_env())
        self._wait(lambda: httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200, "the query service",
                   self.service)

    def start_node(self, site: str) -> None:
        args = ["node", "--site", site, "--server", self.url, "--service-key", str(self.state / "service.pub"),
                "--token-file", str(self.tokens[f"node-{site}"]), "--config", str(self.node_settings[site]),
                "--log", str(self.workdir / "node-logs" / f"{site}.jsonl"), "--poll-wait", str(self.poll_wait)]
        self.nodes[site] = self._spawn(args, f"node-{site}", clean_env())

    def stop_node(self, site: str) -> None:
        self._stop([self.nodes.pop(site)])

    @staticmethod
    def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_for_nodes(self, sites: list[str] | None = None, timeout: float = 60.0) -> None:
        wanted = set(sites or self.nodes)
        headers = {"Authorization": f"Bearer {self.token('admin')}"}

        def ready() -> bool:
            for site, proc in self.nodes.items():
                if proc.poll() is not None:
                    raise FederationError(f"the node of {site} exited with code {proc.returncode}; see "
                                          f"{self.logs / f'node-{site}.log'}")
            r = httpx.get(f"{self.url}/v1/nodes", headers=headers, timeout=5)
            r.raise_for_status()
            return wanted <= {s["site"] for s in r.json() if s["connected"]}

        self._wait(ready, f"the nodes of {', '.join(sorted(wanted))}", None, timeout)

    def _wait(self, ok: object, what: str, proc: subprocess.Popen[bytes] | None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise FederationError(f"{what} exited with code {proc.returncode}; see {self.logs}")
            try:
                if ok():  # type: ignore[operator]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise FederationError(f"{what} did not become ready within {timeout:g} s; see {self.logs}")

    def start(self) -> LocalFederation:
        self.state.mkdir(parents=True, exist_ok=True)
        if not (self.state / "users.sqlite").exists():
            self.add_user("admin", "admin")
            self.add_user("auditor", "auditor")
            for name in self.analysts:
                self.add_user(name, "analyst")
            for site in self.node_settings:
                self.add_user(f"node-{site}", "node", site)
        try:
            self.start_service()
            for site in self.node_settings:
                self.start_node(site)
            self.wait_for_nodes()
        except BaseException:
            self.stop()  # never leave processes behind when starting fails
            raise
        return self

    def restart_service(self) -> None:
        assert self.service is not None
        self._stop([self.service])
        self.start_service()

    def stop(self) -> None:
        nodes, self.nodes = list(self.nodes.values()), {}
        self._stop(nodes)
        if self.service is not None:
            self._stop([self.service])
            self.service = None

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
