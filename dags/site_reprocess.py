"""
### site_reprocess

Processes one upload again with today's site configuration and dictionary
(after a fix to a site's code map, date format or encoding), as
`federation reprocess` does, and announces a newly published version on the
`harmonized` Asset so that `consortium_report` is rebuilt.

Trigger it with the site and the upload (`federation uploads` lists them):

    airflow dags trigger site_reprocess --conf '{"site": "site-d", "upload": "u-02f1e2903733786c"}'

or from the UI ("Trigger DAG" with the two parameters). A published upload
gets a new version in its own data folder (earlier versions stay readable);
an upload that fails validation again is quarantined with its new report.
Refused (the run fails, saying why) for an upload that a later published
upload of the same site and study superseded. See docs/operations.md,
"Re-process an upload".
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, Param, dag, get_current_context, task

from federation.notify import WebhookNotifier
from federation.orchestration import HARMONIZED_ASSET, steps_in_task_log

HARMONIZED = Asset(**HARMONIZED_ASSET)


@dag(
    schedule=None,
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    tags=["federation", "ingest"],
    doc_md=__doc__,
    on_failure_callback=WebhookNotifier(),
    params={"site": Param("", type="string", description="the site of the upload, e.g. site-d"),
            "upload": Param("", type="string", description="the upload id, as `federation uploads` lists it")},
)
def site_reprocess() -> None:
    @task(outlets=[HARMONIZED])
    def reprocess_upload(params: dict[str, str] | None = None) -> None:
        from airflow.exceptions import AirflowFailException, AirflowSkipException

        from federation.exceptions import FederationError
        from federation.ingest.landing import UploadRef
        from federation.ingest.pipeline import reprocess
        from federation.settings import load_settings

        steps_in_task_log()
        site, upload = (params or {}).get("site", ""), (params or {}).get("upload", "")
        if not site or not upload:
            raise AirflowFailException("give the site and the upload: --conf '{\"site\": ..., \"upload\": ...}'")
        try:
            entry = reprocess(load_settings(), UploadRef(site, upload, True))
        except FederationError as exc:
            raise AirflowFailException(str(exc)) from exc
        print(f"{entry.site_id}/{entry.upload_id}: {entry.status} {entry.version_id} {entry.message}".rstrip())
        if entry.status != "published" or "already published" in entry.message:
            raise AirflowSkipException(f"nothing new was published ({entry.status}); no Asset event")
        get_current_context()["outlet_events"][HARMONIZED].extra = {"published": [
            {"site_id": entry.site_id, "study_id": entry.study_id, "version_id": entry.version_id}]}

    reprocess_upload()


site_reprocess()
