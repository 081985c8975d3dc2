"""CSV the platform writes is opened in spreadsheets: a text cell starting with `=`, `+`, `-`, `@`, a tab or
a carriage return would run as a formula there (CSV injection, OWASP). Every CSV writer of the platform
writes its cells through `safe`, which prefixes such text with an apostrophe; numbers stay numbers."""

from __future__ import annotations

import csv
from typing import Any, TextIO

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def safe(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(TRIGGERS):
        return value
    try:
        float(value)
        return value  # a negative number as text, e.g. "-3" or "-1.5e3", is not a formula
    except ValueError:
        return "'" + value


class SafeWriter:
    """`csv.writer` whose rows are neutralised against spreadsheet formulas."""

    def __init__(self, fh: TextIO, **kwargs: Any) -> None:
        self._w = csv.writer(fh, **kwargs)

    def writerow(self, row: list[Any]) -> None:
        self._w.writerow([safe(v) for v in row])

    def writerows(self, rows: list[list[Any]]) -> None:
        for row in rows:
            self.writerow(list(row))
