"""The Arrow date reader accepts exactly the dates pandas' `to_datetime(format=...)` accepted before it."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from federation.validation.reader import date_to_day, parse_dates

TRICKY = ["2019-02-29", "2020-02-29", "1900-02-29", "2000-02-29", "2021-13-01", "2019-00-10", "2019-04-31",
          "2019-01-32", "2019-3-4", "2019-1-1", "2019-03-01", "0001-01-01", "9999-12-31", "2019-03-04x",
          "14/03/2019", "1/3/2019", "31/02/2020", "29/02/2019", "01/03/2019", "01/03/19", "01.03.2019",
          "29.02.2019", "3/14/2019", "12/31/2019", "02/29/2019", "02/29/2020", "", None]


def _strings(n: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    out: list[str | None] = list(TRICKY)
    for _ in range(n):
        y = rng.choice(["2019", "1999", "2000", "1900", "2100", "0400", "0001", "99", "20190", "0000"])
        m = rng.choice(["1", "01", "02", "2", "03", "3", "04", "11", "12", "13", "0", "00"])
        d = rng.choice(["1", "01", "09", "28", "29", "30", "31", "32", "0"])
        sep = rng.choice(["-", "/", "."])
        out.append(sep.join(rng.choice([(y, m, d), (d, m, y), (m, d, y)])))
    return out


@pytest.mark.parametrize("formats", [["YYYY-MM-DD"], ["DD/MM/YYYY"], ["MM/DD/YYYY"], ["DD.MM.YYYY", "YYYY-MM-DD"]])
def test_same_dates_as_pandas(formats: list[str]) -> None:
    values = _strings(30_000, seed=len(formats[0]) + len(formats))
    ours = parse_dates(pa.array(values, pa.string()), formats)
    theirs = date_to_day(pd.Series(values, dtype="object"), formats).to_numpy().copy()
    # pandas reads year 0000 in YYYY-MM-DD (its ISO fast path) and in no other format; there is no year 0
    year_zero = np.array([v is not None and v.startswith("0000-") for v in values])
    theirs[year_zero] = np.nan
    same = (ours == theirs) | (np.isnan(ours) & np.isnan(theirs))
    differ = [(v, a, b) for v, a, b, ok in zip(values, ours, theirs, same, strict=True) if not ok]
    assert differ == []
    assert (~np.isnan(ours)).sum() > 1000, "the sample holds many real dates"


def test_a_29_february_is_a_date_only_in_a_leap_year() -> None:
    days = parse_dates(pa.array(["2019-02-29", "2020-02-29", "1900-02-29", "2000-02-29", "2019-03-01"]),
                       ["YYYY-MM-DD"])
    assert np.isnan(days[0]) and np.isnan(days[2])
    assert days[1] == 18321 and days[3] == 11016 and days[4] == 17956
