"""How the query service reaches the sites: a `SiteGateway` sends one `SiteTask` to each site and returns
each site's `SiteReply`, or the error that kept it from answering.

`InProcessGateway` answers tasks in this process with each site's query credential: it is for tests,
benchmarks and single-machine tools that hold those credentials anyway. The query service uses the node
gateway (`federation.service.nodes`), where the only way to a site's data is that site's node.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from federation.query.site.partial import SiteReply, SiteTask, answer_task, site_error
from federation.settings import Settings
from federation.storage import layout


class SiteGateway(Protocol):
    def candidate_sites(self, study_id: str) -> list[str]:
        """The sites to ask when a query names none."""

    def ask(self, tasks: dict[str, SiteTask]) -> dict[str, SiteReply | str]:
        """Each site's reply, or a message saying why it gave none."""


def published_sites(settings: Settings, study_id: str) -> list[str]:
    """Sites with a published version of `study_id` (on S3 no single identity can list them: every site)."""
    from federation.storage import open_store

    if settings.storage.kind != "local":
        return settings.site_ids()
    store = open_store(settings.storage, "pipeline")
    found = {layout.is_version_of(settings.storage, o.key, study_id)
             for o in store.list(layout.harmonized_root(settings.storage))}
    return sorted(s for s in found if s)


class InProcessGateway:
    """Answers every site's task in this process (tests, benchmarks): no network, same site code."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def candidate_sites(self, study_id: str) -> list[str]:
        return published_sites(self.settings, study_id)

    def ask(self, tasks: dict[str, SiteTask]) -> dict[str, SiteReply | str]:
        def one(item: tuple[str, SiteTask]) -> tuple[str, SiteReply | str]:
            site, task = item
            try:
                return site, answer_task(self.settings, site, task)
            except Exception as exc:  # noqa: BLE001 - any failure of one site is reported for that site
                return site, site_error(exc)

        if not tasks:
            return {}
        with ThreadPoolExecutor(max_workers=min(8, len(tasks))) as pool:
            return dict(pool.map(one, tasks.items()))
