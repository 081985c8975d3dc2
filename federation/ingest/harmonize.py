"""Harmonization: a validated export becomes the analysis-ready tables of the
data dictionary's harmonized layer (schemas/v<N>/dictionary.yaml `harmonized`).

Site mappings and code maps were applied while reading; here units are
converted, dates become whole days since the patient's enrollment, the
derived variables are computed, and the site's patient id is replaced by a
keyed pseudonym. No raw identifier and no raw date reaches the output.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from federation.generate import harmonized_arrow_schema
from federation.schema import Dictionary
from federation.validation.parts import PartStore
from federation.validation.reader import EPOCH, SourceTable

AGE_GROUPS = [(0.0, 1.0, "<1"), (1.0, 5.0, "1-4"), (5.0, 10.0, "5-9"), (10.0, 15.0, "10-14"), (15.0, 22.0, "15-21")]
DAYS_PER_YEAR = 365.25


def pseudonym(key: bytes, study_id: str, site_id: str, patient_id: str) -> str:
    """HMAC-SHA256 of (study, site, patient id) under the consortium key; 32 hex characters."""
    msg = "\x1f".join((study_id, site_id, patient_id)).encode("utf-8")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:32]


def pseudonyms(key: bytes, study_id: str, site_id: str, patient_ids: list[str]) -> list[str]:
    """`pseudonym` of many patients: the keyed HMAC state is made once and copied for each (the same digests)."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    prefix = f"{study_id}\x1f{site_id}\x1f".encode()
    out = []
    for patient_id in patient_ids:
        h = keyed.copy()
        h.update(prefix + patient_id.encode("utf-8"))
        out.append(h.hexdigest()[:32])
    return out


def age_group(years: pd.Series) -> pd.Series:
    out = pd.Series([None] * len(years), index=years.index, dtype="object")
    for lo, hi, label in AGE_GROUPS:
        out[(years >= lo) & (years < hi)] = label
    return out


def _rel(day: pd.Series, enrollment: pd.Series) -> pd.Series:
    return (day - enrollment).astype("Int32")


def _convert_dose(frame: pd.DataFrame, dictionary: Dictionary) -> tuple[pd.Series, pd.Series]:
    conversions = dictionary.table("treatments").columns["dose_unit"].converts
    dose = frame["dose"].astype("float64").copy()
    unit = frame["dose_unit"].astype("object").copy()
    for source, conv in conversions.items():
        mask = unit == source
        dose[mask] = dose[mask] * conv.factor
        unit[mask] = conv.to
    return dose, unit


CHUNK_ROWS = 500_000  # rows of a table harmonized at once (memory)


def harmonize(dictionary: Dictionary, sources: dict[str, SourceTable], *, study_id: str, site_id: str,
              upload_id: str, key: bytes) -> dict[str, pa.Table]:
    """The harmonized tables (Arrow, with the dictionary's harmonized schema) of one validated export."""
    pieces: dict[str, list[pa.Table]] = {}
    for name, table in harmonize_pieces(dictionary, sources, study_id=study_id, site_id=site_id,
                                        upload_id=upload_id, key=key):
        pieces.setdefault(name, []).append(table)
    return {name: pa.concat_tables(tables) for name, tables in pieces.items()}


def harmonize_pieces(dictionary: Dictionary, sources: dict[str, SourceTable], *, study_id: str, site_id: str,
                     upload_id: str, key: bytes) -> Iterator[tuple[str, pa.Table]]:
    """The harmonized tables in pieces of at most CHUNK_ROWS rows, each as soon as it is made (so only one
    piece is ever in pandas)."""
    patients = sources["patients"].frame
    ids = pa.array(patients["patient_id"], pa.string(), from_pandas=True)
    pids = pa.array(pseudonyms(key, study_id, site_id, ids.to_pylist()), pa.string())
    enrolled = patients["enrollment_date"].to_numpy(dtype="float64")

    def rows_of(frame: pd.DataFrame) -> pa.Array:
        """Each row's patient as a row of patients (null: none), by pyarrow's hash lookup."""
        return pc.index_in(pa.array(frame["patient_id"], pa.string(), from_pandas=True), value_set=ids)

    def enrol(frame: pd.DataFrame, rows: pa.Array) -> pd.Series:
        at = pc.fill_null(rows, -1).to_numpy(zero_copy_only=False)
        return pd.Series(np.where(at >= 0, enrolled[at], np.nan), index=frame.index)
    diag = sources["diagnoses"].frame.set_index("patient_id")
    outc = sources["outcomes"].frame.set_index("patient_id")

    def base(frame: pd.DataFrame, rows: pa.Array) -> pd.DataFrame:
        out = pd.DataFrame(index=frame.index)
        out["study_id"] = study_id
        out["site_id"] = site_id
        out["upload_id"] = upload_id
        out["schema_version"] = dictionary.schema_version
        out["pid"] = pd.Series(pc.take(pids, rows).to_pandas(), dtype="str").set_axis(frame.index)
        return out

    def arrow(name: str, frame: pd.DataFrame) -> tuple[str, pa.Table]:
        schema = harmonized_arrow_schema(dictionary, name)
        frame = frame.reset_index(drop=True)
        table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
        return name, table.replace_schema_metadata(schema.metadata)

    def chunks(name: str) -> Iterator[pd.DataFrame]:
        frame = sources[name].frame
        for start in range(0, max(len(frame), 1), CHUNK_ROWS):
            yield frame.iloc[start:start + CHUNK_ROWS]

    p = base(patients, rows_of(patients))
    for col in ("sex", "arm", "race", "ethnicity"):
        p[col] = patients[col]
    p["enrollment_year"] = (EPOCH + pd.to_timedelta(patients["enrollment_date"], unit="D")).dt.year.astype("int16")
    diag_day = patients["patient_id"].map(diag["diagnosis_date"])
    age = (diag_day - patients["birth_date"]) / DAYS_PER_YEAR
    p["age_at_diagnosis_years"] = age.round(4)
    p["age_group"] = age_group(age)
    o = outc.reindex(patients["patient_id"])
    o.index = patients.index
    last = o["last_contact_date"] - patients["enrollment_date"]
    efs_event = o["first_event"].ne("NONE") & o["first_event"].notna()
    p["efs_days"] = np.where(efs_event, o["first_event_date"] - patients["enrollment_date"], last)
    p["efs_event"] = efs_event.astype(bool)
    os_event = o["vital_status"].eq("DEAD")
    p["os_days"] = np.where(os_event, o["death_date"] - patients["enrollment_date"], last)
    p["os_event"] = os_event.astype(bool)
    late: dict[str, pd.Series] | None = None
    for c in dictionary.harmonized.tables["patients"]:
        if c.marker is not None:
            p[c.name] = marker_status(patients["patient_id"], sources.get("biomarkers"), c.marker.gene,
                                      c.marker.alteration)
        elif c.exposure is not None:
            p[c.name] = exposure(patients["patient_id"], sources.get("treatments"), c.exposure.agent_class,
                                 dictionary)
        elif c.late_effect is not None:
            order = next((x.values or [] for x in dictionary.harmonized.tables["patients"] if x.late_effect == "first"),
                         [])
            late = late or first_late_effect(patients, o, sources.get("late_effects"), order)
            p[c.name] = late[c.late_effect]
    yield arrow("patients", p)
    del p, o, age, diag_day, late

    d = sources["diagnoses"].frame
    rows = rows_of(d)
    h = base(d, rows)
    h["diagnosis_day"] = _rel(d["diagnosis_date"], enrol(d, rows))
    for col in ("histology_icdo3", "topography_icdo3", "stage", "histology_risk", "risk_group"):
        h[col] = d[col]
    yield arrow("diagnoses", h)

    for t in chunks("treatments") if "treatments" in sources else ():
        rows = rows_of(t)
        h = base(t, rows)
        e = enrol(t, rows)
        h["agent"] = t["agent"]
        for c in dictionary.harmonized.tables["treatments"]:
            if c.mapping:  # a class derived from the agent by the dictionary's code list (v2), never typed by sites
                h[c.name] = t[(c.derived or "").split(":")[1].split("->")[0]].map(c.mapping)
        h["start_day"] = _rel(t["start_date"], e)
        h["end_day"] = _rel(t["end_date"].astype("float64"), e)
        h["dose"], h["dose_unit"] = _convert_dose(t, dictionary)
        yield arrow("treatments", h)

    for a in chunks("adverse_events") if "adverse_events" in sources else ():
        rows = rows_of(a)
        h = base(a, rows)
        for col in ("ae_term", "meddra_code"):
            h[col] = a[col]
        h["grade"] = a["grade"].astype("int8")
        h["onset_day"] = _rel(a["onset_date"], enrol(a, rows))
        h["serious"] = a["serious"]
        h["related"] = a["related"]
        yield arrow("adverse_events", h)

    for name in declared_tables(dictionary):  # tables harmonized from their declaration alone (v2)
        for frame in chunks(name) if name in sources else ():
            rows = rows_of(frame)
            h = base(frame, rows)
            e = enrol(frame, rows)
            for c in dictionary.harmonized.tables[name]:
                source = (c.derived or "").split("->")[0]
                if (c.derived or "").endswith("->day"):
                    h[c.name] = _rel(frame[source].astype("float64"), e)
                elif c.type in ("int8", "int16", "int32"):
                    h[c.name] = frame[source].astype("float64").astype(f"Int{c.type[3:]}")
                else:
                    h[c.name] = frame[source]
            yield arrow(name, h)

    o = sources["outcomes"].frame
    rows = rows_of(o)
    h = base(o, rows)
    e = enrol(o, rows)
    h["last_contact_day"] = _rel(o["last_contact_date"], e)
    h["vital_status"] = o["vital_status"]
    h["death_day"] = _rel(o["death_date"].astype("float64"), e)
    h["first_event"] = o["first_event"]
    h["first_event_day"] = _rel(o["first_event_date"].astype("float64"), e)
    yield arrow("outcomes", h)


def marker_status(patient_ids: pd.Series, biomarkers: SourceTable | None, gene: str, alteration: str) -> pd.Series:
    """Each patient's status for one alteration (`schema.Marker`): DETECTED in any sample, else NOT_DETECTED
    if tested, else INDETERMINATE, else NOT_TESTED; missing for every patient when no biomarkers were sent."""
    if biomarkers is None or not biomarkers.present:
        return pd.Series([None] * len(patient_ids), index=patient_ids.index, dtype="object")
    b = biomarkers.frame
    rows = b[(b["gene"] == gene) & (b["alteration"] == alteration)]
    status = pd.Series("NOT_TESTED", index=patient_ids.index, dtype="object")
    for result in ("INDETERMINATE", "NOT_DETECTED", "DETECTED"):  # the later wins
        status[patient_ids.isin(set(rows.loc[rows["result"] == result, "patient_id"]))] = result
    return status


def exposure(patient_ids: pd.Series, treatments: SourceTable | None, agent_class: str,
             dictionary: Dictionary) -> pd.Series:
    """Whether each patient had a treatment of `agent_class` (`schema.Exposure`); missing for every patient
    when no treatments were sent."""
    if treatments is None or not treatments.present:
        return pd.Series([None] * len(patient_ids), index=patient_ids.index, dtype="object")
    mapping = next(c.mapping for c in dictionary.harmonized.tables["treatments"] if c.mapping)
    t = treatments.frame
    given = set(t.loc[t["agent"].map(mapping) == agent_class, "patient_id"])
    return patient_ids.isin(given).astype(bool)


def first_late_effect(patients: pd.DataFrame, outcomes: pd.DataFrame, late: SourceTable | None,
                      order: list[str]) -> dict[str, pd.Series]:
    """Each patient's first late effect, as efs is the first event (`HarmonizedColumn.late_effect`): "days"
    from enrollment to it, or to death before one, or to last contact; "event"; "first": its category (of
    several on one day, the first in `order`), DEATH or NONE. All missing when no late_effects were sent."""
    index = patients.index
    if late is None or not late.present:
        none = pd.Series([None] * len(index), index=index, dtype="object")
        return {"days": none, "event": none, "first": none}
    f = late.frame[["patient_id", "category", "onset_date"]].copy()
    f["rank"] = f["category"].map({c: i for i, c in enumerate(order)}).fillna(len(order))
    f = f.sort_values(["onset_date", "rank"], kind="stable").drop_duplicates("patient_id")
    first = f.set_index("patient_id").reindex(patients["patient_id"])
    first.index = index
    had = first["onset_date"].notna()
    died = outcomes["vital_status"].eq("DEAD") & ~had
    enrolled = patients["enrollment_date"]
    days = np.where(had, first["onset_date"] - enrolled,
                    np.where(died, outcomes["death_date"] - enrolled, outcomes["last_contact_date"] - enrolled))
    category = np.where(had, first["category"], np.where(died, "DEATH", "NONE"))
    return {"days": pd.Series(days, index=index), "event": (had | died).astype(bool),
            "first": pd.Series(category, index=index, dtype="object")}


def declared_tables(dictionary: Dictionary) -> list[str]:
    """Harmonized tables made from their declaration (every column `derived`), not by hand-written code."""
    return [name for name, cols in dictionary.harmonized.tables.items() if cols and all(c.derived for c in cols)
            and not any(c.mapping for c in cols)]


def harmonize_parts(dictionary: Dictionary, parts: PartStore, *, study_id: str, site_id: str, upload_id: str,
                    key: bytes, folder: Path) -> dict[str, Path]:
    """Harmonize a validated export part by part (each part holds all the rows of its patients, so each is
    harmonized exactly on its own) into one Parquet file per table in `folder`; memory stays that of one part."""
    writers: dict[str, pq.ParquetWriter] = {}
    paths: dict[str, Path] = {}
    try:
        for p in range(parts.parts):
            sources = {t: s for t, s in parts.sources(p, values_only=True).items() if s.present}
            for name, table in harmonize_pieces(dictionary, sources, study_id=study_id, site_id=site_id,
                                                upload_id=upload_id, key=key):
                if name not in writers:
                    paths[name] = folder / f"{name}.parquet"
                    writers[name] = pq.ParquetWriter(str(paths[name]), table.schema, compression="zstd")
                writers[name].write_table(table)
            del sources
            if parts.parts > 1:
                gc.collect()  # the part's frames are in reference cycles (pandas); free them before the next part
    finally:
        for writer in writers.values():
            writer.close()
    return paths
