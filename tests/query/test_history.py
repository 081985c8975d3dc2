"""The differencing history index: distinct footprints of released results, read incrementally from the
audit log, rebuilt when the log is replaced."""

from __future__ import annotations

from pathlib import Path

from federation.query import Filter, Query
from federation.query.central.audit import AuditLog
from federation.query.central.history import Footprint, History

STUDY = "PONC-WT-01"


def _release(audit: AuditLog, q: Query, analyst: str, outcome: str = "released") -> None:
    audit.append({"analyst": analyst, "query": q.model_dump(mode="json"), "fingerprint": q.fingerprint(),
                  "versions": {"site-a": f"site-a/{STUDY}@v1", "site-b": f"site-b/{STUDY}@v2"},
                  "outcome": outcome, "reason": "", "excluded": {}, "released": {"per_site": True}})


def test_the_index_keeps_distinct_released_footprints_of_every_analyst(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    history = History(audit)
    by_arm = Query(study_id=STUDY, group_by=["arm"])
    young = Query(study_id=STUDY, filters=[Filter(column="age_at_diagnosis_years", op="<", value=2.0)])
    _release(audit, by_arm, "ann")
    _release(audit, by_arm, "bob")  # the same footprint again: one row, two releases
    _release(audit, young, "bob", outcome="refused")  # refused: not in the history
    assert history.counts() == (2, 1)
    _release(audit, young, "cid")  # appended later: read from where the last sync stopped
    earlier = history.earlier(STUDY, "patients")
    assert [(e.analyst, e.audit_id) for e in earlier] == [("ann", 1), ("cid", 4)]
    assert earlier[0].footprint.sites == {"site-a": 1, "site-b": 2} and earlier[0].footprint.dims == ("arm",)
    assert earlier[1].described == young.describe()
    assert history.earlier(STUDY, "treatments") == []
    assert Footprint.of(by_arm, {"site-a": 1, "site-b": 2}, True).key() == earlier[0].footprint.key()


def test_the_index_is_rebuilt_when_the_audit_log_is_replaced(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    history = History(audit)
    _release(audit, Query(study_id=STUDY, group_by=["arm"]), "ann")
    _release(audit, Query(study_id=STUDY, group_by=["sex"]), "ann")
    assert history.counts() == (2, 2)
    (tmp_path / "audit.jsonl").unlink()  # e.g. restored from another backup
    other = AuditLog(tmp_path / "audit.jsonl")
    _release(other, Query(study_id=STUDY, group_by=["stage"]), "bob")
    _release(other, Query(study_id=STUDY, group_by=["stage"]), "bob")
    _release(other, Query(study_id=STUDY, group_by=["stage", "arm"]), "bob")
    assert history.counts() == (3, 2)
    assert [e.footprint.dims for e in history.earlier(STUDY, "patients")] == [("stage",), ("stage", "arm")]
