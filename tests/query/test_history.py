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


def test_an_index_of_another_release_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    import sqlite3

    audit = AuditLog(tmp_path / "audit.jsonl")
    _release(audit, Query(study_id=STUDY, group_by=["arm"]), "ann")
    old = sqlite3.connect(audit.path.with_name("audit.jsonl.history.sqlite"))  # the first release's layout
    old.executescript("CREATE TABLE footprints (key TEXT PRIMARY KEY, study TEXT, tbl TEXT, body TEXT, "
                      "first_id INTEGER, analyst TEXT, releases INTEGER); CREATE TABLE meta (name TEXT PRIMARY KEY, "
                      "value TEXT); INSERT INTO meta VALUES ('offset', '999999');")
    old.commit()
    old.close()
    history = History(audit)
    assert history.counts() == (1, 1)  # not "no such column", and not skipped by the stale offset
    assert history.earlier(STUDY, "patients")[0].analyst == "ann"


def test_hidden_cells_and_levels_are_part_of_a_footprint(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    q = Query(study_id=STUDY, group_by=["arm"])
    audit.append({"analyst": "ann", "query": q.model_dump(mode="json"), "fingerprint": q.fingerprint(),
                  "versions": {"site-a": f"site-a/{STUDY}@v1"}, "outcome": "released", "reason": "", "excluded": {},
                  "released": {"per_site": True, "levels": [["arm"], []],
                               "hidden": [["site-a", ["arm"], ["NR"]], ["", ["arm"], ["NR"]]]}})
    (fp,) = [e.footprint for e in History(audit).earlier(STUDY, "patients")]
    assert fp.levels == (("arm",), ())
    assert fp.is_hidden("site-a", ("arm",), '["NR"]') and fp.is_hidden("", ("arm",), '["NR"]')
    assert not fp.is_hidden("site-a", ("arm",), '["M"]')
    assert Footprint.from_json(fp.to_json()) == fp
    plain = Footprint.of(q, {"site-a": 1}, True)  # results without hidden cells keep their earlier key
    assert "hidden" not in plain.to_json() and "levels" not in plain.to_json()


def test_a_result_leaves_a_footprint_for_each_part_of_its_groups_it_shows(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    q = Query(study_id=STUDY, statistic="proportion", column="efs_event", value=True, group_by=["arm"])
    split = {"split": [{"column": "efs_event", "op": "==", "value": True}], "hidden": [["site-a", ["arm"], ["NR"]]]}
    for analyst in ("ann", "bob"):
        audit.append({"analyst": analyst, "query": q.model_dump(mode="json"), "fingerprint": q.fingerprint(),
                      "versions": {"site-a": f"site-a/{STUDY}@v1"}, "outcome": "released", "reason": "",
                      "excluded": {}, "released": {"per_site": True, "levels": [["arm"]], "splits": [split]}})
    history = History(audit)
    whole, part = [e.footprint for e in history.earlier(STUDY, "patients")]
    assert not whole.split() and part.split() == [Filter(column="efs_event", op="==", value=True)]
    assert part.filters() == whole.filters() == ([], []) and part.dims == whole.dims == ("arm",)
    assert part.is_hidden("site-a", ("arm",), '["NR"]') and not whole.hidden
    assert history.counts() == (2, 2)  # two released results; a whole footprint and a part
