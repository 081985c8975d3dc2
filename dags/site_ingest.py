"""
### site_ingest

Moves each site's uploads from the landing zone to analysis-ready Parquet in
the site's own storage location.

1. **discover**: list complete, unprocessed uploads (manifest present, every
   file of the right size). Incomplete uploads are recorded and left alone.
2. **process** (mapped, one task per upload, named `site / upload` in the UI):
   verify checksums, validate with the Great Expectations suites generated
   from the dictionary and the registry in use, then either harmonize and publish a new version
   atomically, or quarantine the upload and write the report to the site's
   report area. The task log shows each step with its rows and seconds.
   Storage outages are retried with exponential backoff; bad input never
   fails the task (quarantined, rejected and superseded uploads are correct
   outcomes, recorded in the upload catalog: `federation uploads`). An unexpected error
   fails the task at once (retrying would not help) and is recorded as
   `failed`.
3. **announce**: one `harmonized` Asset event for the run, listing every
   version published, so `consortium_report` runs once per ingest (skipped
   when nothing was published).
4. **summarize**: one line per upload in the log; the run **fails** when an
   upload could not be processed, and a failed run posts a message to the
   configured webhook (`notify_webhook`, `federation.notify`).

Published datasets are the Asset `harmonized` (`federation://harmonized/`); each event lists
the site, study and version of every upload the run published.

Configuration: `FEDERATION_CONFIG` names the settings YAML (storage, sites,
pseudonymisation key). All logic lives in `federation.ingest`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from airflow.sdk import Asset, dag, get_current_context, task

from federation.notify import WebhookNotifier
from federation.orchestration import HARMONIZED_ASSET, steps_in_task_log

if TYPE_CHECKING:
    from federation.ingest.pipeline import CatalogEntry

HARMONIZED = Asset(**HARMONIZED_ASSET)


@dag(
    schedule=dt.timedelta(minutes=10),
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["federation", "ingest"],
    doc_md=__doc__,
    on_failure_callback=WebhookNotifier(),
    default_args={"retries": 3, "retry_delay": dt.timedelta(seconds=20), "retry_exponential_backoff": True,
                  "max_retry_delay": dt.timedelta(minutes=10)},
)
def site_ingest() -> None:
    @task
    def discover() -> list[dict[str, str]]:
        from federation.ingest.pipeline import pending_uploads
        from federation.settings import load_settings

        found = [{"site_id": r.site_id, "upload_id": r.upload_id} for r in pending_uploads(load_settings())]
        print(f"{len(found)} upload(s) to process: " + ", ".join(f"{u['site_id']}/{u['upload_id']}" for u in found))
        return found

    @task(max_active_tis_per_dag=4, map_index_template="{{ upload_label }}")
    def process(upload: dict[str, str]) -> None:
        from airflow.exceptions import AirflowFailException

        from federation.ingest.landing import UploadRef
        from federation.ingest.pipeline import process_upload
        from federation.settings import load_settings
        from federation.storage import TransientStorageError

        steps_in_task_log()
        get_current_context()["upload_label"] = f"{upload['site_id']} / {upload['upload_id']}"  # type: ignore[typeddict-unknown-key]
        try:
            entry = process_upload(load_settings(), UploadRef(upload["site_id"], upload["upload_id"], True))
        except TransientStorageError:
            raise  # retried with backoff
        except Exception as exc:  # recorded as failed in the catalog; another try would fail the same way
            raise AirflowFailException(f"{upload['site_id']}/{upload['upload_id']} could not be processed: "
                                       f"{type(exc).__name__}: {exc}") from exc
        print(f"{entry.site_id}/{entry.upload_id}: {entry.status} {entry.version_id} {entry.message}".rstrip())

    def outcomes(uploads: list[dict[str, str]]) -> list[tuple[str, CatalogEntry | None]]:
        """Each upload of the run ("site/upload") with its catalog entry, whatever its task did."""
        from federation.ingest.landing import UploadRef
        from federation.ingest.pipeline import catalog_entry
        from federation.settings import load_settings

        settings = load_settings()
        refs = [UploadRef(u["site_id"], u["upload_id"], True) for u in uploads or []]
        return [(ref.key, catalog_entry(settings, ref)) for ref in refs]

    @task(outlets=[HARMONIZED], trigger_rule="all_done")
    def announce(uploads: list[dict[str, str]]) -> None:
        from airflow.exceptions import AirflowSkipException

        published = [{"site_id": e.site_id, "study_id": e.study_id, "version_id": e.version_id}
                     for _, e in outcomes(uploads) if e is not None and e.status == "published"]
        if not published:
            raise AirflowSkipException("nothing was published in this run")
        get_current_context()["outlet_events"][HARMONIZED].extra = {"published": published}
        print(f"announced {len(published)} published version(s)")

    @task(trigger_rule="all_done")
    def summarize(uploads: list[dict[str, str]]) -> dict[str, int]:
        from airflow.exceptions import AirflowFailException

        counts: dict[str, int] = {}
        unprocessed = []
        for label, e in outcomes(uploads):
            status = e.status if e is not None else "not processed"
            print(f"{label}: {status} {e.version_id if e else ''} {e.message if e else ''}".rstrip())
            counts[status] = counts.get(status, 0) + 1
            if status not in ("published", "quarantined", "rejected", "superseded"):
                unprocessed.append(f"{label} ({status}{': ' + e.message if e and e.message else ''})")
        if unprocessed:
            raise AirflowFailException(f"{len(unprocessed)} of {len(uploads)} upload(s) could not be processed: "
                                       + "; ".join(unprocessed))
        return counts

    found = discover()
    done = process.expand(upload=found)
    done >> [announce(found), summarize(found)]


site_ingest()
