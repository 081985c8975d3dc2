"""A finding is one problem in an export, said in the site's own terms."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One broken rule at one place of one file.

    `column` and `value` are the site's own column name and raw value as
    written in the file; `line` is the physical line number in the file
    (the header is line 1).
    """

    severity: Severity
    rule: str
    table: str
    file: str
    message: str
    hint: str
    line: int | None = None
    column: str | None = None
    value: str | None = None
    dictionary_column: str | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d
