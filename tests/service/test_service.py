"""The query service with six site-node processes on 127.0.0.1: identity from tokens only, roles, faults
and bad input, restarts, and an analyst who holds nothing that changes the policy, history or audit log."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from federation.cli import main
from federation.client import Client, ServiceError
from federation.localrun import LocalFederation, write_secret
from federation.query import Filter, Query
from federation.settings import Settings
from tests.federated import STUDY, close_cut_points, pooled

pytestmark = pytest.mark.integration


def _get(fed: LocalFederation, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{fed.url}{path}", headers=headers, timeout=30)


def test_missing_wrong_revoked_token_and_wrong_role(federated_nodes: LocalFederation) -> None:
    fed = federated_nodes
    r = _get(fed, "/v1/queries")
    assert r.status_code == 401 and "missing token" in r.json()["detail"]
    r = _get(fed, "/v1/queries", "fed_not-a-token")
    assert r.status_code == 401 and "unknown token" in r.json()["detail"]
    fed.add_user("leaver", "analyst")
    assert _get(fed, "/v1/queries", fed.token("leaver")).status_code == 200
    assert main(["users", "revoke", "leaver", "--state", str(fed.state)]) == 0
    r = _get(fed, "/v1/queries", fed.token("leaver"))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    r = _get(fed, "/v1/audit", fed.token("analyst"))  # an analyst is not an auditor
    assert r.status_code == 403 and "needs the role auditor" in r.json()["detail"]
    r = httpx.post(f"{fed.url}/v1/queries", json={"study_id": STUDY}, timeout=30,
                   headers={"Authorization": f"Bearer {fed.token('node-site-a')}"})
    assert r.status_code == 403  # a node's token cannot ask queries


def test_identity_comes_from_the_token_only(federated_nodes: LocalFederation) -> None:
    fed = federated_nodes
    spec = _get(fed, "/openapi.json").json()
    params = [p["name"] for path in spec["paths"].values() for op in path.values() for p in op.get("parameters", [])]
    assert not any("analyst" in p or "user" in p for p in params)
    r = httpx.post(f"{fed.url}/v1/queries", json={"study_id": STUDY, "analyst": "someone-else"}, timeout=30,
                   headers={"Authorization": f"Bearer {fed.token('analyst')}"})
    assert r.status_code == 422  # the query model has no such field
    result = Client(fed.url, fed.token("eve")).query(STUDY, group_by=["sex"]).result
    entry = next(e for e in Client(fed.url, fed.token("auditor")).audit() if e["id"] == result.audit_id)
    assert entry["analyst"] == "eve"
    with pytest.raises(SystemExit):
        main(["query", "--study", STUDY, "--analyst", "someone-else"])


def test_malformed_and_oversized_requests_get_4xx_without_a_traceback(federated_nodes: LocalFederation) -> None:
    fed = federated_nodes
    headers = {"Authorization": f"Bearer {fed.token('analyst')}", "Content-Type": "application/json"}
    for body in (b"{not json", b'{"study_id": 3, "statistic": "everything"}', b"[]", b'{"study_id": "X", "group_by": '
                 b'["a", "b", "c", "d"]}'):
        r = httpx.post(f"{fed.url}/v1/queries", content=body, headers=headers, timeout=30)
        assert r.status_code == 422, body
        assert "Traceback" not in r.text
    r = httpx.post(f"{fed.url}/v1/queries", content=b'{"study_id": "' + b"x" * 400_000 + b'"}', headers=headers,
                   timeout=30)
    assert r.status_code == 413
    r = httpx.post(f"{fed.url}/v1/queries", json={"study_id": "NO-SUCH-STUDY"}, headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "refused"
    # a large body to the node endpoint is read only with a node's token
    r = httpx.post(f"{fed.url}/v1/node/replies/x", content=b"{" + b" " * 1_000_000 + b"}", timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert _get(fed, "/v1/health").json() == {"status": "ok"}  # no audit head (query count) without a token


def test_a_node_that_is_down_gives_that_sites_error_and_partial_still_works(federated_nodes: LocalFederation,
                                                                            federated: Settings) -> None:
    fed = federated_nodes
    client = Client(fed.url, fed.token("analyst"))
    fed.stop_node("site-f")
    try:
        # a count of vincristine treatments: the partial result minus earlier all-site results in the shared
        # history (other tests') is site-f's part, whose small cells the differencing guard rightly refuses;
        # no other node test counts treatments, and as patients (`cross_table`) "with a vincristine treatment"
        # is far from any other node test's patients (a plain count of treatments is nearly everyone)
        vcr = Filter(column="agent", op="==", value="vincristine")
        refused = client.query(STUDY, table="treatments", filters=[vcr]).result
        assert refused.status == "refused" and "site-f" in refused.reason and "not connected" in refused.reason
        partial = client.query(STUDY, table="treatments", filters=[vcr], allow_partial=True).result
        assert partial.status == "released" and "site-f" in partial.excluded, partial.reason
        total = pooled(federated, "SELECT count(*) FROM treatments WHERE site_id <> 'site-f' "
                                  "AND agent = 'vincristine'")[0][0]
        assert partial.payload["total"]["combined"] == total
    finally:
        fed.start_node("site-f")
        fed.wait_for_nodes(["site-f"])


def test_a_node_restarting_mid_query_gives_a_completed_or_cleanly_failed_query(
        federated_nodes: LocalFederation) -> None:
    fed = federated_nodes
    client = Client(fed.url, fed.token("analyst"))
    out: dict[str, Any] = {}
    q = Query(study_id=STUDY, statistic="quantiles", column="os_days", probs=[0.25, 0.5, 0.75], group_by=["arm"])
    worker = threading.Thread(target=lambda: out.setdefault("r", client.query(q).result))
    worker.start()
    fed.nodes["site-e"].kill()
    fed.nodes["site-e"].wait()
    fed.nodes.pop("site-e")
    fed.start_node("site-e")
    worker.join(timeout=120)
    r = out["r"]
    assert r.status in ("released", "refused")
    if r.status == "refused":
        assert "site-e" in r.reason and r.payload == {}
    fed.wait_for_nodes(["site-e"])
    assert client.query(STUDY, group_by=["arm"]).status == "released"


def test_the_service_restarts_without_losing_history_or_audit(federated_nodes: LocalFederation,
                                                              federated: Settings) -> None:
    fed = federated_nodes
    mallory = Client(fed.url, fed.token("mallory"))
    lo, hi = close_cut_points(federated, site="site-a")
    first = mallory.query(STUDY, sites=["site-a"],
                          filters=[Filter(column="age_at_diagnosis_years", op="<", value=lo)]).result
    assert first.status == "released"
    auditor = Client(fed.url, fed.token("auditor"))
    before = auditor.audit()
    fed.restart_service()
    fed.wait_for_nodes()
    after = auditor.audit()
    assert after == before
    assert auditor.audit_verify()["problems"] == []
    # the differencing history survived: one patient more than the earlier query is still refused
    second = mallory.query(STUDY, sites=["site-a"],
                           filters=[Filter(column="age_at_diagnosis_years", op="<", value=hi)]).result
    assert second.status == "refused" and "differencing" in second.reason


def test_concurrent_queries_of_one_analyst_cannot_slip_past_the_differencing_guard(
        federated_nodes: LocalFederation, federated: Settings) -> None:
    fed = federated_nodes
    fed.add_user("racer", "analyst")
    racer = Client(fed.url, fed.token("racer"))
    lo, hi = close_cut_points(federated, site="site-f")
    queries = [Query(study_id=STUDY, sites=["site-f"],
                     filters=[Filter(column="age_at_diagnosis_years", op="<", value=v)]) for v in (lo, hi)]
    results: list[Any] = [None, None]

    def ask(j: int) -> None:
        try:
            results[j] = racer.query(queries[j]).result.status
        except ServiceError as exc:  # the service answers one query per analyst at a time
            results[j] = exc.status

    threads = [threading.Thread(target=ask, args=(j,)) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results.count("released") == 1 and ("refused" in results or 409 in results), results


def test_a_site_coordinator_sees_only_their_sites_uploads(federated_nodes: LocalFederation,
                                                          federated_settings_file: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    fed = federated_nodes
    fed.add_user("coord-a", "site_coordinator", "site-a")
    fed.add_user("coord-b", "site_coordinator", "site-b")
    uploads = Client(fed.url, fed.token("coord-a")).site_uploads()
    assert uploads["site"] == "site-a" and len(uploads["uploads"]) == 1
    upload = uploads["uploads"][0]
    assert upload["status"] == "published" and upload["has_report"] and upload["rows"]["patients"] > 0
    assert set(upload) == {"upload_id", "study_id", "status", "message", "rows", "version_id", "updated",
                           "has_report"}  # statuses and counts only: no report text passes the service
    b_uploads = Client(fed.url, fed.token("coord-b")).site_uploads()
    assert b_uploads["site"] == "site-b" and b_uploads["uploads"][0]["upload_id"] != upload["upload_id"]
    with pytest.raises(ServiceError) as exc:  # an analyst is not a site coordinator
        Client(fed.url, fed.token("analyst")).site_uploads()
    assert exc.value.status == 403
    assert _get(fed, f"/v1/site/uploads/{upload['upload_id']}/report", fed.token("coord-a")).status_code == 404
    creds = write_secret(tmp_path / "coord", fed.token("coord-a"))
    assert main(["uploads", "--server", fed.url, "--credentials", str(creds)]) == 0
    assert "uploads of site-a" in capsys.readouterr().out
    # the report itself is read from the site's own report area with the site's storage identity
    assert main(["uploads", "--report", upload["upload_id"], "--site", "site-a", "--config",
                 str(federated_settings_file), "--output", str(tmp_path / "r.html")]) == 0
    assert "<html" in (tmp_path / "r.html").read_text().lower()


def test_cli_query_through_the_service_and_nothing_the_analyst_configures_counts(
        federated_nodes: LocalFederation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fed = federated_nodes
    creds = write_secret(tmp_path / "token", fed.token("analyst"))
    base = ["query", "--server", fed.url, "--credentials", str(creds), "--study", STUDY]
    assert main([*base, "--stat", "km", "--endpoint", "efs", "--by", "histology_risk", "--plot",
                 str(tmp_path / "km.png")]) == 0
    out = capsys.readouterr().out
    assert "Kaplan-Meier EFS" in out and "audit entry #" in out and (tmp_path / "km.png").stat().st_size > 10_000
    assert "log-rank test of FAVORABLE, UNFAVORABLE: chi2 = " in out and "median event-free survival" in out
    assert main([*base, "--stat", "cif", "--endpoint", "efs", "--cause", "RELAPSE", "--cause", "PROGRESSION",
                 "--horizon-days", "1826.25", "--plot", str(tmp_path / "cif.png")]) == 0
    out = capsys.readouterr().out
    assert "cumulative incidence of RELAPSE/PROGRESSION" in out and "competing" in out
    assert (tmp_path / "cif.png").stat().st_size > 10_000
    # an analyst's own laxer policy and audit log are not read by anything the analyst runs
    lax = tmp_path / "lax-policy.yaml"
    lax.write_text("disclosure: {min_cell: 2}\ncolumns: {default: {patients: [pid, death_day, sex]}}\n")
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"query_policy: {lax}\naudit_log: {tmp_path / 'my-audit.jsonl'}\n")
    monkeypatch.setenv("FEDERATION_CONFIG", str(settings))
    assert main([*base, "--by", "pid"]) == 3
    assert "never queryable" in capsys.readouterr().out
    assert main([*base, "--stat", "mean", "--column", "death_day"]) == 3
    assert "not a queryable column" in capsys.readouterr().out
    assert not (tmp_path / "my-audit.jsonl").exists()
    # a credentials file others can read is refused
    os.chmod(creds, 0o644)
    assert main([*base, "--by", "sex"]) == 2
    assert "chmod 600" in capsys.readouterr().err
    with pytest.raises(ServiceError) as exc:
        Client(fed.url, "fed_wrong").query(STUDY)
    assert exc.value.status == 401
