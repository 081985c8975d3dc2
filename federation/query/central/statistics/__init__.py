"""The central halves of the statistics, one module each; importing this package registers them all."""

from __future__ import annotations

from federation.query.central.statistics import cif, counts, km, moments, proportion, quantiles, regression
from federation.query.central.statistics.base import Statistic

__all__ = ["Statistic", "cif", "counts", "km", "moments", "proportion", "quantiles", "regression"]
