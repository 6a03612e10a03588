"""Whole-type files for `gateway export`: NDJSON, a FHIR JSON Bundle, a FHIR XML Bundle.

Each writer takes the batches `gateway.export.reader.batches` reads and writes every
resource as it comes: a Bundle's opening, then its entries one by one, then its
closing, never a list of all entries, so memory stays that of one batch however
large the register. NDJSON and JSON copy the stored JSON text as it is; XML has to
go through the FHIR model of each resource (`gateway.fhir.to_xml_bytes`).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import BinaryIO
from xml.sax.saxutils import quoteattr

from gateway import fhir
from gateway.delivery import routing
from gateway.registry import RESOURCE_TYPES
from gateway.store.clock import instant

Batches = Iterable[list[tuple[str, str]]]          # (id, stored JSON text) per resource
Progress = Callable[[int], None]                   # resources written since the last call

FORMATS = {"ndjson": "ndjson", "fhir-json": "json", "fhir-xml": "xml"}   # → file suffix


def register_types(register: str | None) -> tuple[str, ...]:
    """The types that can go to a register (every type when none is named)."""
    if register is None:
        return tuple(RESOURCE_TYPES)
    # An Organization goes to ФРМО with a ФРМО OID, with the medical book without one.
    return tuple(t for t in RESOURCE_TYPES
                 if register in (routing.destination(t, None), routing.destination(t, {})))


def of_register(batches: Batches, resource_type: str, register: str | None,
                progress: Progress) -> Batches:
    """Only the resources that go to `register`: an Organization goes to ФРМО or, as an
    employer, with the medical book (gateway.delivery.routing). What is left out still
    counts as progress, so a bar reaches its end."""
    for batch in batches:
        if register is None or resource_type != "Organization":
            yield batch
            continue
        kept = [(rid, content) for rid, content in batch
                if routing.destination(resource_type, json.loads(content)) == register]
        progress(len(batch) - len(kept))
        yield kept


def write(fmt: str, out: BinaryIO, resource_type: str, batches: Batches, as_of: datetime,
          base: str | None = None, progress: Progress = lambda n: None) -> int:
    """Write one type in `fmt` (a key of FORMATS); returns the number of resources."""
    writer = {"ndjson": write_ndjson, "fhir-json": write_bundle_json,
              "fhir-xml": write_bundle_xml}[fmt]
    return writer(out, resource_type, batches, as_of, base, progress)


def write_ndjson(out: BinaryIO, resource_type: str, batches: Batches, as_of: datetime,
                 base: str | None, progress: Progress) -> int:
    written = 0
    for batch in batches:
        for _, content in batch:
            out.write(content.encode("utf-8") + b"\n")
        written += len(batch)
        progress(len(batch))
    return written


def write_bundle_json(out: BinaryIO, resource_type: str, batches: Batches, as_of: datetime,
                      base: str | None, progress: Progress) -> int:
    """A `collection` Bundle; `timestamp` is the instant its content is as of."""
    out.write(b'{"resourceType":"Bundle","type":"collection","timestamp":'
              + json.dumps(instant(as_of)).encode("utf-8"))
    written = 0
    for batch in batches:
        for rid, content in batch:
            out.write(b',"entry":[{' if written == 0 else b',{')
            if base:
                out.write(b'"fullUrl":' + json.dumps(f"{base}/{resource_type}/{rid}",
                                                     ensure_ascii=False).encode("utf-8") + b",")
            out.write(b'"resource":' + content.encode("utf-8") + b"}")
            written += 1
        progress(len(batch))
    out.write(b"]}\n" if written else b"}\n")
    return written


def write_bundle_xml(out: BinaryIO, resource_type: str, batches: Batches, as_of: datetime,
                     base: str | None, progress: Progress) -> int:
    """The same Bundle in FHIR XML, in the element order the R4 schema wants."""
    out.write(b'<?xml version="1.0" encoding="UTF-8"?>\n<Bundle xmlns="http://hl7.org/fhir">'
              b'<type value="collection"/><timestamp value="'
              + instant(as_of).encode("ascii") + b'"/>')
    written = 0
    for batch in batches:
        for rid, content in batch:
            out.write(b"<entry>")
            if base:
                out.write(b"<fullUrl value=" + quoteattr(f"{base}/{resource_type}/{rid}")
                          .encode("utf-8") + b"/>")
            out.write(b"<resource>" + _element(json.loads(content)) + b"</resource></entry>")
            written += 1
        progress(len(batch))
    out.write(b"</Bundle>\n")
    return written


def _element(resource: dict) -> bytes:
    """A resource's XML element, without the XML declaration of a standalone document."""
    xml = fhir.to_xml_bytes(resource)
    if xml.startswith(b"<?xml"):
        xml = xml[xml.index(b"?>") + 2:].lstrip()
    return xml
