"""Append-only audit log of every query, released or refused, that a rewrite cannot fool.

One JSON line per entry. Each entry carries the hash of the previous entry (`prev`), its own sha256 over
its content and `prev` (a hash chain), and the query service's Ed25519 signature of that hash. Editing,
deleting or reordering an entry breaks the chain; re-chaining the whole log needs the service's private
key. The chain head (id and hash of the last entry) travels with every task the service sends, and every
site node records the heads it saw: a log that was truncated, or rewritten and re-signed with a stolen
key, no longer holds the heads the nodes witnessed. `verify` checks all three. Appends take an exclusive
lock on the file, so concurrent queries cannot interleave entries.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from federation.signing import Signer, Verifier

GENESIS = "0" * 64


class Head(BaseModel):
    """The last entry of the log as one party saw it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: int
    hash: str


@dataclass(frozen=True)
class Witness:
    """Heads one site node recorded (from its own node log)."""

    node: str
    heads: list[Head]


def _hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path, signer: Signer | None = None) -> None:
        self.path = path
        self.signer = signer
        self._lock = threading.Lock()
        self._head: Head | None = None

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append `record` (analyst, query, versions, outcome, ...) and return the stored entry with its id."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            last = self._last_entry(fh)
            entry = {"id": (last["id"] + 1) if last else 1,
                     "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                     **record, "prev": last["hash"] if last else GENESIS}
            entry["hash"] = _hash(entry)
            if self.signer is not None:
                entry["signature"] = self.signer.sign(entry["hash"].encode())
            fh.seek(0, os.SEEK_END)
            fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            fcntl.flock(fh, fcntl.LOCK_UN)
            self._head = Head(id=entry["id"], hash=entry["hash"])
        return entry

    @staticmethod
    def _last_entry(fh: Any) -> dict[str, Any] | None:
        """The last entry, read from the end of the file (appends stay fast as the log grows)."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        block = 65536
        while True:
            start = max(0, size - block)
            fh.seek(start)
            lines = [line for line in fh.read().splitlines() if line.strip()]
            if lines and (start == 0 or len(lines) > 1):
                return json.loads(lines[-1])  # type: ignore[no-any-return]
            if start == 0:
                return None
            block *= 4

    def head(self) -> Head:
        """The current chain head (id 0 and the genesis hash for an empty log)."""
        if self._head is None:
            if not self.path.exists():
                return Head(id=0, hash=GENESIS)
            with self.path.open("r", encoding="utf-8") as fh:
                last = self._last_entry(fh)
            self._head = Head(id=last["id"], hash=last["hash"]) if last else Head(id=0, hash=GENESIS)
        return self._head

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def verify(self, public_key: Verifier | None = None, witnesses: Iterable[Witness] = ()) -> list[str]:
        """Problems found in the chain, its signatures and against the heads nodes witnessed; empty if intact."""
        problems = []
        prev, expected_id = GENESIS, 1
        entries = self.entries()
        for n, entry in enumerate(entries, start=1):
            if entry.get("id") != expected_id:
                problems.append(f"line {n}: entry id {entry.get('id')} where {expected_id} was expected "
                                "(an entry was removed or the order changed)")
            if entry.get("prev") != prev:
                problems.append(f"line {n} (entry {entry.get('id')}): does not follow the entry before it "
                                "(removed, inserted or reordered entries)")
            if _hash(entry) != entry.get("hash"):
                problems.append(f"line {n} (entry {entry.get('id')}): content does not match its hash (edited)")
            if public_key is not None and not public_key.verify(str(entry.get("hash", "")).encode(),
                                                                str(entry.get("signature", ""))):
                problems.append(f"line {n} (entry {entry.get('id')}): not signed by the query service's key "
                                "(written or re-chained by someone else)")
            prev = entry.get("hash", "")
            expected_id = (entry.get("id") or expected_id) + 1
        by_id = {e.get("id"): e.get("hash") for e in entries}
        for w in witnesses:
            for h in w.heads:
                if h.id == 0:
                    continue
                if h.id not in by_id:
                    problems.append(f"node {w.node} saw entry {h.id}, which the log no longer has (truncated)")
                elif by_id[h.id] != h.hash:
                    problems.append(f"node {w.node} saw entry {h.id} with hash {h.hash[:12]}..., the log has "
                                    f"{str(by_id[h.id])[:12]}... (rewritten)")
        return problems


@dataclass(frozen=True)
class AuditSummary:
    entries: int
    released: int
    refused: int


def summarize(log: AuditLog) -> AuditSummary:
    e = log.entries()
    return AuditSummary(len(e), sum(1 for x in e if x.get("outcome") == "released"),
                        sum(1 for x in e if x.get("outcome") == "refused"))
