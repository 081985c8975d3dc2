"""The site node: a long-running process at (or for) one site, the only holder of that site's read
credential for its harmonized data.

It connects outbound only: it long-polls the query service for tasks with its own node token, accepts a
task only if the service signed it, it is for this site, fresh and not seen before (`federation.transport`),
answers it with the site part of the query code (`federation.query.site`: summaries only, the site's own
thresholds and guards) and posts the reply. Every accepted, answered and rejected task, and every audit
chain head the service showed it, goes into the node's own append-only, hash-chained log, which an
auditor compares with the service's audit log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from federation.exceptions import ConfigurationError
from federation.query.central.audit import Head
from federation.query.site.partial import answer_task, site_error
from federation.settings import Settings
from federation.signing import Verifier
from federation.storage.identities import query_identity
from federation.transport import (
    CLOCK_SKEW_S,
    TASK_LIFETIME_S,
    ReplayGuard,
    Sealed,
    TaskRejected,
    UploadStatus,
    open_head,
    open_task,
)

log = logging.getLogger("federation.node")


class NodeLog:
    """The node's own append-only log: one hash-chained JSON line per event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        entries = self.entries()
        self._prev = entries[-1]["hash"] if entries else "0" * 64
        heads = [Head.model_validate(e["head"]) for e in entries if e.get("event") == "head"]
        self._last_head = heads[-1] if heads else None

    def append(self, event: str, **fields: Any) -> None:
        with self._lock:
            entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"), "event": event, **fields,
                     "prev": self._prev}
            entry["hash"] = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._prev = entry["hash"]

    def saw_head(self, head: Head) -> None:
        """Record a chain head of the service's audit log, once per new head."""
        with self._lock:
            if self._last_head == head:
                return
            self._last_head = head
        self.append("head", head=head.model_dump())

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def heads(self) -> list[Head]:
        return [Head.model_validate(e["head"]) for e in self.entries() if e.get("event") == "head"]


class SiteNode:
    def __init__(self, settings: Settings, site_id: str, server: str, token: str, service_key: Verifier,
                 log_path: Path, *, poll_wait: float = 20.0, workers: int = 4, allow_http: bool = False) -> None:
        url = urlparse(server)
        if url.scheme != "https" and not (allow_http or url.hostname in ("127.0.0.1", "localhost", "::1")):
            raise ConfigurationError(f"{server}: the node sends its token and per-site counts to the service; use "
                                     "https (or --allow-insecure-http inside a private network)")
        self.settings = settings
        self.site_id = site_id
        self.server = server.rstrip("/")
        self.service_key = service_key
        self.log = NodeLog(log_path)
        self.replay = ReplayGuard()
        self._remember_recent_tasks()
        self.poll_wait = poll_wait
        self.http = httpx.Client(base_url=self.server, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(poll_wait + 15.0, connect=5.0))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"node-{site_id}")

    def _remember_recent_tasks(self) -> None:
        """After a restart, tasks answered within their lifetime stay refused as replays."""
        now = dt.datetime.now(dt.UTC)
        for e in self.log.entries():
            if e.get("event") == "accepted" and e.get("task_id"):
                at = dt.datetime.fromisoformat(e["time"])
                if (now - at).total_seconds() < TASK_LIFETIME_S + CLOCK_SKEW_S:
                    self.replay.remember(e["task_id"], at.timestamp() + TASK_LIFETIME_S)

    def handle(self, sealed: Sealed) -> tuple[str, dict[str, Any]]:
        """Verify and answer one task: (task id, the body to post back). Never raises for a bad task."""
        try:
            env = open_task(self.service_key, sealed, self.site_id, self.replay)
        except TaskRejected as exc:
            task_id = _loose_task_id(sealed.envelope)
            self.log.append("rejected", task_id=task_id, reason=exc.reason)
            log.warning("rejected task %s: %s", task_id, exc.reason)
            return task_id, {"error": f"rejected by the node of {self.site_id}: {exc.reason}"}
        self.log.append("accepted", task_id=env.task_id, kind=env.kind)
        self.log.saw_head(env.audit_head)
        if env.kind == "heads":
            heads = self.log.heads()
            self.log.append("answered", task_id=env.task_id, kind="heads", n=len(heads))
            return env.task_id, {"heads": [h.model_dump() for h in heads]}
        if env.kind == "uploads":
            return env.task_id, self._uploads(env.task_id)
        assert env.task is not None
        started = time.perf_counter()
        try:
            reply = answer_task(self.settings, self.site_id, env.task)
        except Exception as exc:  # noqa: BLE001 - reported to the service for this site, logged here
            log.warning("task %s failed: %s", env.task_id, exc)
            self.log.append("failed", task_id=env.task_id, study=env.task.study_id, error=f"{type(exc).__name__}")
            return env.task_id, {"error": site_error(exc)}
        self.log.append("answered", task_id=env.task_id, study=env.task.study_id, version=reply.version_id,
                        requests=[r.kind for r in env.task.requests], answers=[a.kind for a in reply.answers],
                        head=env.audit_head.model_dump(), ms=round((time.perf_counter() - started) * 1000, 1))
        return env.task_id, {"reply": reply.model_dump(mode="json")}

    def _uploads(self, task_id: str) -> dict[str, Any]:
        """For the site's coordinator: its uploads' statuses (counts and messages). Validation reports quote
        row values, so they never go through the service: the coordinator reads them from the site's own
        report area with the site's storage identity (`federation uploads --report`)."""
        from federation.ingest.pipeline import read_catalog
        from federation.storage import open_store

        try:
            store = open_store(self.settings.storage, query_identity(self.site_id))
            entries = read_catalog(store, self.settings, self.site_id)
            statuses = [UploadStatus(upload_id=e.upload_id, study_id=e.study_id, status=e.status,
                                     message=e.message, rows=e.rows, version_id=e.version_id,
                                     updated=e.updated, has_report=bool(e.report)).model_dump()
                        for e in entries if e.site_id == self.site_id]
            self.log.append("answered", task_id=task_id, kind="uploads", n=len(statuses))
            return {"uploads": statuses}
        except Exception as exc:  # noqa: BLE001 - reported without its text, logged here
            log.warning("uploads task %s failed: %s", task_id, exc)
            return {"error": site_error(exc)}

    def _work(self, sealed: Sealed) -> None:
        try:
            task_id, body = self.handle(sealed)
        except Exception as exc:  # noqa: BLE001 - a worker must never die silently; the service waits for a reply
            log.exception("task failed")
            task_id, body = _loose_task_id(sealed.envelope), {"error": site_error(exc)}
        if not task_id:
            return  # nothing to answer: the task named no usable id
        try:
            self.http.post(f"/v1/node/replies/{task_id}", json=body)
        except httpx.HTTPError as exc:
            log.warning("could not post the reply to task %s: %s", task_id, exc)

    def run(self, stop: threading.Event) -> int:
        """Poll for tasks until `stop` is set (or SIGTERM/SIGINT interrupt the poll); 2 when the service no longer
        accepts this node's token."""
        log.info("node of %s polling %s", self.site_id, self.server)
        self.log.append("started", site=self.site_id, server=self.server)
        try:
            code = self._poll_loop(stop)
        except KeyboardInterrupt:  # raised by the signal handler, so that a waiting long poll ends at once
            code = 0
        self.log.append("stopped", reason="asked to stop" if code == 0 else "token refused")
        self.pool.shutdown(wait=True)
        self.http.close()
        return code

    def _poll_loop(self, stop: threading.Event) -> int:
        backoff = 0.5
        while not stop.is_set():
            try:
                r = self.http.get("/v1/node/tasks", params={"wait": self.poll_wait})
            except httpx.HTTPError as exc:
                log.warning("service unreachable (%s); retrying in %.1f s", type(exc).__name__, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if r.status_code in (401, 403):
                log.error("the service refused this node's token: %s", r.text)
                return 2
            if r.status_code != 200:
                log.warning("poll answered %s; retrying", r.status_code)
                stop.wait(backoff)
                continue
            backoff = 0.5
            data = r.json()
            try:
                self.log.saw_head(open_head(self.service_key, Sealed.model_validate(data["head"])))
            except (TaskRejected, ValueError, KeyError) as exc:
                self.log.append("rejected", task_id="", reason=f"poll head: {exc}")
            for raw in data.get("tasks", []):
                try:
                    sealed = Sealed.model_validate(raw)
                except ValueError:
                    self.log.append("rejected", task_id="", reason="not a sealed task")
                    continue
                self.pool.submit(self._work, sealed)
        return 0


def _loose_task_id(text: str) -> str:
    try:
        value = json.loads(text).get("task_id", "")
        return value if isinstance(value, str) and value.isalnum() and len(value) <= 64 else ""
    except (ValueError, AttributeError):
        return ""
