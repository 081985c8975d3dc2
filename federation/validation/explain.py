"""What is wrong with one cell, in the site coordinator's terms: the declared date format with an example and
why a value is not a date, the site id that was expected, the codes that would have been accepted.

The suites say which rule a cell breaks in dictionary terms (they are the same for every site); the
site's conventions (date formats, decimal mark, its own codes) are only known when its export is read, so
the wording that needs them is added here, to the finding's message and its `detail`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

from federation.config import SiteConventions, date_format_to_strptime

EXAMPLE_DAY = dt.date(2019, 3, 14)
COMMON_FORMATS = ["YYYY-MM-DD", "DD/MM/YYYY", "MM/DD/YYYY", "DD.MM.YYYY", "DD-MM-YYYY", "YYYY/MM/DD"]


@dataclass(frozen=True)
class Context:
    """What a finding's wording may use about the upload."""

    conventions: SiteConventions
    site_id: str
    study_id: str
    upload_date: dt.date


def example(fmt: str) -> str:
    return EXAMPLE_DAY.strftime(date_format_to_strptime(fmt))


def formats_text(formats: list[str]) -> str:
    return " or ".join(f"{f} (e.g. {example(f)})" for f in formats)


def _shape(fmt: str) -> re.Pattern[str]:
    pattern = re.escape(fmt)
    for token, group in (("YYYY", r"(?P<y>\d{4})"), ("MM", r"(?P<m>\d{1,2})"), ("DD", r"(?P<d>\d{1,2})")):
        pattern = pattern.replace(token, group)
    return re.compile(f"^{pattern}$")


def date_problem(value: str, formats: list[str]) -> str:
    """Why `value` is not a date in any of `formats`: a month or day that does not exist, another format."""
    text = value.strip()
    for fmt in formats:
        m = _shape(fmt).match(text)
        if not m:
            continue
        year, month, day = int(m["y"]), int(m["m"]), int(m["d"])
        if not 1 <= month <= 12:
            return f"there is no month {month} (read as {fmt})"
        days = calendar.monthrange(year, month)[1]
        if not 1 <= day <= days:
            if month == 2 and day == 29:
                return f"{year} is not a leap year: February {year} has 28 days"
            return f"{calendar.month_name[month]} {year} has {days} days, not {day} (read as {fmt})"
        return f"not a date in the form {fmt}"
    for other in COMMON_FORMATS:
        if other not in formats and _shape(other).match(text):
            return f"written like {other}, but this site declares {' or '.join(formats)}"
    return f"not a date in the form {' or '.join(formats)}"


def explain(rule: str, column: str, value: str | None, message: str, meta: dict[str, object],
            ctx: Context) -> tuple[str, str]:
    """The finding's message (with what only the site's conventions tell) and a detail for this cell."""
    conv = ctx.conventions
    if rule == "type_date":
        message = f"{column} is not a date in the declared format {formats_text(conv.date_formats)}"
        return message, date_problem(value or "", conv.date_formats)
    if rule == "type_decimal":
        mark = "a comma" if conv.decimal_mark == "," else "a point"
        return message, f"{value!r} is not a number written with {mark} as decimal mark"
    if rule == "type_int":
        return message, f"{value!r} is not a whole number"
    if rule == "site_id":
        return f"{column} is not the uploading site's id ({ctx.site_id})", f"expected {ctx.site_id}"
    if rule == "study_id":
        return message, f"expected {ctx.study_id}"
    if rule == "required":
        return message, "the cell is empty"
    if rule == "not_after_upload":
        return message, f"the upload date is {ctx.upload_date.isoformat()}"
    if rule == "accrual_window" and meta.get("first"):
        return message, f"the window is {meta['first']} to {meta['last']}"
    if rule == "code_list":
        local = conv.code_maps.get(str(meta.get("table", "")), {}).get(column, {})
        mapped = f"; this site's own codes: {', '.join(sorted(local))}" if local else ""
        return message, f"{value!r} is neither a dictionary code nor one of the site's own codes{mapped}"
    return message, ""
