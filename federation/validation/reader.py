"""Read one export CSV through the site's declared conventions.

The output is the table in dictionary terms (renamed columns, codes mapped
and canonicalised, dates as day numbers, numbers parsed) plus everything
needed to report a problem in the site's terms: the physical line of each
row, the site's column names and the raw values as written.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from federation.config import SiteConventions, date_format_to_strptime
from federation.exceptions import UnusableInputError
from federation.schema import Column, Study, Table
from federation.validation.findings import Finding

LINE = "__line"
INVALID_SUFFIX = "__invalid"
EPOCH = pd.Timestamp("1970-01-01")
DEFAULT_MAX_FILE_BYTES = 4 * 1024**3  # 4 GiB: a safety limit, see docs/decisions/0003-reading-site-exports.md
_INT_RE = r"^[+-]?[0-9]+$"
_DECIMAL_RE = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)$"

ProgressFn = Callable[[str], None]


def _no_progress(_: str) -> None:
    return None


@dataclass
class SourceTable:
    """One table of an export, read and normalised."""

    table: str
    file: str
    frame: pd.DataFrame  # dictionary names, typed values, LINE column, <col>__invalid columns
    raw: pa.Table  # dictionary names, raw strings as written, one row per frame row
    lines: np.ndarray  # physical line of each row, ascending
    local_names: dict[str, str]  # dictionary column -> the site's header name
    findings: list[Finding] = field(default_factory=list)
    present: bool = True

    @property
    def rows(self) -> int:
        return len(self.frame)

    def raw_value(self, line: int, column: str) -> str | None:
        """The value as written in the file at `line` in the column the dictionary calls `column`."""
        if column not in self.raw.column_names:
            return None
        idx = int(np.searchsorted(self.lines, line))
        if idx >= len(self.lines) or self.lines[idx] != line:
            return None
        value = self.raw.column(column)[idx].as_py()
        return None if value is None else str(value)


def date_to_day(values: pd.Series, formats: list[str]) -> pd.Series:
    """Parse dates with the site's formats into days since 1970-01-01 (float, NaN if not a date)."""
    out = pd.Series(np.nan, index=values.index, dtype="float64")
    todo = values.notna()
    for fmt in formats:
        if not todo.any():
            break
        parsed = pd.to_datetime(values[todo], format=date_format_to_strptime(fmt), errors="coerce")
        ok = parsed.notna()
        days = (parsed[ok] - EPOCH).dt.days.astype("float64")
        out.loc[days.index] = days
        todo &= out.isna()
    return out


def day_to_iso(day: float | None) -> str:
    if day is None or (isinstance(day, float) and np.isnan(day)):
        return ""
    return (EPOCH + pd.Timedelta(days=int(day))).strftime("%Y-%m-%d")




def _single_byte(encoding: str) -> bool:
    """Whether every byte is one character in `encoding` (cp1252, latin-1, ISO 8859-x, ...)."""
    try:
        return len("é€".encode(encoding, "replace")) == 2 and codecs.lookup(encoding).name != "utf-8"
    except LookupError:
        return False


def _looks_like_utf8(data: bytes) -> bool:
    """Non-ASCII bytes that all form valid UTF-8 sequences: text saved as UTF-8. A file really written in a
    single-byte encoding with accented letters is almost never valid UTF-8 (é alone is byte E9)."""
    if data.isascii():
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _canonical_codes(codes: list[str]) -> dict[str, str]:
    return {_code_key(c).upper(): c for c in codes}


def _code_key(value: str) -> str:
    """A code as compared: case-folded, spaces trimmed and runs of spaces made one."""
    return " ".join(str(value).split()).casefold()


BLOCK_BYTES = 32 << 20  # a file is read in blocks of about this size, each ending at a line end
NEWLINE = b"\n"
EXACT_CHUNK_ROWS = 200_000  # rows per block when the csv module reads (quoted line breaks, blank rows, ...)


@dataclass
class Block:
    """Some consecutive rows of one file: typed in dictionary terms, and as written."""

    typed: pa.Table  # LINE, every dictionary column (absent optional ones empty), <col>__invalid companions
    raw: pa.Table  # the file's dictionary columns as written


class TableReader:
    """Reads one export CSV through the site's conventions in blocks, so memory does not grow with the file.

    Iterate `blocks()`; afterwards `findings`, `rows`, `local_names` and `steps` describe the whole file. Raises
    UnusableInputError (possibly after some blocks: the caller drops what it kept) when the file is not a
    readable CSV."""

    def __init__(self, path: Path, table: Table, study: Study, conventions: SiteConventions, *,
                 max_bytes: int = DEFAULT_MAX_FILE_BYTES, progress: ProgressFn = _no_progress,
                 block_bytes: int | None = None) -> None:
        self.path, self.table, self.study, self.conventions = path, table, study, conventions
        self.file = path.name
        self.max_bytes, self.progress = max_bytes, progress
        self.block_bytes = block_bytes or BLOCK_BYTES
        self.findings: list[Finding] = []
        self.local_names: dict[str, str] = {}
        self.positions: dict[str, int] = {}
        self.ncols = 0
        self.rows = 0
        self.steps = {"read": 0.0, "conventions": 0.0}
        encoding = conventions.encoding
        self.utf8 = codecs.lookup(encoding).name == "utf-8"
        self.single_byte = not self.utf8 and _single_byte(encoding)
        # in an encoding where a line end is not the byte 0x0A (UTF-16, ...) the file is read as one block
        self.ascii_lines = "\n".encode(encoding) == b"\n"

    def _byte_blocks(self) -> Iterator[tuple[bytes, int]]:
        """(bytes, lines before them): blocks of about `block_bytes` that end at a line end."""
        step = self.block_bytes if self.ascii_lines else max(self.path.stat().st_size, 1)
        with self.path.open("rb") as fh:
            rest, line = b"", 0
            while True:
                chunk = fh.read(step)
                if not chunk:
                    if rest:
                        yield rest, line
                    return
                data = rest + chunk
                cut = data.rfind(b"\n") + 1 if self.ascii_lines else len(data)
                if cut == 0:
                    rest = data
                    continue
                block, rest = data[:cut], data[cut:]
                yield block, line
                line += block.count(b"\n")

    def _text(self, data: bytes, line: int, first: bool) -> str:
        """A block as text, checked against the declared encoding."""
        name, encoding = self.file, self.conventions.encoding
        if first and b"\x00" in data[:65536]:
            raise UnusableInputError(
                f"{name} is not a text file (it contains NUL bytes): it may be a spreadsheet "
                "or a compressed file renamed .csv",
                file=name, hint="export the table as CSV text from your system or spreadsheet program",
            )
        if self.single_byte and _looks_like_utf8(data):
            # non-ASCII bytes that all form UTF-8 in a file declared single-byte: it was saved as UTF-8 (blocks
            # end at line ends, so no character is cut)
            at = re.search(rb"[\x80-\xff]", data).start()  # type: ignore[union-attr]
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            sample = data[start:end if end >= 0 else len(data)].decode("utf-8", "replace").strip()[:60]
            wrong = sample.encode("utf-8").decode(encoding, "replace")[:60]
            where = line + data.count(NEWLINE, 0, at) + 1
            raise UnusableInputError(
                f"{name} is written in UTF-8, but the site configuration declares {encoding}: line "
                f"{where} would read {wrong!r} instead of {sample!r}",
                file=name,
                hint=f"save the file as {encoding} (in Excel: 'CSV (separator)' rather than 'CSV UTF-8'), or "
                "declare conventions.encoding: utf-8 in the site configuration if all its files are UTF-8",
            )
        enc = "utf-8-sig" if self.utf8 and first else encoding
        try:
            text = data.decode(enc)
        except UnicodeDecodeError as exc:
            bad = data[exc.start:exc.end + 3]
            where = line + data.count(NEWLINE, 0, exc.start) + 1
            raise UnusableInputError(
                f"{name} line {where}: bytes {bad!r} are not valid {encoding}; "
                "the file is in another encoding than the site configuration declares",
                file=name,
                hint="declare the file's encoding (for example cp1252 or latin-1) under conventions.encoding "
                "in the site configuration, or save the file as UTF-8",
            ) from None
        if first and text.startswith("\ufeff"):  # a BOM in a file declared as another encoding
            text = text[1:]
        return text

    def blocks(self) -> Iterator[Block]:
        name, delimiter = self.file, self.conventions.delimiter
        size = self.path.stat().st_size
        if size > self.max_bytes:
            raise UnusableInputError(
                f"{name} is {size / 2**20:,.0f} MiB, larger than the limit of {self.max_bytes / 2**20:,.0f} MiB "
                "for one file",
                file=name,
                hint="split the export (for example by enrollment year) into several uploads, or raise the "
                "safety limit with --max-file-mb (max_file_mb in the settings)",
            )
        self._t0 = time.perf_counter()
        byte_blocks = self._byte_blocks()
        done = 0
        for index, (data, line) in enumerate(byte_blocks):
            first = index == 0
            text = self._text(data, line, first) if first or not self.utf8 else None
            if first:
                assert text is not None
                if not text.strip():
                    raise UnusableInputError(f"{name} is empty: not even a header row", file=name,
                                             hint="export the table again with its header row")
                header, header_lines = _read_header(text, delimiter, name)
                self._plan(header)
                if header_lines != 1 or len(set(header)) != len(header) or text.startswith(("\n", "\r", " ")):
                    yield from self._exact(text, line, byte_blocks, header_lines)
                    return
            if self.utf8:
                body = data[len(codecs.BOM_UTF8):] if first and data.startswith(codecs.BOM_UTF8) else data
            else:
                assert text is not None
                body = text.encode("utf-8")
            columns = _parse_block_fast(body, self.ncols, delimiter, skip=1 if first else 0)
            if columns is None:  # this block needs the csv module, and so does the rest of the file
                if text is None:
                    text = self._text(data, line, first)
                yield from self._exact(text, line, byte_blocks, 1 if first else 0)
                return
            start = line + (2 if first else 1)
            n = len(columns[0]) if columns else body.count(b"\n") - (1 if first else 0)
            if n:
                yield self._block(columns, np.arange(start, start + n, dtype="int64"))
            done += len(data)
            if size > 50 * 2**20:
                self.progress(f"  {name}: {done / size:4.0%} ({self.rows:,} rows)")
        if not done:
            raise UnusableInputError(f"{name} is empty: not even a header row", file=name,
                                     hint="export the table again with its header row")
        self._finish([], 0)

    def _exact(self, text: str, line: int, byte_blocks: Iterator[tuple[bytes, int]],
               skip: int) -> Iterator[Block]:
        """The csv module from this block (`text`, starting after `line` lines) to the end of the file, tracking
        each record's physical line; ragged rows become findings, blank rows are skipped with one note."""
        def texts() -> Iterator[str]:
            yield text
            for more, at in byte_blocks:
                yield self._text(more, at, False)

        def physical_lines() -> Iterator[str]:
            for t in texts():
                yield from io.StringIO(t, newline="")

        reader = csv.reader(physical_lines(), delimiter=self.conventions.delimiter, strict=False)
        for _ in range(skip):
            next(reader)
        table, name, ncols = self.table.name, self.file, self.ncols
        ragged, blank = 0, []
        rows: list[list[str]] = []
        lines: list[int] = []
        prev = reader.line_num
        try:
            for row in reader:
                start = line + prev + 1
                prev = reader.line_num
                if not any(field.strip() for field in row):
                    blank.append(start)
                    continue
                if len(row) != ncols:
                    ragged += 1
                    if ragged <= 1000:
                        self.findings.append(Finding(
                            severity="error", rule="row_shape", table=table, file=name, line=start,
                            value=self.conventions.delimiter.join(row)[:200],
                            message=f"the row has {len(row)} fields but the header has {ncols}",
                            hint="quote values that contain the delimiter, and check for a missing or extra field; "
                            "the row was not validated further",
                        ))
                    continue
                rows.append(row)
                lines.append(start)
                if len(rows) >= EXACT_CHUNK_ROWS:
                    yield self._block(_columns_of(rows, ncols), np.asarray(lines, dtype="int64"))
                    rows, lines = [], []
                    self.progress(f"  {name}: {self.rows:,} rows")
        except csv.Error as exc:
            raise UnusableInputError(f"{name} line {line + prev + 1}: not readable as CSV ({exc})", file=name,
                                     hint="check the quoting around this line") from None
        if rows:
            yield self._block(_columns_of(rows, ncols), np.asarray(lines, dtype="int64"))
        total = self.rows + ragged
        if ragged and total >= 4 and ragged > total / 2:
            raise UnusableInputError(
                f"{name}: {ragged:,} of {total:,} rows have a different number of fields than the header "
                f"({ncols}); the delimiter {self.conventions.delimiter!r} or the quoting does not match the file",
                file=name, hint="check conventions.delimiter in the site configuration and how values are quoted",
            )
        if ragged > 1000:
            self.findings.append(Finding(
                severity="error", rule="row_shape", table=table, file=name,
                message=f"and {ragged - 1000:,} more rows with the wrong number of fields", hint="see above",
            ))
        self._finish(blank, ragged)

    def _finish(self, blank: list[int], ragged: int) -> None:
        if blank:
            shown = ", ".join(str(n) for n in blank[:5]) + (", ..." if len(blank) > 5 else "")
            s = "s" if len(blank) > 1 else ""
            self.findings.append(Finding(
                severity="warning", rule="blank_rows", table=self.table.name, file=self.file, line=blank[0],
                message=f"{len(blank):,} empty row{s} (line{s} {shown}) skipped: blank, or nothing but delimiters",
                hint="nothing to do; spreadsheet programs often write such rows at the end of a sheet",
            ))
        if not self.rows and self.table.required:
            self.findings.append(Finding(
                severity="error", rule="table_empty", table=self.table.name, file=self.file, line=1,
                message=f"{self.file} has a header but no data rows; {self.table.name} is a required table",
                hint="export the data rows too; a required table cannot be empty",
            ))

    def _plan(self, header: list[str]) -> None:
        """Which header field is which dictionary column; unknown and repeated columns are findings."""
        table, name = self.table, self.file
        renames = {k.strip().lower(): v for k, v in self.conventions.column_renames.get(table.name, {}).items()}
        self.ncols = len(header)
        for pos, raw_name in enumerate(header):
            local = raw_name.strip()
            key = local.lower()
            target = renames.get(key, key)
            if target not in table.columns:
                self.findings.append(Finding(
                    severity="warning", rule="unknown_column", table=table.name, file=name, line=1, column=local,
                    message=f"column {local!r} is not in the data dictionary for {table.name}; it was dropped",
                    hint="remove it from the export, or map it to a dictionary column under "
                    f"conventions.column_renames.{table.name} in the site configuration",
                ))
                continue
            if target in self.positions:
                self.findings.append(Finding(
                    severity="error", rule="duplicate_column", table=table.name, file=name, line=1, column=local,
                    dictionary_column=target,
                    message=f"column {target!r} appears twice in the header "
                    f"({self.local_names[target]!r} and {local!r})",
                    hint="keep one of the two columns",
                ))
                continue
            self.positions[target] = pos
            self.local_names[target] = local
        for col_name, column in table.columns.items():
            if col_name not in self.positions and not column.required:
                self.local_names.setdefault(col_name, col_name)

    def typed_schema(self) -> pa.Schema:
        fields = [pa.field(LINE, pa.int64())]
        for col_name, column in self.table.columns.items():
            if col_name not in self.positions:
                if not column.required:
                    fields.append(pa.field(col_name, pa.string()))
                continue
            if column.type in ("date", "int", "decimal"):
                fields += [pa.field(col_name, pa.float64()), pa.field(col_name + INVALID_SUFFIX, pa.string())]
            else:
                fields.append(pa.field(col_name, pa.string()))
        return pa.schema(fields)

    def raw_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c, pa.string()) for c in self.positions])

    def _block(self, columns: list[pa.Array] | list[pa.ChunkedArray], lines: np.ndarray) -> Block:
        """Typed columns of some rows: renamed, trimmed, codes mapped, dates and numbers parsed."""
        read = time.perf_counter()
        self.steps["read"] += read - self._t0
        nrows = len(lines)
        raw = pa.table({c: columns[pos] for c, pos in self.positions.items()}, schema=self.raw_schema())
        cols: dict[str, pa.Array] = {LINE: pa.array(lines, pa.int64())}
        code_maps = self.conventions.code_maps.get(self.table.name, {})
        for col_name, column in self.table.columns.items():
            if col_name not in self.positions:
                if not column.required:
                    cols[col_name] = pa.nulls(nrows, pa.string())
                continue
            trimmed = pc.utf8_trim_whitespace(raw.column(col_name))
            values = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
            _convert(cols, column, values, self.study, self.conventions, code_maps.get(col_name, {}))
        self.rows += nrows
        self._t0 = time.perf_counter()
        self.steps["conventions"] += self._t0 - read
        return Block(typed=pa.table(cols, schema=self.typed_schema()), raw=raw)


def _columns_of(rows: list[list[str]], ncols: int) -> list[pa.Array]:
    return [pa.array([r[i] for r in rows], type=pa.string()) for i in range(ncols)]


def _parse_block_fast(data: bytes, ncols: int, delimiter: str, skip: int) -> list[pa.ChunkedArray] | None:
    """Parse a block with pyarrow when every record is one physical line (the usual case); None otherwise."""
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None  # lone CR line ends: let the exact reader count lines
    physical = data.count(b"\n") + (0 if data.endswith(b"\n") else 1) - skip
    names = [f"c{i}" for i in range(ncols)]
    if physical <= 0:
        return [pa.chunked_array([], pa.string()) for _ in names]
    try:
        tbl = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip, block_size=16 << 20),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=False,
                                             ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, pa.ArrowException):
        return None  # ragged rows, bad quoting, not UTF-8, ...: the exact reader reports them line by line
    if tbl.num_rows != physical:
        return None  # blank lines or quoted newlines: line numbers need the exact reader
    columns = [tbl.column(i) for i in range(ncols)]
    if columns and tbl.num_rows:
        rows = np.flatnonzero(_blank(columns[0]))  # a row of nothing but delimiters starts with a blank field
        for col in columns[1:]:
            if not len(rows):
                break
            rows = rows[_blank(col.take(pa.array(rows)))]
        if len(rows):
            return None  # rows of nothing but delimiters (a spreadsheet's empty row): the exact reader skips them
    return columns


def source_table(reader: TableReader, typed: pa.Table, raw: pa.Table) -> SourceTable:
    """The rows of `typed`/`raw` (in file order) as the SourceTable the suites and harmonization read."""
    lines = typed.column(LINE).to_numpy()
    return SourceTable(table=reader.table.name, file=reader.file, frame=typed.to_pandas(), raw=raw, lines=lines,
                       local_names=dict(reader.local_names))


def _read_header(text: str, delimiter: str, name: str) -> tuple[list[str], int]:
    """The header fields and the number of physical lines up to and including the header."""
    reader = csv.reader(io.StringIO(text[:1 << 20], newline=""), delimiter=delimiter, strict=False)
    try:
        header = next(reader)
        while not any(h.strip() for h in header):
            header = next(reader)
    except StopIteration:  # pragma: no cover - guarded by the strip() check in read_table
        raise UnusableInputError(f"{name} has no header row", file=name, hint="add the header row") from None
    except csv.Error as exc:
        raise UnusableInputError(f"{name}: the header cannot be read as CSV ({exc})", file=name,
                                 hint="check the quoting of the header row") from None
    _check_delimiter(header, delimiter, name)
    return header, reader.line_num


def _blank(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0).to_numpy(zero_copy_only=False)


def _check_delimiter(header: list[str], delimiter: str, name: str) -> None:
    if len(header) != 1:
        return
    for other in (";", ",", "\t", "|"):
        if other != delimiter and other in header[0]:
            shown = "TAB" if other == "\t" else repr(other)
            raise UnusableInputError(
                f"{name}: the header is one single column; the file seems to use {shown} as delimiter, "
                f"but the site configuration declares {delimiter!r}",
                file=name,
                hint="set conventions.delimiter in the site configuration to the delimiter the file uses, "
                "or export with the declared delimiter",
            )




def _map_codes(values: pa.Array, canon: dict[str, str], code_map: dict[str, str]) -> pa.Array:
    """Each distinct value mapped once (the site's code map, then the dictionary's spelling), spread by index."""
    # the dictionary's codes and the site's own are matched ignoring case and runs of spaces ("Vivant",
    # "vivant" and "VIVANT " are one code), as the dictionary says codes are
    local_codes = {_code_key(k): v for k, v in code_map.items()}
    distinct = pc.unique(values).drop_null()
    mapped = []
    for value in distinct.to_pylist():
        local = local_codes.get(_code_key(value), value)
        mapped.append(canon.get(_code_key(local).upper(), local))
    return pc.take(pa.array(mapped, pa.string()), pc.index_in(values, value_set=distinct))


_YEAR = r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"  # 0001 to 9999: there is no year 0
_DATE_PARTS = {"%Y": rf"(?P<y>{_YEAR})", "%m": r"(?P<m>1[0-2]|0[1-9]|[1-9])",
               "%d": r"(?P<d>3[01]|[12][0-9]|0[1-9]|[1-9])"}
# month and day together, so that only days that exist in their month match (29 February is checked apart)
_MONTH_DAYS = [(r"(?:0?[13578]|1[02])", r"(?:3[01]|[12][0-9]|0[1-9]|[1-9])"),
               (r"(?:0?[469]|11)", r"(?:30|[12][0-9]|0[1-9]|[1-9])"),
               (r"(?:0?2)", r"(?:[12][0-9]|0[1-9]|[1-9])")]


def _format_regex(fmt: str, parts: dict[str, str]) -> str:
    out, rest = "", date_format_to_strptime(fmt)
    while rest:
        token = rest[:2]
        if token in parts:
            out, rest = out + parts[token], rest[2:]
        else:
            out, rest = out + re.escape(rest[0]), rest[1:]
    return out


def _date_regex(fmt: str) -> str:
    """The site's date format as a regular expression that accepts what `datetime.strptime` accepts for it, with
    year, month and day groups. (pandas also reads year 0000 in YYYY-MM-DD, and only there; we never do.)"""
    return "^" + _format_regex(fmt, _DATE_PARTS) + "$"


def _date_shape_regex(fmt: str) -> str:
    """Like `_date_regex`, without groups, and only for days that exist in their month (any year's 29 February)."""
    options = [_format_regex(fmt, {"%Y": _YEAR, "%m": m, "%d": d}) for m, d in _MONTH_DAYS]
    return "^(?:" + "|".join(options) + ")$"


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's days_from_civil), vectorised."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _parse_dates_exact(values: pa.Array, fmt: str) -> np.ndarray:
    """Days (NaN if not a date in `fmt`) from the year, month and day written, checked against the calendar."""
    out = np.full(len(values), np.nan)
    parts = pc.extract_regex(values, _date_regex(fmt))
    ok = pc.is_valid(parts).to_numpy(zero_copy_only=False)
    if ok.any():
        y, m, d = (pc.cast(pc.fill_null(pc.struct_field(parts, k), "0"), pa.int64()).to_numpy() for k in "ymd")
        leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
        month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(m, 0, 12)]
        exists = ok & (d <= month_days + ((m == 2) & leap))
        out[exists] = _days_from_civil(y[exists], m[exists], d[exists])
    return out


def parse_dates(values: pa.Array, formats: list[str]) -> np.ndarray:
    """Days since 1970-01-01 (float, NaN if not a date) of strings in any of the site's date formats.

    The same dates as `pandas.to_datetime(format=..., errors="coerce")` accepts (a test compares them), without
    Python objects. A regular expression accepts only the format's shape with days that exist in their month, and
    Arrow's strptime reads those; the few values it cannot read, and every 1 March it returns (a 29 February of
    a year that is not a leap year would have rolled over to it), are read again field by field."""
    out = np.full(len(values), np.nan)
    todo = pc.is_valid(values).to_numpy(zero_copy_only=False)
    for fmt in formats:
        if not todo.any():
            break
        shaped = pc.fill_null(pc.match_substring_regex(values, _date_shape_regex(fmt)), False)
        ok = shaped.to_numpy(zero_copy_only=False) & todo
        if not ok.any():
            continue
        stamps = pc.strptime(pc.if_else(pa.array(ok), values, pa.scalar(None, pa.string())),
                             format=date_format_to_strptime(fmt), unit="s", error_is_null=True)
        days = pc.cast(pc.cast(stamps, pa.date32()), pa.int32()).to_numpy(zero_copy_only=False)
        read = ~np.isnan(days)
        march_first = pc.fill_null(pc.and_(pc.equal(pc.month(stamps), 3), pc.equal(pc.day(stamps), 1)), False)
        again = ok & (~read | march_first.to_numpy(zero_copy_only=False))
        fine = ok & ~again
        out[fine] = days[fine]
        if again.any():
            rows = np.flatnonzero(again)
            exact = _parse_dates_exact(values.take(pa.array(rows)), fmt)
            out[rows] = exact
        todo &= np.isnan(out)
    return out


def _convert(
    frame: dict[str, pa.Array],
    column: Column,
    values: pa.Array,
    study: Study,
    conventions: SiteConventions,
    code_map: dict[str, str],
) -> None:
    """Put the typed column and, for typed columns, its `__invalid` companion into `frame`."""
    name = column.name
    if column.type == "string":
        frame[name] = values
        return
    if column.type == "code":
        frame[name] = _map_codes(values, _canonical_codes(study.codes_for(column) or []), code_map)
        return
    if column.type == "date":
        parsed = parse_dates(values, conventions.date_formats)
    else:
        text = values
        if column.type == "decimal" and conventions.decimal_mark == ",":
            text = pc.replace_substring(values, ",", ".")
        pattern = _INT_RE if column.type == "int" else _DECIMAL_RE
        ok = pc.fill_null(pc.match_substring_regex(text, pattern), False)
        numbers = pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64())
        parsed = numbers.to_numpy(zero_copy_only=False).astype("float64")
    frame[name] = pa.array(parsed, pa.float64())
    invalid = pc.and_(pc.is_valid(values), pa.array(np.isnan(parsed)))
    frame[name + INVALID_SUFFIX] = pc.if_else(invalid, values, pa.scalar(None, pa.string()))


def read_progress_printer(stream: object = sys.stderr) -> ProgressFn:
    def _print(msg: str) -> None:
        print(msg, file=stream, flush=True)  # type: ignore[call-overload]

    return _print


