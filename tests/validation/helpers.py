from __future__ import annotations

import datetime as dt
from pathlib import Path

from federation.config import SiteConfig
from federation.validation.report import Report
from federation.validation.runner import ValidationRequest, validate_export

AS_OF = dt.date(2025, 6, 30)


def validate_folder(folder: Path, site: SiteConfig, study: str = "PONC-WT-01", upload_date: dt.date = AS_OF,
                    **kw: int) -> Report:
    return validate_export(ValidationRequest(path=folder, site=site, study_id=study, upload_date=upload_date, **kw))


def cells(report: Report) -> set[tuple[str, int | None, str | None, str]]:
    return {(f.file, f.line, f.column, f.rule) for f in report.findings}
