"""Differencing on tables of several rows per patient (treatments, quality of life): a set of cells holds
each patient once, however many cells their rows lie in (guard `distinct_patients`). The ninth red team's
attacks, on the v2 neuroblastoma study: after a result that splits one patient's rows into five or more
cells, "everyone minus two groups" gave that patient's treatment start days or quality-of-life scores.
Each attack first succeeds with the guard switched off."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import duckdb
import pytest

from federation.query import Filter, Query, run_local
from federation.query.guard import switched_off
from federation.settings import Settings
from federation.synth import synthesize
from tests.federated import publish

STUDY = "PONC-NB-03"


@pytest.fixture(scope="module")
def nb03(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    os.environ.setdefault("FEDERATION_PSEUDONYM_KEY", "test-consortium-key-0123456789")
    root = tmp_path_factory.mktemp("nb03-rows")
    return publish(root, synthesize(root / "exports", 3, STUDY, 150, dt.date(2025, 6, 30), seed=3))


def truth(settings: Settings, table: str, column: str, where: str) -> tuple[int, int, float]:
    """(patients, rows, mean of `column`) of the rows of `table` whose patient matches `where`, pooled."""
    root = settings.storage.root / settings.storage.harmonized_bucket
    con = duckdb.connect()
    for t in ("patients", table):
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{root}/*/{STUDY}/data/*/{t}.parquet')")
    patients, rows, mean = con.execute(f"SELECT count(DISTINCT pid), count(*), avg(t.{column}) FROM {table} t "
                                       f"JOIN patients p USING (pid) WHERE {where}").fetchone()  # type: ignore[misc]
    return int(patients), int(rows), float(mean)


def F(column: str, value: Any, op: str = "==") -> Filter:
    return Filter(column=column, op=op, value=value)  # type: ignore[arg-type]


def attack(settings: Settings, folder: Path, first: Query, means: list[Query], site: str
           ) -> tuple[int, float] | None:
    """Release `first` (it splits every patient's rows by a column), then the means; "the first mean minus
    the others" as (rows, mean), or None when a result is refused."""
    folder.mkdir()
    s = settings.model_copy(update={"audit_log": folder / "audit.jsonl"})
    assert run_local(first, s, "mallory").status == "released"
    parts = []
    for q in means:
        r = run_local(q, s, "mallory")
        if r.status != "released":
            assert "isolate fewer than 5 patients" in r.reason
            return None
        cell = r.payload["rows"][0]["per_site"][site]
        parts.append((cell["n"], cell["n"] * cell["mean"]))
    n = parts[0][0] - sum(p[0] for p in parts[1:])
    return n, (parts[0][1] - sum(p[1] for p in parts[1:])) / n


def test_everyone_minus_two_arms_does_not_give_one_patients_treatments(nb03: Settings, tmp_path: Path) -> None:
    patients, rows, mean = truth(nb03, "treatments", "start_day", "p.site_id = 'site-a' AND p.arm = 'NR'")
    assert patients == 1 and rows >= 5  # one patient, many rows (one per agent)
    by_agent = Query(study_id=STUDY, table="treatments", sites=["site-a"], group_by=["agent"])
    mean_q = dict(study_id=STUDY, table="treatments", sites=["site-a"], statistic="mean", column="start_day")
    means = [Query(**mean_q), Query(**mean_q, filters=[F("arm", "DIN")]),  # type: ignore[arg-type]
             Query(**mean_q, filters=[F("arm", "DIN-IL2")])]  # type: ignore[arg-type]
    with switched_off("distinct_patients"):
        leaked = attack(nb03, tmp_path / "off", by_agent, means, "site-a")
    assert leaked is not None and leaked[0] == rows and leaked[1] == pytest.approx(mean)
    assert attack(nb03, tmp_path / "on", by_agent, means, "site-a") is None


def test_a_site_minus_its_two_sexes_does_not_give_one_patients_scores(nb03: Settings, tmp_path: Path) -> None:
    where = "p.site_id = 'site-b' AND p.arm = 'DIN-IL2' AND p.sex = 'U'"
    patients, rows, mean = truth(nb03, "quality_of_life", "total_score", where)
    assert patients == 1 and rows >= 5  # one patient's scores at five time points
    arm = [F("arm", "DIN-IL2")]
    qol = dict(study_id=STUDY, table="quality_of_life", sites=["site-b"], statistic="mean", column="total_score")
    by_time = Query(**qol, group_by=["timepoint"], filters=arm)  # type: ignore[arg-type]
    means = [Query(**qol, filters=arm), Query(**qol, filters=[*arm, F("sex", "F")]),  # type: ignore[arg-type]
             Query(**qol, filters=[*arm, F("sex", "M")])]  # type: ignore[arg-type]
    with switched_off("distinct_patients"):
        leaked = attack(nb03, tmp_path / "off", by_time, means, "site-b")
    assert leaked is not None and leaked[0] == rows and leaked[1] == pytest.approx(mean)
    assert attack(nb03, tmp_path / "on", by_time, means, "site-b") is None


def test_two_nested_means_do_not_give_one_patients_treatments(nb03: Settings, tmp_path: Path) -> None:
    patients, rows, mean = truth(nb03, "treatments", "start_day", "p.site_id = 'site-a' AND p.arm = 'NR'")
    by_agent = Query(study_id=STUDY, table="treatments", sites=["site-a"], group_by=["agent"])
    mean_q = dict(study_id=STUDY, table="treatments", sites=["site-a"], statistic="mean", column="start_day")
    # (the NR patient is a girl; "arm in [DIN, DIN-IL2]" alone leaves out too few for the sites' subset guard)
    girls = [F("sex", "F")]
    means = [Query(**mean_q, filters=girls),  # type: ignore[arg-type]
             Query(**mean_q, filters=[*girls, F("arm", ["DIN", "DIN-IL2"], "in")])]  # type: ignore[arg-type]
    with switched_off("distinct_patients"):
        leaked = attack(nb03, tmp_path / "off", by_agent, means, "site-a")
    assert leaked is not None and leaked[0] == rows and leaked[1] == pytest.approx(mean)
    assert attack(nb03, tmp_path / "on", by_agent, means, "site-a") is None


def test_means_over_many_patients_per_cell_are_still_released(nb03: Settings, tmp_path: Path) -> None:
    """No needless loss: with every patient's rows split by time point, the means of large groups and their
    differences of many patients are released."""
    qol = dict(study_id=STUDY, table="quality_of_life", statistic="mean", column="total_score")
    by_time = Query(**qol, group_by=["timepoint"])  # type: ignore[arg-type]
    means = [Query(**qol), Query(**qol, filters=[F("sex", "F")]),  # type: ignore[arg-type]
             Query(**qol, filters=[F("arm", "DIN")]), Query(**qol, group_by=["arm"])]  # type: ignore[arg-type]
    folder = tmp_path / "h"
    folder.mkdir()
    s = nb03.model_copy(update={"audit_log": folder / "audit.jsonl"})
    for q in [by_time, *means]:
        r = run_local(q, s, "mallory")
        assert r.status == "released", r.reason
