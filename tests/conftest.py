from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

AS_OF = dt.date(2025, 6, 30)


@pytest.fixture(scope="session")
def as_of() -> dt.date:
    return AS_OF


@pytest.fixture(scope="session")
def clean_exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean synthetic exports of all six site styles (PONC-WT-01)."""
    from federation.synth import synthesize

    out = tmp_path_factory.mktemp("clean")
    synthesize(out, 6, "PONC-WT-01", 60, AS_OF, seed=3)
    return out


@pytest.fixture(scope="session")
def broken_exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exports of all six site styles with every error kind injected (PONC-NB-02)."""
    from federation.synth import synthesize

    out = tmp_path_factory.mktemp("broken")
    synthesize(out, 6, "PONC-NB-02", 120, AS_OF, seed=5, error_sites=["all"])
    return out
