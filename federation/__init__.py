"""Federated statistics for multicenter pediatric oncology trials.

Each stage of the pipeline (validation, harmonization, publishing, federated
query) is importable and testable without Airflow; `dags/` only wires them.
"""

from __future__ import annotations

__version__ = "0.1.0"
