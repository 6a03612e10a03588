"""CSV staff lists as HR departments export them → records a mapping can apply to (pure).

Excel in Russia saves CSV in Windows-1251 with `;`, newer tools in UTF-8 (often
with a BOM) with `,`: both are read. Headers are matched to the mapping's
`csv.columns` ignoring case and spaces around them; a header the mapping requires
but the file lacks is an error before any row is read.
"""
from __future__ import annotations

import csv
import io

from gateway.errors import MalformedBody
from gateway.mapping.loader import Mapping


def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1251."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1251")


def read_records(data: bytes, mapping: Mapping) -> list[dict]:
    """One record per data row, keyed by the mapping's field names."""
    text = decode(data)
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") >= first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise MalformedBody("Пустой CSV-файл.", "Empty CSV file.") from None
    fields = _fields(header, mapping)
    records = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        records.append({field: cell.strip() for field, cell in zip(fields, row, strict=False)
                        if field is not None and cell.strip()})
    return records


def column_of(mapping: Mapping, location: str) -> str | None:
    """The CSV header a source location (`$.snils`) was read from."""
    field_name = location.removeprefix("$.").split(".")[0].split("[")[0]
    return next((header for header, name in mapping.csv_columns.items()
                 if name == field_name), None)


def _fields(header: list[str], mapping: Mapping) -> list[str | None]:
    known = {_fold(name): field for name, field in mapping.csv_columns.items()}
    fields = [known.get(_fold(name)) for name in header]
    missing = [name for name, field in mapping.csv_columns.items()
               if field in mapping.require and field not in fields]
    if missing:
        raise MalformedBody(
            f"В CSV нет обязательных столбцов: {', '.join(missing)}.",
            f"CSV lacks required columns: {', '.join(missing)}.")
    return fields


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()
