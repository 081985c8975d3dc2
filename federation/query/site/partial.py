"""The site part of a federated query: answer one task of the query service at one site.

`answer_task` is what a site node runs for each task it pulls (and what the in-process gateway runs in
tests): it opens the site's published version of the study with the site's own read credential, tightens
the service's thresholds with the site's own, checks every column against the node's copy of the query
policy, runs the site guards and computes each requested summary. Nothing but `SiteReply` leaves.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from federation.config import SiteThresholds, load_site
from federation.exceptions import ConfigurationError, FederationError
from federation.query.guard import QueryRefused
from federation.query.policy import (
    ConsortiumDisclosurePolicy,
    EffectiveThresholds,
    effective_thresholds,
    load_query_policy,
)
from federation.query.site.data import open_site
from federation.query.site.guards import SITE_GUARDS
from federation.query.site.summaries import AnyAnswer, AnyRequest, NotTakingPart, Refusal, SiteContext, check_columns
from federation.settings import Settings

log = logging.getLogger("federation.node")


class SiteTask(BaseModel):
    """What the service asks of one site: summaries of one study, on one version (None: the latest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_id: str = Field(max_length=64)
    version: int | None = Field(default=None, ge=1)
    thresholds: ConsortiumDisclosurePolicy  # the consortium's; the site tightens them with its own
    requests: list[AnyRequest] = Field(min_length=1, max_length=200)


class SiteReply(BaseModel):
    """A site's answers to one task, in the order of its requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site_id: str
    version_number: int
    version_id: str
    thresholds: EffectiveThresholds
    answers: list[AnyAnswer]


def site_thresholds(settings: Settings, site_id: str, consortium: ConsortiumDisclosurePolicy) -> EffectiveThresholds:
    """The consortium's thresholds tightened by the site's own (re-read when its configuration file changes)."""
    path = settings.sites_dir / f"{site_id}.yaml"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = -1
    return effective_thresholds(consortium, _own_thresholds(settings.sites_dir, site_id, stamp))


@lru_cache(maxsize=64)
def _own_thresholds(sites_dir: Path, site_id: str, stamp: int) -> SiteThresholds | None:
    try:
        return load_site(site_id, sites_dir).disclosure
    except ConfigurationError:
        return None


def site_error(exc: BaseException) -> str:
    """What may leave a site about a failure: our own messages, else only the kind of error. A database
    error can quote a value it failed to convert, i.e. one patient's value; its text stays in the node log."""
    if isinstance(exc, FederationError):
        return str(exc)
    return f"{type(exc).__name__} at the site (the node's log has the details)"


def answer_task(settings: Settings, site_id: str, task: SiteTask) -> SiteReply:
    """Answer `task` from `site_id`'s published data; raises SiteUnavailable when there is none."""
    data = open_site(settings.storage, site_id, task.study_id, task.version)
    thresholds = site_thresholds(settings, site_id, task.thresholds)
    ctx = SiteContext(study_id=task.study_id, data=data, thresholds=thresholds,
                      policy=load_query_policy(settings.query_policy),
                      opener=lambda v: open_site(settings.storage, site_id, task.study_id, v))
    answers = []
    try:
        for request in task.requests:
            try:
                check_columns(request, ctx)
                for guard in SITE_GUARDS:
                    if guard.enabled():
                        guard.check(request, ctx)
                answers.append(request.answer(ctx))
            except NotTakingPart as exc:
                answers.append(Refusal(reason=exc.reason, not_taking_part=True))
            except QueryRefused as exc:
                answers.append(Refusal(reason=exc.reason, suggestion=exc.suggestion))
            except Exception as exc:  # noqa: BLE001 - a summary that fails is refused without its error text
                log.warning("%s: %s failed: %s", site_id, request.kind, exc)
                answers.append(Refusal(reason=f"{site_id} could not compute a summary ({site_error(exc)})"))
    finally:
        data.close()
    return SiteReply(site_id=site_id, version_number=data.version.number, version_id=data.version.version_id,
                     thresholds=thresholds, answers=answers)
