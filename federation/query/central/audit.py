"""Append-only, tamper-evident audit log of every query, released or refused.

One JSON line per entry; each entry carries the sha256 of the previous entry
(`prev`) and its own hash over its content and `prev` (a hash chain).
Editing, deleting or reordering any entry breaks the chain from that entry
on, which `federation audit verify` reports. Appends take an exclusive lock
on the file, so concurrent queries cannot interleave entries.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append `record` (analyst, query, versions, outcome, ...) and return the stored entry with its id."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            last = None
            for line in fh:
                if line.strip():
                    last = json.loads(line)
            entry = {"id": (last["id"] + 1) if last else 1,
                     "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                     **record, "prev": last["hash"] if last else GENESIS}
            entry["hash"] = _hash(entry)
            fh.seek(0, 2)
            fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def verify(self) -> list[str]:
        """Problems found in the chain; empty when the log is intact."""
        problems = []
        prev, expected_id = GENESIS, 1
        for n, entry in enumerate(self.entries(), start=1):
            if entry.get("id") != expected_id:
                problems.append(f"line {n}: entry id {entry.get('id')} where {expected_id} was expected "
                                "(an entry was removed or the order changed)")
            if entry.get("prev") != prev:
                problems.append(f"line {n} (entry {entry.get('id')}): does not follow the entry before it "
                                "(removed, inserted or reordered entries)")
            if _hash(entry) != entry.get("hash"):
                problems.append(f"line {n} (entry {entry.get('id')}): content does not match its hash (edited)")
            prev = entry.get("hash", "")
            expected_id = (entry.get("id") or expected_id) + 1
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
