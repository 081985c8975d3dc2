"""Every query is in an audit log that a rewrite cannot fool: `federation audit verify` catches an edit, a
deletion, a truncation, a reorder and a full re-chain (with or without the service's key)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federation.cli import main
from federation.node import SiteNode
from federation.query import Query, run_local
from federation.query.central.audit import GENESIS, AuditLog, _hash
from federation.settings import Settings
from federation.signing import Signer, load_or_create_signer
from federation.transport import seal
from tests.federated import STUDY


@pytest.fixture()
def service(tmp_path: Path) -> Signer:
    return load_or_create_signer(tmp_path / "state" / "service.key")


@pytest.fixture()
def logged(fresh_audit: Settings, service: Signer, tmp_path: Path) -> tuple[AuditLog, Path]:
    """Four queries in a signed log; after each, a real node handles a signed task carrying the chain head."""
    log = AuditLog(tmp_path / "state" / "audit.jsonl", signer=service)
    node = SiteNode(fresh_audit, "site-a", "http://127.0.0.1:9", "unused", service.public, tmp_path / "node.jsonl")
    for q in (Query(study_id=STUDY), Query(study_id=STUDY, group_by=["arm"]),
              Query(study_id=STUDY, group_by=["pid"]), Query(study_id=STUDY, group_by=["sex"])):
        run_local(q, fresh_audit, "alice", audit=log)
        _, sealed = seal(service, "site-a", "heads", log.head())
        node.handle(sealed)
    return log, tmp_path / "node.jsonl"


def _verify(log: AuditLog, node_log: Path) -> int:
    return main(["audit", "verify", "--log", str(log.path), "--service-key", str(log.path.parent / "service.pub"),
                 "--node-log", str(node_log)])


def _rewrite(path: Path, entries: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def test_every_query_is_logged_with_versions_and_outcome(logged: tuple[AuditLog, Path]) -> None:
    log, _ = logged
    entries = log.entries()
    assert [e["outcome"] for e in entries] == ["released", "released", "refused", "released"]
    assert all(e["analyst"] == "alice" and e["query"]["study_id"] == STUDY for e in entries)
    assert len(entries[0]["versions"]) == 6 and "never queryable" in entries[2]["reason"]
    assert all(e["signature"] for e in entries)


def test_verify_passes_on_an_intact_log(logged: tuple[AuditLog, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert _verify(*logged) == 0
    out = capsys.readouterr().out
    assert "4 entries, hash chain and signatures intact" in out and "1 node(s) all present" in out


def test_verify_catches_an_edited_entry(logged: tuple[AuditLog, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, node_log = logged
    entries = log.entries()
    entries[2]["outcome"] = "released"  # pretend the refused query was fine
    _rewrite(log.path, entries)
    assert _verify(log, node_log) == 1
    assert "entry 3): content does not match its hash (edited)" in capsys.readouterr().out


def test_verify_catches_a_deleted_entry(logged: tuple[AuditLog, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, node_log = logged
    entries = log.entries()
    del entries[1]
    _rewrite(log.path, entries)
    assert _verify(log, node_log) == 1
    assert "removed" in capsys.readouterr().out


def test_verify_catches_reordered_entries(logged: tuple[AuditLog, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, node_log = logged
    entries = log.entries()
    entries[1], entries[2] = entries[2], entries[1]
    _rewrite(log.path, entries)
    assert _verify(log, node_log) == 1
    assert "reordered" in capsys.readouterr().out


def test_verify_catches_a_truncated_log(logged: tuple[AuditLog, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, node_log = logged
    entries = log.entries()
    _rewrite(log.path, entries[:2])
    assert log.verify(log.signer.public if log.signer else None) == []  # a truncated chain is still a valid chain
    assert _verify(log, node_log) == 1  # ... but the node saw entry 4
    assert "saw entry 4, which the log no longer has (truncated)" in capsys.readouterr().out


def _rechain(entries: list[dict[str, object]], signer: Signer | None) -> list[dict[str, object]]:
    prev = GENESIS
    out = []
    for e in entries:
        e = {k: v for k, v in e.items() if k not in ("hash", "signature")}
        e["prev"] = prev
        e["hash"] = _hash(e)
        if signer is not None:
            e["signature"] = signer.sign(str(e["hash"]).encode())
        prev = str(e["hash"])
        out.append(e)
    return out


def test_verify_catches_a_full_rechain_without_the_key(logged: tuple[AuditLog, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    log, node_log = logged
    entries = log.entries()
    entries[2]["outcome"] = "released"
    forged = _rechain(entries, load_or_create_signer(tmp_path / "other.key"))  # signed, with another key
    _rewrite(log.path, forged)
    assert AuditLog(log.path).verify() == []  # the chain alone is consistent: this is what used to pass
    assert _verify(log, node_log) == 1
    assert "not signed by the query service's key" in capsys.readouterr().out


def test_verify_catches_a_full_rechain_with_a_stolen_key(logged: tuple[AuditLog, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    log, node_log = logged
    assert log.signer is not None
    entries = log.entries()
    del entries[1]  # drop a query from the history, renumber, re-chain and re-sign with the real key
    for i, e in enumerate(entries, start=1):
        e["id"] = i
    _rewrite(log.path, _rechain(entries, log.signer))
    assert log.verify(log.signer.public) == []  # chain and signatures are consistent ...
    assert _verify(log, node_log) == 1  # ... but not with the heads the node recorded
    out = capsys.readouterr().out
    assert "(rewritten)" in out or "(truncated)" in out


def test_offline_verify_needs_the_pinned_key(logged: tuple[AuditLog, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, _ = logged
    assert main(["audit", "verify", "--log", str(log.path)]) == 2
    assert "give --service-key" in capsys.readouterr().err
