"""Signed tasks from the query service to site nodes, and how a node accepts one.

The service seals each task: the envelope (task id, site, issue and expiry time, the audit chain head,
the `SiteTask`) is serialised once and signed with the service's Ed25519 key. A node verifies the
signature over those exact bytes with the public key it pinned, then checks that the task is for its
site, not expired, not from the future and not seen before (replay); anything else is rejected and logged.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federation.exceptions import FederationError
from federation.query.central.audit import Head
from federation.query.site.partial import SiteTask
from federation.signing import Signer, Verifier

TASK_LIFETIME_S = 120.0
CLOCK_SKEW_S = 30.0


class TaskRejected(FederationError):
    """A node refuses a task it cannot trust (unsigned, altered, replayed, expired or for another site)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Kind = Literal["summaries", "heads", "uploads"]


class UploadStatus(BaseModel):
    """One upload of a site as its coordinator sees it (from the catalog; no patient data)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    upload_id: str
    study_id: str = ""
    status: str
    message: str = ""
    rows: dict[str, int] = Field(default_factory=dict)
    version_id: str = ""
    updated: str = ""
    has_report: bool = False


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    site_id: str
    kind: Kind
    issued_at: float
    expires_at: float
    audit_head: Head
    task: SiteTask | None = None


class Sealed(BaseModel):
    """An envelope as signed text, and the service's signature of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    envelope: str = Field(max_length=2_000_000)
    signature: str = Field(max_length=200)


def seal(signer: Signer, site_id: str, kind: Kind, head: Head, task: SiteTask | None = None,
         lifetime: float = TASK_LIFETIME_S) -> tuple[str, Sealed]:
    now = time.time()
    env = Envelope(task_id=uuid.uuid4().hex, site_id=site_id, kind=kind, issued_at=now, expires_at=now + lifetime,
                   audit_head=head, task=task)
    text = env.model_dump_json()
    return env.task_id, Sealed(envelope=text, signature=signer.sign(text.encode()))


def seal_head(signer: Signer, head: Head) -> Sealed:
    text = head.model_dump_json()
    return Sealed(envelope=text, signature=signer.sign(text.encode()))


def open_head(verifier: Verifier, sealed: Sealed) -> Head:
    if not verifier.verify(sealed.envelope.encode(), sealed.signature):
        raise TaskRejected("the audit head is not signed by the query service")
    return Head.model_validate_json(sealed.envelope)


class ReplayGuard:
    """Task ids a node has accepted and that have not expired yet (safe for the node's worker threads)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def remember(self, task_id: str, expires_at: float) -> None:
        with self._lock:
            self._seen[task_id] = expires_at

    def first_time(self, task_id: str, expires_at: float, now: float) -> bool:
        """Record `task_id`; False when it was already recorded (a replay). One atomic step."""
        with self._lock:
            for t in [t for t, exp in self._seen.items() if exp + CLOCK_SKEW_S < now]:
                del self._seen[t]
            if task_id in self._seen:
                return False
            self._seen[task_id] = expires_at
            return True


def open_task(verifier: Verifier, sealed: Sealed, site_id: str, replay: ReplayGuard,
              now: float | None = None) -> Envelope:
    """The envelope of a task this node may run; raises TaskRejected with the reason otherwise."""
    now = time.time() if now is None else now
    if not sealed.signature or not verifier.verify(sealed.envelope.encode(), sealed.signature):
        raise TaskRejected("the task is not signed by the query service (unsigned or altered)")
    try:
        env = Envelope.model_validate_json(sealed.envelope)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TaskRejected(f"the task is not a request this node answers: {first['msg']} at "
                           f"{'.'.join(map(str, first['loc']))}") from None
    if env.site_id != site_id:
        raise TaskRejected(f"the task is for {env.site_id}, not for this node's site {site_id}")
    if env.expires_at < now:
        raise TaskRejected("the task has expired (delayed or replayed)")
    if env.issued_at > now + CLOCK_SKEW_S:
        raise TaskRejected("the task was issued in the future (check the clocks)")
    if not replay.first_time(env.task_id, env.expires_at, now):
        raise TaskRejected(f"task {env.task_id} was already answered (replayed)")
    return env
