"""
### site_ingest

Moves each site's uploads from the landing zone to analysis-ready Parquet in
the site's own storage location.

1. **discover**: list complete, unprocessed uploads (manifest present, every
   file of the right size). Incomplete uploads are recorded and left alone.
2. **process** (mapped, one task per upload): verify checksums, validate with
   the Great Expectations suites generated from `schemas/`, then either
   harmonize and publish a new version atomically, or quarantine the upload
   and write the report to the site's report area. Storage outages are
   retried with exponential backoff; bad input never fails the task, it is
   recorded in the upload catalog (`federation uploads`).
3. **summarize**: one line per upload in the log, whatever happened.

Published datasets are the Asset `harmonized` (`federation://harmonized/`); each event says
which site, study and version.

Configuration: `FEDERATION_CONFIG` names the settings YAML (storage, sites,
pseudonymisation key). All logic lives in `federation.ingest`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, dag, task

from federation.orchestration import HARMONIZED_ASSET

HARMONIZED = Asset(**HARMONIZED_ASSET)


@dag(
    schedule=dt.timedelta(minutes=10),
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["federation", "ingest"],
    doc_md=__doc__,
    default_args={"retries": 3, "retry_delay": dt.timedelta(seconds=20), "retry_exponential_backoff": True,
                  "max_retry_delay": dt.timedelta(minutes=10)},
)
def site_ingest() -> None:
    @task
    def discover() -> list[dict[str, str]]:
        from federation.ingest.pipeline import pending_uploads
        from federation.settings import load_settings

        return [{"site_id": r.site_id, "upload_id": r.upload_id} for r in pending_uploads(load_settings())]

    @task(outlets=[HARMONIZED], max_active_tis_per_dag=4)
    def process(upload: dict[str, str], **context: object) -> dict[str, object]:
        from federation.ingest.landing import UploadRef
        from federation.ingest.pipeline import process_upload
        from federation.settings import load_settings

        entry = process_upload(load_settings(), UploadRef(upload["site_id"], upload["upload_id"], True))
        if entry.status == "published":
            events = context["outlet_events"]
            events[HARMONIZED].extra = {  # type: ignore[index]
                "site_id": entry.site_id, "study_id": entry.study_id, "version_id": entry.version_id}
        return {"upload": f"{entry.site_id}/{entry.upload_id}", "status": entry.status,
                "version_id": entry.version_id, "report": entry.report, "message": entry.message}

    @task(trigger_rule="all_done")
    def summarize(results: list[dict[str, object]]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in results or []:
            print(f"{r['upload']}: {r['status']} {r['version_id'] or ''} {r['message']}")
            counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
        return counts

    summarize(process.expand(upload=discover()))


site_ingest()
