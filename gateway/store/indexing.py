"""Search values extracted from a resource when it is written (pure).

For each search parameter of the registry this walks the parameter's paths and
turns what it finds into rows of the index tables: tokens (system, code),
normalised strings, date ranges, references and quantities. Search later
compares against these rows only; JSON is never scanned.
"""
from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta

from gateway.registry import RESOURCE_TYPES, SearchParam

IndexRow = tuple[str, str, tuple]      # (kind, param, values)


def normalize_string(value: str) -> str:
    """Case-, accent- and ё/е-insensitive form used for string search."""
    return value.casefold().replace("ё", "е").strip()[:255]


def extract(resource: dict) -> list[IndexRow]:
    spec = RESOURCE_TYPES.get(resource.get("resourceType", ""))
    if spec is None:
        return []
    rows: list[IndexRow] = []
    for param in spec.search:
        for path in param.paths:
            for value in _walk(resource, path.split(".")):
                rows.extend((param.kind, param.name, v) for v in _values(param, value))
    return list(dict.fromkeys(rows))


def _walk(node, steps: list[str]):
    """Every value at a dotted path, flattening arrays and resolving `[x]` choices."""
    if not steps:
        if isinstance(node, list):
            yield from node
        else:
            yield node
        return
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, steps)
        return
    if not isinstance(node, dict):
        return
    step, rest = steps[0], steps[1:]
    if step.endswith("[x]"):
        stem = step[:-3]
        for key, value in node.items():
            if key.startswith(stem) and key[len(stem):len(stem) + 1].isupper():
                yield from _walk(value, rest)
    elif step in node:
        yield from _walk(node[step], rest)


def _values(param: SearchParam, value) -> list[tuple]:
    return {
        "token": _tokens,
        "string": _strings,
        "date": _dates,
        "reference": _references,
        "quantity": _quantities,
    }[param.kind](value)


def _tokens(value) -> list[tuple]:
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if isinstance(value, str):
        return [(None, value[:255])]
    if not isinstance(value, dict):
        return []
    if "coding" in value or "text" in value and "value" not in value:
        return [t for coding in value.get("coding", []) for t in _tokens(coding)]
    if "value" in value and "code" not in value:          # Identifier
        return [(value.get("system"), str(value["value"])[:255])]
    if "code" in value:                                   # Coding
        return [(value.get("system"), str(value["code"])[:255])]
    return []


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix",
               "line", "city", "district", "state", "postalCode", "country")


def _strings(value) -> list[tuple]:
    if isinstance(value, str):
        return [(normalize_string(value),)] if value.strip() else []
    if isinstance(value, dict):                           # HumanName or Address
        parts = []
        for key in _NAME_PARTS:
            item = value.get(key)
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str) and text.strip():
                    parts.append((normalize_string(text),))
        return parts
    return []


def _references(value) -> list[tuple]:
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return []
    return [reference_key(value["reference"])]


def reference_key(reference: str) -> tuple[str | None, str]:
    """(type, id) of a literal reference, as the index keeps it (search looks up the same).

    `Practitioner/1`, `http://host/fhir/Practitioner/1` and `Practitioner/1/_history/2`
    all give ("Practitioner", "1"); a bare `1` gives (None, "1").
    """
    ref = reference.split("/_history/")[0]
    parts = ref.rstrip("/").split("/")
    if len(parts) >= 2:
        return parts[-2][:64], parts[-1][:255]
    return None, parts[-1][:255]


def _quantities(value) -> list[tuple]:
    if isinstance(value, dict) and isinstance(value.get("value"), (int, float)):
        return [(float(value["value"]), value.get("system"), value.get("code"))]
    return []


def _dates(value) -> list[tuple]:
    if isinstance(value, str):
        return [date_range(value)] if date_range(value) else []
    if isinstance(value, dict) and ("start" in value or "end" in value):     # Period
        low = date_range(value["start"])[0] if value.get("start") else None
        high = date_range(value["end"])[1] if value.get("end") else None
        return [(low, high)]
    return []


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The instants a FHIR date, dateTime or instant covers, as naive UTC datetimes.

    `2024` covers the whole year, `2024-05` the month; a time without seconds
    covers its minute. Dates without a zone are taken as UTC.
    """
    match = _DATE.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    y = int(year)
    if month is None:
        return datetime(y, 1, 1), datetime(y, 12, 31, 23, 59, 59, 999999)
    m = int(month)
    if day is None:
        last = calendar.monthrange(y, m)[1]
        return datetime(y, m, 1), datetime(y, m, last, 23, 59, 59, 999999)
    d = int(day)
    if hour is None:
        return datetime(y, m, d), datetime(y, m, d, 23, 59, 59, 999999)
    micro = int((fraction or ".0")[1:].ljust(6, "0")[:6])
    start = datetime(y, m, d, int(hour), int(minute), int(second or 0), micro)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        start = (start - sign * offset)
    start = start.replace(tzinfo=UTC).replace(tzinfo=None)
    end = start + (timedelta(seconds=1) if second is not None else timedelta(minutes=1)) \
        - timedelta(microseconds=1)
    if fraction:
        end = start
    return start, end
