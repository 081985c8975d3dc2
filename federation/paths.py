"""Where the project's own data files live, so code never hard-codes paths."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
# Installed editable from a checkout: schemas/ sits beside the package.
PROJECT_ROOT = Path(os.environ.get("FEDERATION_PROJECT_ROOT", PACKAGE_ROOT.parent))
SCHEMAS_DIR = PROJECT_ROOT / "schemas"
EXPECTATIONS_DIR = PROJECT_ROOT / "expectations"
INFRA_DIR = PROJECT_ROOT / "infra"
DOCS_DIR = PROJECT_ROOT / "docs"
