"""The node gateway of the query service: tasks wait here until their site's node pulls them.

Nodes connect outbound only: each long-polls `GET /v1/node/tasks` and posts each reply back. `ask` seals
one task per site (signed, with the audit chain head), queues it for that site's node and waits for the
replies. A site whose node has not polled recently is reported at once as not connected; a node that
takes a task and does not answer in time (it crashed or restarted) is reported for that site, so a query
fails cleanly or, with allow_partial, goes on without it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from federation.query.central.audit import Head
from federation.query.site.partial import SiteReply, SiteTask
from federation.signing import Signer
from federation.transport import Kind, Sealed, UploadStatus, seal

_REPLY_KINDS: dict[str, Callable[[Any], bool]] = {
    "summaries": lambda r: isinstance(r, SiteReply),
    "heads": lambda r: isinstance(r, list) and all(isinstance(h, Head) for h in r),
    "uploads": lambda r: isinstance(r, list) and all(isinstance(u, UploadStatus) for u in r),
}


CONNECTED_WITHIN_S = 5.0


class Failure(str):
    """Why a site gave no reply (a str, so callers that only need the text can treat it as one)."""


@dataclass
class Pending:
    site: str
    kind: str
    picked: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    reply: Any = None
    error: str = ""


class NodeBroker:
    def __init__(self, signer: Signer, head: Callable[[], Head], node_sites: Callable[[], list[str]],
                 reply_timeout: float = 60.0, poll_wait: float = 20.0, pickup_timeout: float = 5.0) -> None:
        self.signer = signer
        self.head = head
        self.node_sites = node_sites
        self.reply_timeout = reply_timeout
        self.poll_wait = poll_wait
        self.pickup_timeout = pickup_timeout
        self._cv = threading.Condition()
        self._queues: dict[str, list[tuple[str, Sealed]]] = defaultdict(list)
        self._pending: dict[str, Pending] = {}
        self._last_poll: dict[str, float] = {}
        self._polling: dict[str, int] = defaultdict(int)

    # ---- the SiteGateway of the central runner -------------------------------------------------------
    def candidate_sites(self, study_id: str) -> list[str]:
        return self.node_sites()

    def connected(self, site: str) -> bool:
        with self._cv:
            return self._connected(site)

    def _connected(self, site: str) -> bool:
        """Polling now, or polled within the last few seconds (call with the lock held)."""
        return self._polling[site] > 0 or time.time() - self._last_poll.get(site, 0) < CONNECTED_WITHIN_S

    def ask(self, tasks: dict[str, SiteTask]) -> dict[str, SiteReply | str]:
        return self._ask({s: ("summaries", t) for s, t in tasks.items()})  # type: ignore[return-value]

    def ask_heads(self, sites: list[str]) -> dict[str, list[Head] | str]:
        return self._ask({s: ("heads", None) for s in sites})  # type: ignore[return-value]

    def ask_uploads(self, site: str) -> list[UploadStatus] | Failure:
        """A site's upload statuses (counts and messages, no patient data), from its node."""
        return self._ask({site: ("uploads", None)})[site]  # type: ignore[no-any-return]

    def _ask(self, tasks: dict[str, tuple[Kind, SiteTask | None]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        waiting: dict[str, str] = {}
        head = self.head()
        known = set(self.node_sites())
        with self._cv:
            for site, (kind, task) in tasks.items():
                if site not in known:
                    out[site] = Failure(f"no node is registered for {site}")
                    continue
                if not self._connected(site):
                    out[site] = Failure(f"the node of {site} is not connected")
                    continue
                task_id, sealed = seal(self.signer, site, kind, head, task)
                self._pending[task_id] = Pending(site, kind)
                self._queues[site].append((task_id, sealed))
                waiting[site] = task_id
            self._cv.notify_all()
        start = time.monotonic()
        for site, task_id in waiting.items():
            p = self._pending[task_id]
            picked = p.picked.wait(max(0.0, start + self.pickup_timeout - time.monotonic()))
            if picked:
                p.done.wait(max(0.0, start + self.reply_timeout - time.monotonic()))
            with self._cv:
                self._pending.pop(task_id, None)
                self._queues[site] = [(t, s) for t, s in self._queues[site] if t != task_id]
            if not picked and not p.done.is_set():
                out[site] = Failure(f"the node of {site} is not connected (it did not pick up the task)")
            elif not p.done.is_set():
                out[site] = Failure(f"the node of {site} did not answer within {self.reply_timeout:g} s")
            elif p.error:
                out[site] = Failure(p.error)
            else:
                out[site] = p.reply
        return out

    # ---- the node side ---------------------------------------------------------------------------------
    def poll(self, site: str, wait: float) -> list[tuple[str, Sealed]]:
        """Tasks for `site` (id and sealed task), waiting up to `wait` seconds for one to arrive."""
        deadline = time.monotonic() + min(wait, self.poll_wait)
        with self._cv:
            self._polling[site] += 1
            try:
                while not self._queues[site]:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                tasks, self._queues[site] = self._queues[site], []
                for task_id, _ in tasks:
                    if task_id in self._pending:
                        self._pending[task_id].picked.set()
            finally:
                self._polling[site] -= 1
                self._last_poll[site] = time.time()
        return tasks

    def requeue(self, site: str, tasks: list[tuple[str, Sealed]]) -> None:
        """Put back tasks a poll took but could not hand over (its node went away)."""
        with self._cv:
            waiting = [(t, s) for t, s in tasks if t in self._pending]
            for task_id, _ in waiting:
                self._pending[task_id].picked.clear()
            self._queues[site][:0] = waiting
            self._cv.notify_all()

    def deliver(self, site: str, task_id: str, reply: Any = None, error: str = "") -> bool:
        """A node's reply; False when no such task waits for this node (late, unknown or another site's)."""
        with self._cv:
            p = self._pending.get(task_id)
            if p is None or p.site != site:
                return False
            if not error and not _REPLY_KINDS[p.kind](reply):
                reply, error = None, f"the node of {site} sent a reply of the wrong kind"
            p.reply, p.error = reply, error
            p.done.set()
        return True

    def status(self) -> list[dict[str, Any]]:
        with self._cv:
            return [{"site": s, "connected": self._connected(s), "last_poll": self._last_poll.get(s)}
                    for s in self.node_sites()]
