"""The query service: the HTTP API analysts, auditors, admins and site nodes talk to (FastAPI, OpenAPI
docs at /docs).

It holds the disclosure policy, the query history of all analysts and the signed audit log, in its state
folder, and no credential for any site's data: every number comes from a site node's summary. Identity
comes from the bearer token only; no endpoint takes an analyst's name.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Query as Param
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from federation.query.central.audit import AuditLog, Head, Witness
from federation.query.central.runner import run_query
from federation.query.model import Query
from federation.query.policy import QueryPolicy, load_query_policy
from federation.query.site.partial import SiteReply
from federation.service.broker import Failure, NodeBroker
from federation.service.users import Principal, UserStore
from federation.signing import load_or_create_signer
from federation.transport import UploadStatus, seal_head

log = logging.getLogger("federation.service")
MAX_REQUEST_BYTES = 256 * 1024
MAX_REPLY_BYTES = 64 * 1024 * 1024


@dataclass
class ServiceState:
    """Everything the service keeps, in one folder: its key, users, audit log; and its policy file."""

    state_dir: Path
    policy_path: Path
    reply_timeout: float = 60.0
    poll_wait: float = 20.0

    def __post_init__(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.signer = load_or_create_signer(self.state_dir / "service.key")
        self.users = UserStore(self.state_dir / "users.sqlite")
        self.audit = AuditLog(self.state_dir / "audit.jsonl", signer=self.signer)
        self.policy: QueryPolicy = load_query_policy(self.policy_path)
        self._analyst_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self.poll_limiter = anyio.CapacityLimiter(500)  # node long polls never wait behind analysts' queries
        self.broker = NodeBroker(self.signer, self.audit.head, self.users.node_sites,
                                 reply_timeout=self.reply_timeout, poll_wait=self.poll_wait)


    def analyst_lock(self, name: str) -> threading.Lock:
        """One query at a time per analyst: the differencing guard must see the analyst's previous result."""
        with self._locks_guard:
            return self._analyst_locks[name]


class NodeReply(BaseModel):
    """What a node posts back for one task: its summaries, the audit heads it recorded, or why it could not."""

    model_config = ConfigDict(extra="forbid")
    reply: SiteReply | None = None
    heads: list[Head] | None = None
    uploads: list[UploadStatus] | None = None
    error: str = Field(default="", max_length=2000)

    def payload(self) -> Any:
        for value in (self.reply, self.heads, self.uploads):
            if value is not None:
                return value
        return None


class BodyLimit:
    """Refuse request bodies over the limit (413) or of unknown length (411) before reading them.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide client disconnects from the long
    polls, so a node that went away would count as connected until its poll timed out."""

    def __init__(self, app: Any, users: UserStore) -> None:
        self.app = app
        self.users = users

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            limit = MAX_REQUEST_BYTES
            if scope["path"].startswith("/v1/node/"):  # a node's large reply is read only for a node's token
                auth = headers.get(b"authorization", b"").decode("latin-1")
                who = self.users.authenticate(auth.removeprefix("Bearer ").strip()) if auth.startswith(
                    "Bearer ") else None
                limit = MAX_REPLY_BYTES if who is not None and who.role == "node" else MAX_REQUEST_BYTES
            length = headers.get(b"content-length", b"").decode("latin-1")
            response = None
            if not length.isdigit():
                response = JSONResponse(status_code=411, content={"detail": "send a Content-Length header"})
            elif int(length) > limit:
                response = JSONResponse(status_code=413, content={"detail": f"request larger than {limit} bytes"})
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_bearer = HTTPBearer(auto_error=False)


async def principal(request: Request,
                    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """The caller, from the bearer token only."""
    users: UserStore = request.app.state.service.users
    if creds is None or not creds.credentials:
        raise HTTPException(401, "missing token: send 'Authorization: Bearer <token>' (ask an admin for one: "
                                 "federation users add NAME --role ROLE)", headers={"WWW-Authenticate": "Bearer"})
    who = users.authenticate(creds.credentials)
    if who is None:
        revoked = users.is_revoked(creds.credentials)
        raise HTTPException(401, "this token has been revoked; ask an admin for a new one" if revoked
                            else "unknown token; check FEDERATION_TOKEN or your credentials file",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


class role:  # noqa: N801 - reads as a dependency: Depends(role("analyst"))
    """A dependency that admits only callers with one of the given roles (403 otherwise)."""

    def __init__(self, *allowed: str) -> None:
        self.allowed = allowed

    async def __call__(self, who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role not in self.allowed:
            raise HTTPException(403, f"{who.name} is a {who.role}; this needs the role {' or '.join(self.allowed)}")
        return who


def create_app(state: ServiceState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 200  # long polls each hold a thread
        yield

    app = FastAPI(title="federation query service", version="1", lifespan=lifespan,
                  description="Aggregate questions across the consortium's sites, answered from site nodes' "
                              "summaries with disclosure control; every query is audited.")
    app.state.service = state

    app.add_middleware(BodyLimit, users=state.users)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal error; the service log has the details"})

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/v1/whoami")
    def whoami(who: Annotated[Principal, Depends(principal)]) -> dict[str, Any]:
        return {"name": who.name, "role": who.role, "site": who.site}

    @app.get("/v1/service-key", response_model=None)
    def service_key() -> dict[str, str]:
        return {"public_key_pem": state.signer.public.pem().decode()}

    @app.post("/v1/queries")
    def ask(q: Query, who: Annotated[Principal, Depends(role("analyst"))]) -> dict[str, Any]:
        """Ask an aggregate question; the answer is released or refused, and audited either way."""
        lock = state.analyst_lock(who.name)  # the history run_query reads must include the analyst's last result
        if not lock.acquire(blocking=False):
            raise HTTPException(409, "you already have a query running; ask again when it has answered")
        try:
            return run_query(q, state.broker, state.policy, state.audit, who.name).to_dict()
        finally:
            lock.release()

    @app.get("/v1/queries")
    def my_queries(who: Annotated[Principal, Depends(role("analyst"))]) -> list[dict[str, Any]]:
        """Your own earlier queries and their outcomes."""
        return [{k: e.get(k) for k in ("id", "time", "query", "outcome", "reason", "versions")}
                for e in state.audit.entries() if e.get("analyst") == who.name]

    @app.get("/v1/audit")
    def audit_entries(who: Annotated[Principal, Depends(role("auditor"))]) -> list[dict[str, Any]]:
        return state.audit.entries()

    @app.get("/v1/audit/verify")
    def audit_verify(who: Annotated[Principal, Depends(role("auditor"))]) -> dict[str, Any]:
        """Chain, signatures, and the heads each connected node recorded (relayed by this service)."""
        sites = [s for s in state.users.node_sites() if state.broker.connected(s)]
        heads = state.broker.ask_heads(sites)
        witnesses = [Witness(node=s, heads=h) for s, h in heads.items() if isinstance(h, list)]
        problems = state.audit.verify(state.signer.public, witnesses)
        return {"entries": len(state.audit.entries()), "problems": problems,
                "nodes_checked": sorted(w.node for w in witnesses),
                "nodes_unreachable": {s: h for s, h in heads.items() if isinstance(h, str)}}

    @app.get("/v1/site/uploads")
    def site_uploads(who: Annotated[Principal, Depends(role("site_coordinator"))]) -> dict[str, Any]:
        """Your site's uploads: status, rows, published version, whether a validation report exists (read the
        report itself from your site's report area: it quotes your rows, so it never passes this service)."""
        assert who.site is not None
        answer = state.broker.ask_uploads(who.site)
        if isinstance(answer, Failure):
            raise HTTPException(503, str(answer))
        return {"site": who.site, "uploads": [u.model_dump() for u in answer]}

    @app.get("/v1/users")
    def users(who: Annotated[Principal, Depends(role("admin"))]) -> list[dict[str, Any]]:
        return state.users.all()

    @app.get("/v1/nodes")
    def nodes(who: Annotated[Principal, Depends(role("admin", "auditor"))]) -> list[dict[str, Any]]:
        return state.broker.status()

    @app.get("/v1/node/tasks")
    async def node_tasks(request: Request, who: Annotated[Principal, Depends(role("node"))],
                         wait: Annotated[float, Param(ge=0, le=60)] = 20.0) -> dict[str, Any]:
        """Long poll: the signed tasks for this node's site, and the signed audit chain head."""
        assert who.site is not None
        site = who.site
        deadline = anyio.current_time() + min(wait, state.broker.poll_wait)
        tasks: list[Any] = []
        while True:  # in short slices, so that a node that went away stops counting as connected
            slice_s = max(0.0, min(0.5, deadline - anyio.current_time()))
            tasks = await anyio.to_thread.run_sync(state.broker.poll, site, slice_s, limiter=state.poll_limiter)
            if await request.is_disconnected():
                state.broker.requeue(site, tasks)  # the node went away: another poll (or the timeout) takes them
                tasks = []
                break
            if tasks or anyio.current_time() >= deadline:
                break
        return {"tasks": [sealed.model_dump() for _, sealed in tasks],
                "head": seal_head(state.signer, state.audit.head()).model_dump()}

    @app.post("/v1/node/replies/{task_id}")
    async def node_reply(task_id: str, body: NodeReply, who: Annotated[Principal, Depends(role("node"))]
                   ) -> dict[str, Any]:
        assert who.site is not None
        if body.reply is not None and body.reply.site_id != who.site:
            raise HTTPException(403, f"a node of {who.site} cannot answer for {body.reply.site_id}")
        ok = state.broker.deliver(who.site, task_id, body.payload(), body.error)
        if not ok:
            raise HTTPException(404, f"no task {task_id} is waiting for {who.site} (it timed out or was answered)")
        return {"accepted": True}

    return app

