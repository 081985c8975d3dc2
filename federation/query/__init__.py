"""Federated statistics with disclosure control.

Each site's summary is computed by DuckDB on that site's published version
only, with that site's read credentials; only summaries leave a site, and
every released number passes disclosure control per site and combined.
`run_query` is the Python API; `federation query` and the consortium report
call it.
"""

from __future__ import annotations

from federation.query.model import Exists, Filter, Query
from federation.query.runner import run_query

__all__ = ["Exists", "Filter", "Query", "run_query"]
