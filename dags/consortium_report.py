"""
### consortium_report

Rebuilds the consortium report whenever a site publishes a new dataset
version (scheduled on the `harmonized` Asset that `site_ingest` updates).
The standard queries are in the registry's `reports/consortium.yaml` (else
`infra/reports/consortium.yaml`); each is asked of the query service
(FEDERATION_SERVER) with the report's own service token
(FEDERATION_TOKEN, or the credentials file in FEDERATION_CREDENTIALS), so
the same disclosure control and audit apply as to any analyst. The
report (HTML with plots, plus CSV) is written to `<report_dir>/<timestamp>/`
and `<report_dir>/latest/`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, dag, task

from federation.notify import WebhookNotifier
from federation.orchestration import HARMONIZED_ASSET

HARMONIZED = Asset(**HARMONIZED_ASSET)


@dag(
    schedule=[HARMONIZED],
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["federation", "report"],
    doc_md=__doc__,
    on_failure_callback=WebhookNotifier(),
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=1)},
)
def consortium_report() -> None:
    @task
    def build() -> str:
        import shutil
        from pathlib import Path

        from federation.client import Client
        from federation.ingest.pipeline import list_uploads
        from federation.query.report import DEFAULT_SPEC, build_report
        from federation.schema import registry_file
        from federation.settings import load_settings

        settings = load_settings()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = Path(settings.report_dir) / stamp
        try:  # which sites' latest uploads are missing from the tables, and why (the pipeline's catalog)
            uploads = list_uploads(settings)
        except Exception as exc:  # the report still comes out; it says the status is unknown
            print(f"the upload catalog could not be read ({type(exc).__name__}: {exc}); no data status")
            uploads = None
        spec = registry_file("reports/consortium.yaml")  # the registry's own report (decision 0011)
        if not spec.is_file():
            spec = DEFAULT_SPEC
        index = build_report(Client(), out, spec_path=spec, progress=print, uploads=uploads)
        latest = Path(settings.report_dir) / "latest"
        if latest.exists():
            shutil.rmtree(latest)
        shutil.copytree(out, latest)
        return str(index)

    build()


consortium_report()
