"""docs/operations.md, "Run it natively", performed exactly as written: its shell block runs in bash from the
checkout (with a HOME and a port base of this test's own), and the analyst's query must answer from the three
uploads that went through SeaweedFS, Airflow standalone and the pipeline, via the query service and nodes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from federation.paths import PROJECT_ROOT

pytestmark = pytest.mark.integration


def native_block() -> str:
    text = (PROJECT_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Run it natively", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the native section should have exactly one shell block"
    return blocks[0]


def _free_base() -> int:
    """A port base whose 21 ports are free now (the script refuses taken ones)."""
    for base in range(21300, 60000, 97):
        socks = []
        try:
            for p in range(base, base + 21):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


def test_the_native_section_of_the_operations_guide_works_as_written(tmp_path: Path) -> None:
    block = native_block()
    base = _free_base()
    script = block.replace("http://127.0.0.1:18320", f"http://127.0.0.1:{base + 20}")  # the port base's service
    assert script.count(str(base + 20)) == 1, "the block names the query service's port once"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDERATION_", "AIRFLOW"))}
    env.update({"HOME": str(tmp_path), "NATIVE_PORT_BASE": str(base),
                "FEDERATION_PSEUDONYM_KEY": ""})  # the script's own key file, as on a new machine
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        subprocess.run(["bash", str(PROJECT_ROOT / "infra" / "native.sh"), "stop"], env={
            **env, "FEDERATION_NATIVE": str(tmp_path / "federation-native")}, timeout=120)
        raise AssertionError("the native section did not finish in 15 minutes:\n" + out[-4000:]) from None
    native = tmp_path / "federation-native"
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in (native / "logs").glob("*.log"))
    assert proc.returncode == 0, out[-6000:] + logs[-6000:]
    assert "storage ready: 4 buckets writable" in out
    assert out.count(" published ") >= 3, out  # the uploads table
    # the analyst's answer: a count by arm from the three sites' published versions
    assert re.search(r"site-a/PONC-WT-01@v1", out) and re.search(r"site-c/PONC-WT-01@v1", out), out[-3000:]
    assert re.search(r"\bEE4A\b", out), out[-3000:]
    # everything stopped: no process of this test's state folder is left
    left = subprocess.run(["pgrep", "-f", str(native)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left running: {left}"
