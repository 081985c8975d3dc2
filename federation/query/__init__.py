"""Federated statistics with disclosure control, split at the trust boundary.

- `site/`: what runs inside a site node, next to the site's data: per-site summaries only
  (`site.summaries` lists everything that may leave a site) and the site's own guards.
- `central/`: what runs in the query service: combination, disclosure control, audit.
- `model` (the query an analyst asks), `policy` and `columns` are shared by both.

`run_local` runs a query with every site answered in this process (tests, benchmarks); analysts ask
through the query service (`federation.service`, `federation.client`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from federation.query.model import Exists, Filter, Query

if TYPE_CHECKING:
    from federation.query.central.audit import AuditLog
    from federation.query.central.runner import Result
    from federation.settings import Settings

__all__ = ["Exists", "Filter", "Query", "run_local"]


def run_local(q: Query, settings: Settings, analyst: str, *, audit: AuditLog | None = None) -> Result:
    """Run `q` with every site answered in this process, with the policy and audit log of `settings`."""
    from federation.query.central.audit import AuditLog
    from federation.query.central.gateway import InProcessGateway
    from federation.query.central.runner import run_query
    from federation.query.policy import load_query_policy

    return run_query(q, InProcessGateway(settings), load_query_policy(settings.query_policy),
                     audit or AuditLog(settings.audit_log), analyst)
