"""Realistic synthetic site exports, for demos, tests and benchmarks.

Each synthetic site writes its export the way a real hospital system would:
its own column names, local codes, date format, delimiter, decimal mark and
encoding (declared in its site configuration). Errors of every kind the
validation rules catch can be injected; each injection is recorded in a
machine-readable answer file saying where the report must flag it (file,
line, the site's column name, rule).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federation.config import SiteConfig, SiteConventions
from federation.schema import Study, load_dictionary, load_registry

Row = dict[str, Any]


class Raw(str):
    """A value written to the file exactly as given (an injected error)."""


@dataclass(frozen=True)
class Expected:
    """A finding the validation report must contain."""

    file: str
    line: int
    column: str
    rule: str
    kind: str


# --- the site styles: how different hospital systems write their exports ---------------------
SITE_STYLES: list[tuple[str, str, SiteConventions]] = [
    ("site-a", "Northfield Children's Hospital", SiteConventions()),
    ("site-b", "Hôpital pédiatrique de Valmont", SiteConventions(
        delimiter=";", decimal_mark=",", encoding="cp1252", date_formats=["DD/MM/YYYY"],
        column_renames={
            "patients": {"sexe": "sex", "date_naissance": "birth_date", "date_inclusion": "enrollment_date",
                         "bras": "arm"},
            "outcomes": {"statut_vital": "vital_status", "date_deces": "death_date"},
        },
        code_maps={
            "patients": {"sex": {"1": "M", "2": "F", "9": "U"}},
            "outcomes": {"vital_status": {"vivant": "ALIVE", "décédé": "DEAD"}},
        },
    )),
    ("site-c", "Lakeshore Pediatric Oncology Center", SiteConventions(
        encoding="utf-8", date_formats=["MM/DD/YYYY"],
        column_renames={
            "patients": {"PatientID": "patient_id", "Sex": "sex", "DOB": "birth_date",
                         "EnrollDate": "enrollment_date", "Arm": "arm"},
            "diagnoses": {"PatientID": "patient_id", "DxDate": "diagnosis_date", "Histology": "histology_icdo3",
                          "Topography": "topography_icdo3", "Stage": "stage"},
            "adverse_events": {"PatientID": "patient_id", "Term": "ae_term", "Grade": "grade",
                               "OnsetDate": "onset_date"},
        },
    )),
    ("site-d", "Universitätskinderklinik Bergstadt", SiteConventions(
        delimiter=";", decimal_mark=",", encoding="utf-8", date_formats=["DD.MM.YYYY", "YYYY-MM-DD"],
        column_renames={"patients": {"geschlecht": "sex"}, "treatments": {"substanz": "agent"}},
        code_maps={"patients": {"sex": {"m": "M", "w": "F", "u": "U"}}},
    )),
    ("site-e", "Southbay University Children's Hospital", SiteConventions(date_formats=["YYYY-MM-DD"])),
    ("site-f", "Ospedale Pediatrico di Collina", SiteConventions(
        delimiter=";", decimal_mark=",", encoding="cp1252", date_formats=["DD/MM/YYYY"])),
]
BOM_SITES = {"site-c"}  # writes UTF-8 with a byte-order mark, as Excel does


def site_configs(n: int, study_ids: list[str]) -> list[SiteConfig]:
    """The first `n` synthetic sites (styles repeat with new ids past six)."""
    out = []
    for i in range(n):
        sid, name, conv = SITE_STYLES[i % len(SITE_STYLES)]
        if i >= len(SITE_STYLES):
            sid, name = f"{sid}{i // len(SITE_STYLES) + 1}", f"{name} ({i // len(SITE_STYLES) + 1})"
        out.append(SiteConfig(site_id=sid, name=name, studies=study_ids, conventions=conv))
    return out


# --- clinical content ------------------------------------------------------------------------
DISEASES: dict[str, dict[str, Any]] = {
    "PONC-WT-01": {
        "age_mean": 3.6, "age_sd": 2.2, "histology": [("8960/3", 0.92), ("8963/3", 0.03), ("8959/3", 0.05)],
        "topography": [("C64.9", 1.0)], "event_rate": 0.15, "death_given_event": 0.35,
        "stage_weights": [0.38, 0.23, 0.25, 0.1, 0.04], "unfavorable": 0.08,
        "agents": ["vincristine", "dactinomycin", "doxorubicin", "surgery", "radiotherapy"],
    },
    "PONC-NB-02": {
        "age_mean": 2.5, "age_sd": 2.0, "histology": [("9500/3", 0.85), ("9490/3", 0.15)],
        "topography": [("C74.9", 0.7), ("C48.0", 0.3)], "event_rate": 0.45, "death_given_event": 0.6,
        "stage_weights": [0.2, 0.3, 0.45, 0.05], "unfavorable": 0.4,
        "agents": ["cisplatin", "etoposide", "vincristine", "cyclophosphamide", "carboplatin", "surgery",
                   "radiotherapy"],
    },
}
# dictionary v2 studies: molecular markers (prevalence among the study's patients, and the event rate when
# DETECTED), today's agents, late effects (share of patients with each category) and quality of life
DISEASES["PONC-NB-03"] = {
    **DISEASES["PONC-NB-02"], "event_rate": 0.36, "death_given_event": 0.55, "stage_weights": [0.0, 0.12, 0.83, 0.05],
    "agents": ["cisplatin", "etoposide", "vincristine", "cyclophosphamide", "carboplatin", "busulfan", "melphalan",
               "surgery", "hsct", "radiotherapy", "dinutuximab", "isotretinoin"],
    # (gene, alteration, method, prevalence, event rate if DETECTED, 0: no effect): MYCN amplification in about
    # 40 % of high-risk neuroblastoma, with much worse event-free survival; ALK mutation about 10 %; 11q loss
    # about 35 %; 1p loss about 25 %
    "markers": [("MYCN", "AMPLIFICATION", "FISH", 0.40, 0.66), ("ALK", "MUTATION", "NGS_PANEL", 0.10, 0.0),
                ("11q", "DELETION_LOH", "SNP_ARRAY", 0.35, 0.0), ("1p", "DELETION_LOH", "SNP_ARRAY", 0.25, 0.0)],
    # category, share of patients, typical term, CTCAE grades: cisplatin ototoxicity is the commonest
    "late_effects": [("HEARING", 0.45, "Hearing impaired", [1, 2, 3]), ("ENDOCRINE", 0.35, "Growth hormone deficiency",
                                                                         [1, 2]),
                     ("RENAL", 0.10, "Chronic kidney disease", [1, 2]), ("CARDIAC", 0.05, "Left ventricular "
                                                                         "systolic dysfunction", [1, 2, 3]),
                     ("SECOND_NEOPLASM", 0.03, "Myelodysplastic syndrome", [3, 4]),
                     ("NEUROCOGNITIVE", 0.12, "Cognitive disturbance", [1, 2]),
                     ("PULMONARY", 0.04, "Restrictive lung disease", [1, 2]),
                     ("FERTILITY", 0.20, "Ovarian or testicular dysfunction", [1, 2, 3]),
                     ("MUSCULOSKELETAL", 0.08, "Growth retardation of the spine", [1, 2]),
                     ("OTHER", 0.05, "Dental anomalies", [1])],
    "qol_mean": 72.0,
}
DOSES: dict[str, tuple[float, str]] = {
    "vincristine": (1.5, "mg/m2"), "dactinomycin": (45.0, "mcg"), "doxorubicin": (30.0, "mg/m2"),
    "cyclophosphamide": (1.2, "g"), "ifosfamide": (1800.0, "mg/m2"), "etoposide": (100.0, "mg/m2"),
    "carboplatin": (450.0, "mg/m2"), "cisplatin": (80.0, "mg/m2"), "irinotecan": (50.0, "mg/m2"),
    "radiotherapy": (10.8, "Gy"), "busulfan": (3.2, "mg/kg"), "melphalan": (140.0, "mg/m2"),
    "dinutuximab": (10.0, "mg/m2"), "isotretinoin": (160.0, "mg/m2"), "blinatumomab": (15.0, "mcg/m2"),
    "hsct": (0.0, ""),
}
AE_TERMS = [
    ("Febrile neutropenia", "10016288"), ("Anemia", "10002272"), ("Vomiting", "10047700"),
    ("Nausea", "10028813"), ("Peripheral sensory neuropathy", "10034620"), ("Constipation", "10010774"),
    ("Neutrophil count decreased", "10029366"), ("Platelet count decreased", "10035528"),
    ("Sepsis", "10040047"), ("Mucositis oral", "10028130"),
]
EVENTS = ["RELAPSE", "PROGRESSION", "SECOND_MALIGNANCY", "DEATH"]


def _choice(rng: np.random.Generator, pairs: list[tuple[str, float]]) -> str:
    values, weights = zip(*pairs, strict=True)
    w = np.asarray(weights, dtype=float)
    return str(rng.choice(values, p=w / w.sum()))


def _days(n: float | np.integer[Any]) -> dt.timedelta:
    return dt.timedelta(days=int(n))


def generate_site(study: Study, site_id: str, n_patients: int, as_of: dt.date, seed: int,
                  ae_per_patient: float = 2.0) -> dict[str, list[Row]]:
    """Canonical (dictionary terms) rows of every table for one site and study."""
    rng = np.random.default_rng(seed)
    d = DISEASES.get(study.study_id, DISEASES["PONC-WT-01"])
    last_enrol = min(study.accrual.last, as_of - dt.timedelta(days=45))
    span = max((last_enrol - study.accrual.first).days, 1)
    stages = study.stages
    sw = np.asarray(d["stage_weights"][: len(stages)] + [0.05] * max(0, len(stages) - len(d["stage_weights"])))
    tables: dict[str, list[Row]] = {t: [] for t in ("patients", "diagnoses", "treatments", "adverse_events",
                                                     "outcomes", "biomarkers", "late_effects", "quality_of_life")}
    prefix = site_id.replace("site-", "").upper()
    for i in range(n_patients):
        pid = f"{prefix}{study.study_id[-2:]}-{i + 1:05d}"
        enrol = study.accrual.first + _days(rng.integers(0, span))
        diag = enrol - _days(rng.integers(0, 28))
        age = float(np.clip(rng.normal(d["age_mean"], d["age_sd"]), 0.1, 21.0))
        birth = diag - _days(age * 365.25)
        arm = "NR" if rng.random() < 0.05 else str(rng.choice([a.code for a in study.arms]))
        tables["patients"].append({
            "study_id": study.study_id, "site_id": site_id, "patient_id": pid,
            "sex": str(rng.choice(["M", "F", "U"], p=[0.5, 0.49, 0.01])),
            "birth_date": birth, "enrollment_date": enrol, "arm": arm,
            "race": str(rng.choice(["WHITE", "BLACK", "ASIAN", "OTHER", "UNKNOWN", ""],
                                   p=[0.55, 0.15, 0.1, 0.05, 0.05, 0.1])),
            "ethnicity": str(rng.choice(["HISPANIC", "NOT_HISPANIC", "UNKNOWN", ""], p=[0.15, 0.7, 0.1, 0.05])),
        })
        tables["diagnoses"].append({
            "patient_id": pid, "diagnosis_date": diag, "histology_icdo3": _choice(rng, d["histology"]),
            "topography_icdo3": _choice(rng, d["topography"]),
            "stage": str(rng.choice(stages, p=sw / sw.sum())),
            "histology_risk": "UNFAVORABLE" if rng.random() < d["unfavorable"] else "FAVORABLE",
            "risk_group": str(rng.choice(["LOW", "STANDARD", "HIGH", ""], p=[0.3, 0.4, 0.25, 0.05])),
        })
        follow = (as_of - enrol).days
        last = enrol + _days(rng.integers(min(60, follow), follow + 1))
        outcome: Row = {"patient_id": pid, "last_contact_date": last, "vital_status": "ALIVE",
                        "death_date": None, "first_event": "NONE", "first_event_date": None}
        event_rate = d["event_rate"]
        for gene, alteration, method, prevalence, rate in d.get("markers", []):
            if rng.random() < 0.06:
                continue  # not tested
            found = rng.random() < prevalence
            result = "INDETERMINATE" if rng.random() < 0.02 else "DETECTED" if found else "NOT_DETECTED"
            if result == "DETECTED":
                event_rate = max(event_rate, rate)
            tables["biomarkers"].append({"patient_id": pid, "sample_date": diag, "gene": gene,
                                         "alteration": alteration, "method": method, "result": result,
                                         "variant": "F1174L" if gene == "ALK" and found else None})
        if rng.random() < event_rate:
            event = str(rng.choice(EVENTS, p=[0.6, 0.2, 0.05, 0.15]))
            edate = enrol + _days(rng.integers(0, max((last - enrol).days, 1)))
            outcome.update(first_event=event, first_event_date=edate)
            if event == "DEATH":
                outcome.update(vital_status="DEAD", death_date=edate, last_contact_date=edate)
            elif rng.random() < d["death_given_event"]:
                death = edate + _days(rng.integers(0, max((last - edate).days, 1)))
                outcome.update(vital_status="DEAD", death_date=death, last_contact_date=death)
        tables["outcomes"].append(outcome)
        last = outcome["last_contact_date"]
        t0 = enrol + _days(rng.integers(0, 10))
        for agent in d["agents"]:
            if rng.random() < 0.3:
                continue
            start = t0 + _days(rng.integers(0, 60))
            if start > last:
                continue
            row: Row = {"patient_id": pid, "agent": agent, "start_date": start,
                        "end_date": min(start + _days(rng.integers(0, 120)), last) if rng.random() < 0.85 else None,
                        "dose": None, "dose_unit": None}
            if agent not in ("surgery", "hsct"):
                base, unit = DOSES[agent]
                row.update(dose=round(base * float(rng.uniform(0.8, 1.2)), 2), dose_unit=unit)
            tables["treatments"].append(row)
        therapy_end = t0 + _days(365)  # about a year of multimodal therapy
        if therapy_end < last:
            for category, share, term, grades in d.get("late_effects", []):
                if rng.random() < share:
                    onset = therapy_end + _days(rng.integers(0, max((last - therapy_end).days, 1)))
                    tables["late_effects"].append({
                        "patient_id": pid, "category": category, "term": term, "grade": int(rng.choice(grades)),
                        "ototoxicity_grade": int(rng.integers(1, 5)) if category == "HEARING" else None,
                        "onset_date": onset})
        if "qol_mean" in d:
            for point, offset in (("BASELINE", 7), ("ON_THERAPY", 180), ("END_OF_THERAPY", 380),
                                  ("FOLLOW_UP_1Y", 745), ("FOLLOW_UP_2Y", 1110), ("FOLLOW_UP_5Y", 2190)):
                when = enrol + _days(offset)
                if when > last or rng.random() < 0.15:
                    continue
                # lowest during therapy, recovering after it
                score = d["qol_mean"] + {"BASELINE": -4, "ON_THERAPY": -12, "END_OF_THERAPY": -10, "FOLLOW_UP_1Y": 0,
                                         "FOLLOW_UP_2Y": 4, "FOLLOW_UP_5Y": 6}[point] + rng.normal(0, 12)
                tables["quality_of_life"].append({
                    "patient_id": pid, "assessment_date": when, "instrument": "PEDSQL_GENERIC",
                    "respondent": "CHILD" if age > 7 and rng.random() < 0.7 else "PARENT_PROXY", "timepoint": point,
                    "total_score": round(float(np.clip(score, 0, 100)), 1)})
        for _ in range(int(rng.poisson(ae_per_patient))):
            onset = enrol + _days(rng.integers(0, max((last - enrol).days, 1)))
            term, code = AE_TERMS[int(rng.integers(0, len(AE_TERMS)))]
            tables["adverse_events"].append({
                "patient_id": pid, "ae_term": term, "meddra_code": code if rng.random() < 0.8 else None,
                "grade": int(rng.choice([1, 2, 3, 4], p=[0.35, 0.35, 0.22, 0.08])), "onset_date": onset,
                "serious": "Y" if rng.random() < 0.2 else "N",
                "related": str(rng.choice(["Y", "N", "U", ""], p=[0.5, 0.3, 0.1, 0.1])),
            })
        if outcome["vital_status"] == "DEAD" and outcome["first_event"] == "DEATH" and rng.random() < 0.5:
            tables["adverse_events"].append({
                "patient_id": pid, "ae_term": "Sepsis", "meddra_code": "10040047", "grade": 5,
                "onset_date": outcome["death_date"] - _days(rng.integers(0, 5)) if
                outcome["death_date"] - _days(4) >= enrol else outcome["death_date"],
                "serious": "Y", "related": "Y",
            })
    return tables


# --- error injection -------------------------------------------------------------------------
Injector = Callable[[dict[str, list[Row]], np.random.Generator, Study, dt.date], None]
_INJECTORS: dict[str, Injector] = {}


def _injector(kind: str) -> Callable[[Injector], Injector]:
    def deco(fn: Injector) -> Injector:
        _INJECTORS[kind] = fn
        return fn
    return deco


def _mark(row: Row, column: str, rule: str, kind: str) -> None:
    row.setdefault("__expect", []).append((column, rule, kind))


def _pick(rows: list[Row], rng: np.random.Generator, pred: Callable[[Row], bool] = lambda r: True) -> Row:
    """A random untouched row satisfying pred."""
    candidates = [r for r in rows if "__expect" not in r and "__touched" not in r and pred(r)]
    if not candidates:
        raise ValueError("no row left to inject into; generate more patients")
    row = candidates[int(rng.integers(0, len(candidates)))]
    row["__touched"] = True
    return row


def _pid_rows(tables: dict[str, list[Row]], pid: str) -> list[Row]:
    return [r for t in tables.values() for r in t if r.get("patient_id") == pid]


def _pick_patient(tables: dict[str, list[Row]], rng: np.random.Generator,
                  pred: Callable[[Row], bool] = lambda r: True) -> tuple[Row, Row, Row]:
    """An untouched patient (patients, diagnoses, outcomes rows) whose outcome satisfies pred; marks all its rows."""
    outcomes = {r["patient_id"]: r for r in tables["outcomes"]}
    diagnoses = {r["patient_id"]: r for r in tables["diagnoses"]}

    def ok(p: Row) -> bool:
        pid = p["patient_id"]
        return (pid in outcomes and pid in diagnoses and pred(outcomes[pid])
                and all("__touched" not in r and "__expect" not in r for r in _pid_rows(tables, pid)))

    patient = _pick(tables["patients"], rng, ok)
    for r in _pid_rows(tables, patient["patient_id"]):
        r["__touched"] = True
    return patient, diagnoses[patient["patient_id"]], outcomes[patient["patient_id"]]


@_injector("bad_code")
def _bad_code(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, _, _ = _pick_patient(t, rng)
    p["sex"] = Raw("X")
    _mark(p, "sex", "code_list", "bad_code")


@_injector("missing_required")
def _missing(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, _, _ = _pick_patient(t, rng)
    p["arm"] = Raw("")
    _mark(p, "arm", "required", "missing_required")


@_injector("impossible_date")
def _impossible(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, _, _ = _pick_patient(t, rng)
    p["birth_date"] = ("impossible", 2020, 2, 31)
    _mark(p, "birth_date", "type_date", "impossible_date")


@_injector("bad_icdo3")
def _bad_icdo(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    _, d, _ = _pick_patient(t, rng)
    d["histology_icdo3"] = Raw(d["histology_icdo3"][:4] + "/1")
    _mark(d, "histology_icdo3", "pattern", "bad_icdo3")


@_injector("duplicate_patient")
def _duplicate(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, _, _ = _pick_patient(t, rng)
    copy = {k: v for k, v in p.items() if not k.startswith("__")}
    t["patients"].append(copy)
    _mark(p, "patient_id", "unique", "duplicate_patient")
    _mark(copy, "patient_id", "unique", "duplicate_patient")


@_injector("spreadsheet_id")
def _spreadsheet(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    r = _pick(t["treatments"], rng)
    r["patient_id"] = Raw("1.23E+05")
    _mark(r, "patient_id", "spreadsheet_mangled", "spreadsheet_id")
    _mark(r, "patient_id", "treatment_has_patient", "spreadsheet_id")


@_injector("grade_out_of_range")
def _grade(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    r = _pick(t["adverse_events"], rng, lambda r: r["grade"] < 5)
    r["grade"] = 7
    _mark(r, "grade", "range", "grade_out_of_range")


@_injector("death_date_missing")
def _death_missing(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    _, _, o = _pick_patient(t, rng, lambda o: o["vital_status"] == "DEAD" and o["first_event"] != "DEATH")
    o["death_date"] = None
    _mark(o, "death_date", "death_date_required_if_dead", "death_date_missing")


@_injector("death_date_when_alive")
def _death_alive(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    _, _, o = _pick_patient(t, rng, lambda o: o["vital_status"] == "ALIVE")
    o["death_date"] = o["last_contact_date"]
    _mark(o, "death_date", "death_date_only_if_dead", "death_date_when_alive")


@_injector("grade5_alive")
def _grade5(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    alive = {o["patient_id"] for o in t["outcomes"] if o["vital_status"] == "ALIVE"}
    r = _pick(t["adverse_events"], rng, lambda r: r["patient_id"] in alive)
    r["grade"] = 5
    _mark(r, "grade", "grade5_implies_dead", "grade5_alive")


@_injector("diagnosis_after_enrollment")
def _diag_after(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, d, _ = _pick_patient(t, rng)
    d["diagnosis_date"] = p["enrollment_date"] + dt.timedelta(days=10)
    _mark(d, "diagnosis_date", "diagnosis_not_after_enrollment", "diagnosis_after_enrollment")


@_injector("too_old")
def _too_old(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, d, _ = _pick_patient(t, rng)
    p["birth_date"] = d["diagnosis_date"] - dt.timedelta(days=int(23 * 365.25))
    _mark(d, "diagnosis_date", "age_at_diagnosis_pediatric", "too_old")


@_injector("outside_accrual")
def _accrual(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, d, _ = _pick_patient(t, rng)
    shift = p["enrollment_date"] - (s.accrual.first - dt.timedelta(days=40))
    p["enrollment_date"] -= shift
    p["birth_date"] -= shift
    d["diagnosis_date"] -= shift
    _mark(p, "enrollment_date", "accrual_window", "outside_accrual")


@_injector("orphan_adverse_event")
def _orphan(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    r = _pick(t["adverse_events"], rng)
    r["patient_id"] = "ZZ-NOT-ENROLLED"
    _mark(r, "patient_id", "adverse_event_has_patient", "orphan_adverse_event")


@_injector("dose_not_a_number")
def _dose(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    r = _pick(t["treatments"], rng, lambda r: r["dose"] is not None)
    r["dose"] = Raw("12 mg")
    _mark(r, "dose", "type_decimal", "dose_not_a_number")


@_injector("dose_missing")
def _dose_missing(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    r = _pick(t["treatments"], rng, lambda r: r["agent"] != "surgery")
    r["dose"] = None
    r["dose_unit"] = None
    _mark(r, "dose", "dose_required_unless_surgery", "dose_missing")


@_injector("other_site")
def _other_site(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, _, _ = _pick_patient(t, rng)
    p["site_id"] = "site-zz"
    _mark(p, "site_id", "site_id", "other_site")


@_injector("future_contact")
def _future(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    _, _, o = _pick_patient(t, rng, lambda o: o["vital_status"] == "ALIVE")
    o["last_contact_date"] = a + dt.timedelta(days=30)
    _mark(o, "last_contact_date", "not_after_upload", "future_contact")


@_injector("bad_meddra")
def _meddra(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    r = _pick(t["adverse_events"], rng, lambda r: r["meddra_code"] is not None)
    r["meddra_code"] = Raw(r["meddra_code"][:7])
    _mark(r, "meddra_code", "pattern", "bad_meddra")


@_injector("death_event_alive")
def _death_event(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    _, _, o = _pick_patient(t, rng, lambda o: o["vital_status"] == "ALIVE" and o["first_event"] == "NONE")
    o["first_event"] = "DEATH"
    o["first_event_date"] = o["last_contact_date"]
    _mark(o, "first_event", "death_event_implies_dead", "death_event_alive")


@_injector("missing_diagnosis")
def _no_diag(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    p, d, _ = _pick_patient(t, rng)
    t["diagnoses"].remove(d)
    _mark(p, "patient_id", "patient_has_diagnosis", "missing_diagnosis")


@_injector("unknown_column")
def _unknown(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    for r in t["patients"]:
        r["__extra"] = {"comments": "synthetic"}
    t["patients"][0].setdefault("__header_expect", []).append(("comments", "unknown_column", "unknown_column"))


@_injector("gene_alteration_not_allowed")
def _bad_pair(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    b = _pick(t["biomarkers"], rng, lambda r: r["gene"] == "MYCN")
    b["alteration"] = "FUSION"
    _mark(b, "alteration", "gene_alteration_allowed", "gene_alteration_not_allowed")


@_injector("hearing_without_ototoxicity_grade")
def _no_oto(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    r = _pick(t["late_effects"], rng, lambda r: r["category"] == "HEARING")
    r["ototoxicity_grade"] = None
    _mark(r, "ototoxicity_grade", "ototoxicity_grade_required_if_hearing", "hearing_without_ototoxicity_grade")


@_injector("late_effect_after_last_contact")
def _late_after(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    last = {o["patient_id"]: o["last_contact_date"] for o in t["outcomes"]}
    r = _pick(t["late_effects"], rng, lambda r: r["category"] != "HEARING")
    r["onset_date"] = last[r["patient_id"]] + _days(30)
    _mark(r, "onset_date", "late_effect_not_after_last_contact", "late_effect_after_last_contact")


@_injector("quality_of_life_out_of_range")
def _qol_range(t: dict[str, list[Row]], rng: np.random.Generator, s: Study, a: dt.date) -> None:
    r = _pick(t["quality_of_life"], rng)
    r["total_score"] = 104.5
    _mark(r, "total_score", "range", "quality_of_life_out_of_range")


# the tables an injection needs beyond v1's (a study without them gets no such error)
NEEDS = {"gene_alteration_not_allowed": "biomarkers", "hearing_without_ototoxicity_grade": "late_effects",
         "late_effect_after_last_contact": "late_effects", "quality_of_life_out_of_range": "quality_of_life"}
ERROR_KINDS = list(_INJECTORS)


def inject_errors(tables: dict[str, list[Row]], study: Study, as_of: dt.date, seed: int,
                  kinds: list[str] | None = None) -> None:
    rng = np.random.default_rng(seed + 7919)
    for kind in kinds or ERROR_KINDS:
        if kind in NEEDS and NEEDS[kind] not in study.optional_tables:
            if kinds:
                raise ValueError(f"{kind} needs the table {NEEDS[kind]}, which {study.study_id} does not collect")
            continue
        _INJECTORS[kind](tables, rng, study, as_of)


# --- writing in the site's conventions -----------------------------------------------------
def _format_date(value: dt.date | tuple[Any, ...], fmt: str) -> str:
    if isinstance(value, tuple):  # ("impossible", y, m, d)
        _, y, m, d = value
        return fmt.replace("YYYY", f"{y:04d}").replace("MM", f"{m:02d}").replace("DD", f"{d:02d}")
    return fmt.replace("YYYY", f"{value.year:04d}").replace("MM", f"{value.month:02d}").replace(
        "DD", f"{value.day:02d}")


@dataclass
class WrittenExport:
    site: SiteConfig
    study_id: str
    folder: Path
    rows: dict[str, int]
    expected: list[Expected] = field(default_factory=list)


def write_export(tables: dict[str, list[Row]], site: SiteConfig, study: Study, folder: Path) -> WrittenExport:
    """Write canonical rows as the site's CSV files (in the dictionary version the site declares for the study);
    return where injected errors must be reported."""
    dictionary = load_dictionary(site.dictionary_for(study))
    conv = site.conventions
    folder.mkdir(parents=True, exist_ok=True)
    date_fmt = conv.date_formats[0]
    encoding = "utf-8-sig" if site.site_id in BOM_SITES else conv.encoding
    result = WrittenExport(site=site, study_id=study.study_id, folder=folder, rows={})
    for table, rows in tables.items():
        if table not in dictionary.tables:
            continue
        if not dictionary.table(table).required and table not in study.optional_tables:
            continue
        columns = list(dictionary.table(table).columns)
        renames = {v: k for k, v in conv.column_renames.get(table, {}).items()}
        reverse_codes = {col: {v: k for k, v in reversed(list(m.items()))}
                         for col, m in conv.code_maps.get(table, {}).items()}
        extra_cols = list(rows[0].get("__extra", {})) if rows else []
        header = [renames.get(c, c) for c in columns] + extra_cols
        path = folder / f"{table}.csv"
        with path.open("w", newline="", encoding=encoding) as fh:
            w = csv.writer(fh, delimiter=conv.delimiter, lineterminator="\r\n" if conv.encoding == "cp1252" else "\n")
            w.writerow(header)
            for i, row in enumerate(rows):
                out = []
                for c in columns:
                    v = row.get(c)
                    if isinstance(v, Raw):
                        out.append(str(v))
                    elif v is None:
                        out.append("")
                    elif isinstance(v, dt.date | tuple):
                        out.append(_format_date(v, date_fmt))
                    elif isinstance(v, float):
                        text = f"{v:g}"
                        out.append(text.replace(".", ",") if conv.decimal_mark == "," else text)
                    elif c in reverse_codes:
                        out.append(reverse_codes[c].get(str(v), str(v)))
                    else:
                        out.append(str(v))
                out += [str(row.get("__extra", {}).get(c, "")) for c in extra_cols]
                w.writerow(out)
                for column, rule, kind in row.get("__expect", []):
                    result.expected.append(Expected(path.name, i + 2, renames.get(column, column), rule, kind))
                for column, rule, kind in row.get("__header_expect", []):
                    result.expected.append(Expected(path.name, 1, column, rule, kind))
        result.rows[table] = len(rows)
    return result


def synthesize(out: Path, n_sites: int, study_id: str, patients: int, as_of: dt.date, seed: int = 1,
               error_sites: list[str] | None = None, error_kinds: list[str] | None = None,
               ae_per_patient: float = 2.0, dictionary: str | None = None) -> list[WrittenExport]:
    """Write exports of `n_sites` sites to `out/<site>/<study>/`, site configs to `out/sites/`,
    and the answer file `out/answers.json` listing every injected error. `dictionary`: an earlier version the
    study still takes (`also_accepts`), declared in the site configurations, for sites that have not moved on."""
    study = load_registry().study(study_id)
    # synthetic sites take part in every study of the registry, as the example sites in infra/sites do (a
    # study a site is not enrolled in is refused by validate, upload and the pipeline)
    sites = site_configs(n_sites, [s.study_id for s in load_registry().studies])
    if dictionary is not None and dictionary != study.schema_version:
        sites = [site.model_copy(update={"dictionaries": {study_id: dictionary}}) for site in sites]
    (out / "sites").mkdir(parents=True, exist_ok=True)
    written = []
    for i, site in enumerate(sites):
        site.to_yaml(out / "sites" / f"{site.site_id}.yaml")
        # Sites differ a lot in size: the largest has about 4 times the patients of the smallest.
        n = max(int(patients * (0.5 + 1.5 * ((i * 7) % 5) / 4)), 40)
        tables = generate_site(study, site.site_id, n, as_of, seed=seed * 1000 + i, ae_per_patient=ae_per_patient)
        if dictionary is not None:  # a system on an earlier dictionary records only the agents that one lists
            agents = set(load_dictionary(dictionary).table("treatments").columns["agent"].codes or [])
            tables["treatments"] = [r for r in tables["treatments"] if r["agent"] in agents]
        if error_sites and (site.site_id in error_sites or "all" in error_sites):
            inject_errors(tables, study, as_of, seed=seed * 1000 + i, kinds=error_kinds)
        written.append(write_export(tables, site, study, out / site.site_id / study_id))
    answers = {
        "study_id": study_id, "as_of": as_of.isoformat(), "seed": seed,
        "sites": {w.site.site_id: {"folder": str(w.folder), "rows": w.rows,
                                   "expected": [e.__dict__ for e in w.expected]} for w in written},
    }
    (out / "answers.json").write_text(json.dumps(answers, indent=2) + "\n", encoding="utf-8")
    return written
