"""An export split by patient into parts that each fit the memory budget.

Every rule of the dictionary that looks at more than one row (uniqueness, "exactly one row per patient",
references between tables, dates compared across tables) compares rows of one patient only: they join or
group on `patient_id`. So rows are split by a hash of `patient_id`, the same for every table, and each
part holds all the rows of its patients in every table: the suites run on one part at a time and find
exactly what they would find on the whole export. The blocks read from each file are appended to the
part files (Arrow IPC on local disk) as they come, so no file is ever whole in memory; with one part
nothing is written and the blocks stay in memory. See docs/decisions/0010-validation-speed-and-memory.md.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from federation.schema import Dictionary
from federation.validation.reader import INVALID_SUFFIX, LINE, Block, SourceTable, TableReader, source_table

PART_KEY = "patient_id"
# Peak memory of validating and harmonizing a part is about this many times the bytes of CSV it holds (Arrow
# and pandas columns, the joined batch, Great Expectations' row-filtered copies). Calibrated on this machine
# with bench/ingest_throughput.py: the 10M-row export (1.3 GiB of CSV) peaked at 2,077 MiB in 6 parts and
# 1,850 MiB in 7 (budget 2,048); the 1M-row export (137 MiB) at 855 MiB in 3 parts (budget 1,024).
MEMORY_PER_CSV_BYTE = 6.5
# What the process holds besides the part: Python, pandas, pyarrow, Great Expectations, DuckDB, and the block
# being read
BASELINE_BYTES = 700 * 2**20
DEFAULT_MEMORY_MB = 1024


def parts_for(csv_bytes: int, memory_mb: int = DEFAULT_MEMORY_MB) -> int:
    """How many parts an export of `csv_bytes` needs so that one part fits in `memory_mb`."""
    room = max(memory_mb * 2**20 - BASELINE_BYTES, 64 * 2**20)
    return max(1, math.ceil(csv_bytes * MEMORY_PER_CSV_BYTE / room))


def check_partitionable(dictionary: Dictionary) -> None:
    """Splitting by patient is exact only if every rule over several rows is about one patient's rows."""
    for table in dictionary.tables.values():
        for column in table.columns.values():
            if column.unique and column.name != PART_KEY:
                raise ValueError(f"{table.name}.{column.name} is unique: an export of this dictionary cannot be "
                                 "split by patient; validate it in one part (a larger memory budget)")


def part_of(ids: pa.ChunkedArray | pa.Array, parts: int) -> np.ndarray:
    """The part of each patient id: DuckDB's hash, the same for a given id in every table and block."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")  # one thread keeps the rows in order
        ids_table = pa.table({"id": ids})  # noqa: F841 - read by DuckDB by name
        out = con.execute(f"SELECT (hash(id) % {int(parts)})::INTEGER AS p FROM ids_table").fetch_arrow_table()
        return np.asarray(out.column("p").to_numpy(), dtype="int64")
    finally:
        con.close()


def empty_source(dictionary: Dictionary, table: str) -> SourceTable:
    """An absent optional table: no rows, every column present (so cross-table joins still work)."""
    t = dictionary.table(table)
    fields = [pa.field(LINE, pa.int64())]
    for name, column in t.columns.items():
        if column.type in ("date", "int", "decimal"):
            fields += [pa.field(name, pa.float64()), pa.field(name + INVALID_SUFFIX, pa.string())]
        else:
            fields.append(pa.field(name, pa.string()))
    frame = pa.schema(fields).empty_table().to_pandas()
    return SourceTable(table=table, file=f"{table}.csv", frame=frame, raw=pa.table({}),
                       lines=np.zeros(0, dtype="int64"), local_names={c: c for c in t.columns}, present=False)


class PartStore:
    """The rows of every table of one export, split into `parts` by patient."""

    def __init__(self, parts: int, dictionary: Dictionary, tables: list[str], folder: Path | None = None) -> None:
        self.parts = parts
        self.dictionary, self.tables = dictionary, tables
        self._own = folder is None and parts > 1
        self.folder = Path(tempfile.mkdtemp(prefix="federation-parts-")) if self._own else folder
        self._memory: dict[str, list[Block]] = {}
        self._writers: dict[tuple[str, int, str], Any] = {}
        self._schemas: dict[str, tuple[pa.Schema, pa.Schema]] = {}
        self.readers: dict[str, TableReader] = {}

    def add(self, reader: TableReader, blocks: Iterable[Block]) -> None:
        """Append the blocks of one file (as they are read) to the parts."""
        table = reader.table.name
        self.readers[table] = reader
        self._memory.setdefault(table, [])
        self._schemas.pop(table, None)
        for block in blocks:
            if self.parts == 1:
                self._memory[table].append(block)
                continue
            if PART_KEY in block.typed.column_names:
                part = part_of(block.typed.column(PART_KEY), self.parts)
            else:
                part = np.zeros(block.typed.num_rows, dtype="int64")
            order = np.argsort(part, kind="stable")  # stable: each part keeps the file's order
            bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
            for p in range(self.parts):
                rows = order[bounds[p]:bounds[p + 1]]
                if len(rows):
                    take = pa.array(rows)
                    self._write(table, p, "typed", block.typed.take(take))
                    self._write(table, p, "raw", block.raw.take(take))
        self._schemas[table] = (reader.typed_schema(), reader.raw_schema())  # known once the header was read

    def _write(self, table: str, part: int, kind: str, data: pa.Table) -> None:
        key = (table, part, kind)
        writer = self._writers.get(key)
        if writer is None:
            assert self.folder is not None
            sink = pa.OSFile(str(self.folder / f"{table}.{part}.{kind}.arrow"), "wb")
            writer = self._writers[key] = (sink, pa.ipc.new_stream(sink, data.schema))
        writer[1].write_table(data)

    def drop(self, table: str) -> None:
        """Forget a table (a file that turned out unreadable after some of its blocks were kept)."""
        self._memory.pop(table, None)
        self.readers.pop(table, None)
        self._schemas.pop(table, None)
        for key in [k for k in self._writers if k[0] == table]:
            sink, writer = self._writers.pop(key)
            writer.close()
            sink.close()
            assert self.folder is not None
            (self.folder / f"{key[0]}.{key[1]}.{key[2]}.arrow").unlink(missing_ok=True)

    def seal(self) -> None:
        """Close the part files: every file has been read."""
        for sink, writer in self._writers.values():
            writer.close()
            sink.close()
        self._writers.clear()

    def part(self, p: int, raw: bool = True) -> dict[str, tuple[pa.Table, pa.Table]]:
        """Each table's rows of part `p` (typed, raw), in file order; `raw=False`: raw tables left empty."""
        out = {}
        for table, (typed_schema, raw_schema) in self._schemas.items():
            if self.parts == 1:
                blocks = self._memory[table]
                typed = pa.concat_tables([b.typed for b in blocks]) if blocks else typed_schema.empty_table()
                raws = pa.concat_tables([b.raw for b in blocks]) if blocks and raw else raw_schema.empty_table()
            else:
                typed = self._read(table, p, "typed", typed_schema)
                raws = self._read(table, p, "raw", raw_schema) if raw else raw_schema.empty_table()
            out[table] = (typed, raws)
        return out

    def sources(self, p: int, values_only: bool = False) -> dict[str, SourceTable]:
        """Part `p` of every table of the study, as the suites read it (a table without a file is there with no
        rows); `values_only`: only the typed values, as harmonization needs them (no raw text, no companions)."""
        data = self.part(p, raw=not values_only)
        out = {}
        for table in self.tables:
            if table in data:
                typed, raw = data[table]
                if values_only:
                    typed = typed.select([c for c in typed.column_names if not c.endswith(INVALID_SUFFIX)])
                out[table] = source_table(self.readers[table], typed, raw)
            else:
                out[table] = empty_source(self.dictionary, table)
        return out

    def _read(self, table: str, part: int, kind: str, schema: pa.Schema) -> pa.Table:
        assert self.folder is not None
        path = self.folder / f"{table}.{part}.{kind}.arrow"
        if not path.exists():
            return schema.empty_table()
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()

    def close(self) -> None:
        self.seal()
        self._memory.clear()
        if self._own and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PartStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
