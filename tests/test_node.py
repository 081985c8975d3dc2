"""A site node accepts only tasks the service signed, for its site, fresh and not seen before; it answers
only the summary requests of `federation.query.site.summaries` and logs every task, accepted or not."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from federation.node import SiteNode
from federation.query.central.audit import Head
from federation.query.policy import ConsortiumDisclosurePolicy
from federation.query.site.partial import SiteTask
from federation.query.site.summaries import GroupCounts, RowCount
from federation.settings import Settings
from federation.signing import Signer, load_or_create_signer
from federation.transport import Sealed, seal
from tests.federated import STUDY

HEAD = Head(id=3, hash="a" * 64)


@pytest.fixture()
def service(tmp_path: Path) -> Signer:
    return load_or_create_signer(tmp_path / "service.key")


@pytest.fixture()
def node(federated: Settings, service: Signer, tmp_path: Path) -> SiteNode:
    return SiteNode(federated, "site-a", "http://127.0.0.1:9", "unused", service.public, tmp_path / "node.jsonl")


def _task(*requests: object) -> SiteTask:
    return SiteTask(study_id=STUDY, thresholds=ConsortiumDisclosurePolicy(), requests=list(requests))  # type: ignore[arg-type]


def _events(node: SiteNode) -> list[str]:
    return [e["event"] for e in node.log.entries()]


def test_a_signed_fresh_task_is_answered_and_logged(node: SiteNode, service: Signer) -> None:
    task_id, sealed = seal(service, "site-a", "summaries", HEAD, _task(RowCount()))
    got_id, body = node.handle(sealed)
    assert got_id == task_id and body["reply"]["answers"][0]["cells"][0]["n"] > 0
    assert _events(node) == ["accepted", "head", "answered"]
    assert node.log.heads() == [HEAD]


def test_an_unsigned_task_is_refused(node: SiteNode, service: Signer) -> None:
    _, sealed = seal(service, "site-a", "summaries", HEAD, _task(RowCount()))
    _, body = node.handle(Sealed(envelope=sealed.envelope, signature=""))
    assert "not signed by the query service" in body["error"] and "reply" not in body
    assert _events(node) == ["rejected"]


def test_a_task_signed_by_another_key_is_refused(node: SiteNode, tmp_path: Path) -> None:
    _, sealed = seal(load_or_create_signer(tmp_path / "mallory.key"), "site-a", "summaries", HEAD, _task(RowCount()))
    _, body = node.handle(sealed)
    assert "not signed by the query service" in body["error"]


def test_an_altered_task_is_refused(node: SiteNode, service: Signer) -> None:
    _, sealed = seal(service, "site-a", "summaries", HEAD, _task(GroupCounts(dims=["arm"])))
    altered = sealed.envelope.replace('"dims":["arm"]', '"dims":["sex"]')
    assert altered != sealed.envelope
    _, body = node.handle(Sealed(envelope=altered, signature=sealed.signature))
    assert "unsigned or altered" in body["error"]


def test_a_replayed_task_is_refused(node: SiteNode, service: Signer) -> None:
    _, sealed = seal(service, "site-a", "summaries", HEAD, _task(RowCount()))
    assert "reply" in node.handle(sealed)[1]
    _, body = node.handle(sealed)
    assert "already answered (replayed)" in body["error"]
    assert _events(node) == ["accepted", "head", "answered", "rejected"]


def test_an_expired_task_or_one_for_another_site_is_refused(node: SiteNode, service: Signer) -> None:
    _, old = seal(service, "site-a", "summaries", HEAD, _task(RowCount()), lifetime=-1)
    assert "expired" in node.handle(old)[1]["error"]
    _, other = seal(service, "site-b", "summaries", HEAD, _task(RowCount()))
    assert "for site-b, not for this node's site site-a" in node.handle(other)[1]["error"]


def test_a_request_for_rows_does_not_parse_and_raw_columns_are_refused(node: SiteNode, service: Signer) -> None:
    # a correctly signed task asking for something that is not a summary: the node has no such request
    text = json.dumps({"task_id": "f" * 32, "site_id": "site-a", "kind": "summaries", "issued_at": time.time(),
                       "expires_at": time.time() + 60, "audit_head": HEAD.model_dump(),
                       "task": {"study_id": STUDY, "thresholds": {}, "requests": [
                           {"kind": "raw_rows", "table": "patients", "columns": ["pid", "death_day"]}]}})
    _, body = node.handle(Sealed(envelope=text, signature=service.sign(text.encode())))
    assert "not a request this node answers" in body["error"]
    # summaries over identifiers or columns the policy does not allow are refused by the node itself
    for request in (GroupCounts(dims=["pid"]), GroupCounts(dims=["death_day"]),
                    GroupCounts(dims=["age_at_diagnosis_years"])):
        _, sealed = seal(service, "site-a", "summaries", HEAD, _task(request))
        answer = node.handle(sealed)[1]["reply"]["answers"][0]
        assert answer["kind"] == "refusal", request
    assert "never queryable" in answer["reason"] or "cannot be used for grouping" in answer["reason"]


def test_the_site_applies_its_own_stricter_threshold(federated: Settings, service: Signer, tmp_path: Path) -> None:
    import shutil

    import yaml

    sites = tmp_path / "sites"
    shutil.copytree(federated.sites_dir, sites)
    data = yaml.safe_load((sites / "site-a.yaml").read_text())
    data["disclosure"] = {"min_site_rows": 100_000, "min_cell": 2}  # min_cell 2 is laxer than 5: ignored
    (sites / "site-a.yaml").write_text(yaml.safe_dump(data))
    node = SiteNode(federated.model_copy(update={"sites_dir": sites}), "site-a", "http://127.0.0.1:9", "unused",
                    service.public, tmp_path / "node.jsonl")
    _, sealed = seal(service, "site-a", "summaries", HEAD, _task(RowCount(), GroupCounts(dims=["arm"])))
    reply = node.handle(sealed)[1]["reply"]
    assert reply["thresholds"]["min_cell"] == 5 and reply["thresholds"]["min_site_rows"] == 100_000
    assert reply["answers"][1] == {"kind": "refusal", "suggestion": "", "not_taking_part": True,
                                   "reason": "fewer than 100000 rows in patients: does not take part"}


def test_plain_http_to_another_host_is_refused_and_replays_stay_refused_after_a_restart(
        federated: Settings, service: Signer, tmp_path: Path) -> None:
    from federation.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="use https"):
        SiteNode(federated, "site-a", "http://query.example.org", "t", service.public, tmp_path / "n.jsonl")
    first = SiteNode(federated, "site-a", "https://query.example.org", "t", service.public, tmp_path / "n.jsonl")
    _, sealed = seal(service, "site-a", "summaries", HEAD, _task(RowCount()))
    assert "reply" in first.handle(sealed)[1]
    restarted = SiteNode(federated, "site-a", "https://query.example.org", "t", service.public,
                         tmp_path / "n.jsonl")
    assert "replayed" in restarted.handle(sealed)[1]["error"]
