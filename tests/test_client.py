"""The analyst's Python client: tables with suppressed values missing and flagged, plots, HTML view."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from federation.client import Client
from federation.localrun import LocalFederation
from tests.federated import STUDY

pytestmark = pytest.mark.integration


def test_client_tables_plots_and_html(federated_nodes: LocalFederation, tmp_path: Path) -> None:
    c = Client(federated_nodes.url, federated_nodes.token("analyst"))
    counts = c.query(STUDY, group_by=["arm"])
    per_site = counts.per_site
    hidden = per_site[(per_site["arm"] == "NR") & (per_site["site"] == "site-a")].iloc[0]
    assert bool(hidden["suppressed"]) and math.isnan(hidden["n"])  # missing, never zero
    combined = counts.combined
    assert set(combined.columns) >= {"arm", "n", "suppressed"} and "site" not in combined.columns
    released = combined[~combined["suppressed"]]
    assert (released["n"] >= 5).all()
    html = counts._repr_html_()
    assert "suppr." in html and "audit entry" in html
    # a Cox model first: after curves of EFS, its total of events minus a curve's events before its last point
    # would be the few events after that point, and the differencing guard rightly refuses it
    cox = c.query(STUDY, statistic="cox", endpoint="efs", covariates=["age_at_diagnosis_years"])
    assert cox.status == "released", cox.reason
    row = cox.combined.iloc[0]
    assert row["hazard_ratio_ci95_low"] < row["hazard_ratio"] < row["hazard_ratio_ci95_high"]
    assert row["hazard_ratio_ci95_low"] == pytest.approx(math.exp(row["estimate"] - 1.959963984540054 * row["se"]))
    km = c.query(STUDY, statistic="km", endpoint="efs", group_by=["histology_risk"])
    assert km.result.status == "released", km.result.reason
    assert {"day", "survival", "ci95_low", "ci95_high", "at_risk"} <= set(km.combined.columns)
    tests = km.tests()
    assert list(tests["test"]) == ["logrank", "logrank_stratified_by_site"]
    assert 0 <= tests["p"][0] <= 1 and tests["df"][0] == 1 and tests["groups"][0] == ["FAVORABLE", "UNFAVORABLE"]
    assert {"histology_risk", "site", "median_days", "ci95_low", "ci95_high"} <= set(km.medians().columns)
    assert f"p = {tests['p'][0]:.4f}" in repr(km)
    assert km.plot(tmp_path / "km.png").stat().st_size > 10_000
    cif = c.query(STUDY, statistic="cif", endpoint="efs", cause=["RELAPSE", "PROGRESSION"], group_by=["sex"])
    assert cif.result.status == "released", cif.result.reason
    assert {"sex", "day", "incidence", "competing", "at_risk"} <= set(cif.combined.columns)
    tests = cif.tests().set_index("test")
    assert tests.loc["gray", "hazard"].startswith("subdistribution (Gray)")
    assert tests.loc["logrank", "hazard"].startswith("cause-specific")
    assert cif.plot(tmp_path / "cif.png").stat().st_size > 10_000
    assert km.plot() is not None  # a matplotlib figure for notebooks
    refused = c.query(STUDY, group_by=["pid"])
    assert refused.status == "refused" and "Refused" in refused._repr_html_()
    assert any(h["outcome"] == "refused" for h in c.history())
