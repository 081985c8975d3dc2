"""Failure notifications: an Airflow notifier that posts a JSON message to a webhook.

The DAGs set `WebhookNotifier()` as their `on_failure_callback`, so a failed run (an upload that could not be
processed, storage that stayed down through the retries) sends one message. The address is the settings'
`notify_webhook`, or $FEDERATION_NOTIFY_WEBHOOK (which wins; webhook addresses often hold a token, so they
can be kept out of the settings file). The body carries a `text` line, which Slack, Mattermost and most chat
webhooks show as is, and the details as fields: the DAG, the run, Airflow's reason, and every upload the
catalog records as failed with its message.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx
from airflow.sdk.bases.notifier import BaseNotifier

WEBHOOK_ENV = "FEDERATION_NOTIFY_WEBHOOK"

log = logging.getLogger(__name__)


def webhook_url(configured: str | None) -> str | None:
    return os.environ.get(WEBHOOK_ENV) or configured or None


def failure_message(dag_id: str, run_id: str, reason: str, failed: list[dict[str, str]]) -> dict[str, Any]:
    """The JSON body of a failure notification."""
    lines = [f"{dag_id} run {run_id} failed: {reason or 'a task failed'}."]
    if failed:
        lines.append(f"{len(failed)} upload(s) could not be processed:")
        lines += [f"- {f['site_id']}/{f['upload_id']}: {f['message']}"
                  + (f" (failing for {f['failures']} runs)" if int(f.get("failures", "1")) > 1 else "")
                  for f in failed]
        lines.append("After fixing the cause, the next run retries them; `federation uploads` shows their status.")
    return {"text": "\n".join(lines), "dag_id": dag_id, "run_id": run_id, "reason": reason,
            "failed_uploads": failed}


REMIND_EVERY = 144  # failed attempts between reminders: a day of site_ingest runs every 10 minutes


def worth_telling(failed: list[dict[str, str]]) -> bool:
    """Whether a failed run is news: an upload failing for the first time (or a daily reminder of one still
    failing), or a failure that is not an upload's (storage down, a bug before any upload). A run that only
    retried uploads already reported stays red in Airflow but sends nothing."""
    if not failed:
        return True
    return any(int(f.get("failures", "1")) % REMIND_EVERY == 1 for f in failed)


def failed_uploads() -> list[dict[str, str]]:
    """Uploads the catalog records as failed (an unexpected error; cleared once one processes)."""
    from federation.ingest.pipeline import read_catalog
    from federation.settings import load_settings
    from federation.storage import open_store

    settings = load_settings()
    entries = read_catalog(open_store(settings.storage, "pipeline"), settings)
    return [{"site_id": e.site_id, "upload_id": e.upload_id, "message": e.message, "failures": str(e.failures or 1)}
            for e in entries if e.status == "failed"]


def post(url: str, body: dict[str, Any]) -> None:
    response = httpx.post(url, json=body, timeout=15)
    response.raise_for_status()


class WebhookNotifier(BaseNotifier):
    """Posts `failure_message` to the configured webhook; logs a warning when none is configured."""

    def __init__(self, url: str | None = None) -> None:
        super().__init__()
        self.url = url

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render (no template fields). Skipping it also avoids asking `dag.test()`'s serialized DAG
        for a template environment it does not have (Airflow 3.3: AttributeError, and no message sent)."""

    def notify(self, context: Any) -> None:
        from federation.settings import load_settings

        url = self.url or webhook_url(load_settings().notify_webhook)
        dag = context.get("dag")
        dag_id = getattr(dag, "dag_id", "") or str(context.get("dag_id", ""))
        run_id = str(context.get("run_id") or getattr(context.get("dag_run"), "run_id", ""))
        if not url:
            log.warning("%s run %s failed; no notify_webhook is set, so nobody was told", dag_id, run_id)
            return
        try:
            failed = failed_uploads()
        except Exception as exc:  # the message must go out even when storage is what failed
            failed = [{"site_id": "?", "upload_id": "?", "message": f"the upload catalog could not be read: {exc}"}]
        if not worth_telling(failed):
            log.info("%s run %s failed again on uploads already reported; no message (a reminder every %d "
                     "failed runs)", dag_id, run_id, REMIND_EVERY)
            return
        post(url, failure_message(dag_id, run_id, str(context.get("reason") or ""), failed))
        log.info("failure of %s run %s sent to the webhook", dag_id, run_id)
