"""The legacy XML export of the registers: format 1.0, streamed and signed.

For consumers that predate FHIR: one document per register, in the namespace
`urn:egisz-gateway:legacy:1`, described by schemas/legacy/legacy-registers-1.0.xsd
and docs/legacy-export.md. A record is

- `frmo`: an `organization` with a ФРМО OID that is nobody's department, with its
  `department`s nested inside it (Organizations whose partOf points at it, to any depth);
- `frmr`: a `worker` (Practitioner) with his `certificate`s (qualification) and
  `employment`s (his PractitionerRoles: organization, department, position, rate);
- `elmk`: a `medicalBook` (Patient) with `vaccination`s (Immunization), `examination`s
  (DiagnosticReport, the Observations it cites nested as `result`) and `labResult`s
  (the patient's Observations no report of his cites).

Records are read straight from the store's current versions in keyset batches
ordered by resources.pk, each batch with its related resources, in one snapshot per
batch; records are built as lxml elements by pure functions of the FHIR dicts and
written through `xmldsig.EnvelopedWriter`, so memory holds one batch whatever the
register's size. A document is therefore not one snapshot of the whole register: a
record changed while the export runs appears as it was when its batch was read.

With `since`, a record is exported when its own resource or one that refers to it
(a direct department, a role, a medical-book entry) changed at or after that instant.
Deletions are not exported: the format has no tombstones.

Personal data (СНИЛС, passport, names) is written in clear, since the consumer is
authorised; it is never logged.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from lxml import etree
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.engine import Connection, Engine

from gateway.export import xmldsig
from gateway.export.legacy_records import (
    NS,
    Row,
    book_element,
    element,
    local_ids,
    organization_element,
    worker_element,
)
from gateway.signing import SignatureInvalid, Signer
from gateway.store import clock
from gateway.store.encryption import Keyring, keyring_of
from gateway.store.repository import Store
from gateway.store.schema import resource_versions, resources, search_reference, search_token
from gateway.store.tenancy import visible
from gateway.validation import systems

log = logging.getLogger(__name__)

FORMAT_VERSION = "1.0"
REGISTERS = ("frmo", "frmr", "elmk")
BATCH_SIZE = 500
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "legacy" / \
    "legacy-registers-1.0.xsd"

# Related resources whose change puts a record into an export `since` (type, param).
_RELATED = {
    "frmo": (("Organization", "partof"),),
    "frmr": (("PractitionerRole", "practitioner"),),
    "elmk": (("Immunization", "patient"), ("DiagnosticReport", "patient"),
             ("Observation", "patient")),
}
_MAIN_TYPE = {"frmo": "Organization", "frmr": "Practitioner", "elmk": "Patient"}


class UnknownRegister(ValueError):
    """The register named is none of REGISTERS."""


# --- public entry points ----------------------------------------------------------------

def count(engine: Engine, register: str, since: datetime | None = None) -> int:
    """How many records an export of `register` would hold now (for a progress bar)."""
    query = select(func.count()).select_from(resources).where(*_conditions(register, since))
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


def iter_legacy(engine: Engine, register: str, signer: Signer, since: datetime | None = None,
                *, progress: Callable[[int], None] | None = None,
                batch_size: int = BATCH_SIZE) -> Iterator[bytes]:
    """The signed document, one chunk per batch of records (plus head and tail).

    UnknownRegister is raised at the call, before anything is yielded, so a caller can
    still answer with an error. `progress(n)` follows each batch of n records.
    """
    _check(register)
    return _chunks(engine, register, signer, _naive_utc(since), progress, batch_size)


def write_legacy(engine: Engine, register: str, out: BinaryIO, signer: Signer, *,
                 since: datetime | None = None,
                 progress: Callable[[int], None] | None = None) -> int:
    """Write the whole signed document to `out`; the number of records."""
    written = 0

    def counted(n: int) -> None:
        nonlocal written
        written += n
        if progress is not None:
            progress(n)

    for chunk in iter_legacy(engine, register, signer, since, progress=counted):
        out.write(chunk)
    return written


def verify_legacy(source: bytes | str | Path | IO[bytes], key: Any) -> xmldsig.Verified:
    """Check an exported document's signature (see xmldsig.verify_enveloped for `key`).

    Also refuses a validly signed document that is not of this format.
    """
    verified = xmldsig.verify_enveloped(source, key)
    if verified.root != f"{{{NS}}}registers":
        raise SignatureInvalid("Документ не является выгрузкой в формате legacy.",
                               f"The document is not in the legacy format ({NS}).")
    return verified


def schema() -> etree.XMLSchema:
    """The XSD of the format (with the XMLDSig schemas it imports)."""
    return etree.XMLSchema(etree.parse(str(SCHEMA)))


# --- the document -----------------------------------------------------------------------

def _chunks(engine: Engine, register: str, signer: Signer, since: datetime | None,
            progress: Callable[[int], None] | None, batch_size: int) -> Iterator[bytes]:
    writer = xmldsig.EnvelopedWriter(root_element(register, clock.utcnow(), since), signer)
    yield writer.start() + writer.whitespace()
    total = 0
    for batch in _batches(engine, register, since, batch_size):
        yield b"".join(writer.child(record) + writer.whitespace() for record in batch)
        total += len(batch)
        if progress is not None:
            progress(len(batch))
    trailer = element("trailer", recordCount=str(total))
    yield writer.child(trailer) + writer.finish()
    log.info("legacy export of %s: %d records, signed with key %s (%s)",
             register, total, signer.kid, signer.alg)


def root_element(register: str, exported: datetime, since: datetime | None) -> etree._Element:
    return element("registers", formatVersion=FORMAT_VERSION, register=register,
                    exported=clock.instant(exported),
                    since=clock.instant(since) if since else None)


def _batches(engine: Engine, register: str, since: datetime | None,
             batch_size: int) -> Iterator[list[etree._Element]]:
    """Records in batches by resources.pk; each batch read in one snapshot."""
    build = {"frmo": _organization_records, "frmr": _worker_records,
             "elmk": _book_records}[register]
    store, after = Store(engine), 0
    while True:
        with store.snapshot() as conn:
            query = _current(_MAIN_TYPE[register]).where(
                *_conditions(register, since), resources.c.pk > after) \
                .order_by(resources.c.pk).limit(batch_size)
            rows = [_row(r, keyring_of(conn)) for r in conn.execute(query)]
            if not rows:
                return
            records = build(conn, rows)
        after = rows[-1].pk
        yield records


# --- reading the store ------------------------------------------------------------------

def _current(resource_type: str, *extra):
    return select(resources.c.pk, resources.c.resource_type, resources.c.id,
                  resources.c.version, resources.c.last_updated, resource_versions.c.content,
                  resource_versions.c.key_id, *extra) \
        .join(resource_versions, and_(resource_versions.c.resource_pk == resources.c.pk,
                                      resource_versions.c.version == resources.c.version)) \
        .where(resources.c.resource_type == resource_type, resources.c.deleted.is_(False),
               visible(resources.c.pk))


def _row(r, keyring: Keyring) -> Row:
    return Row(r.pk, r.id, r.version, r.last_updated, keyring.load_row(r),
               getattr(r, "target_id", None))


def _conditions(register: str, since: datetime | None) -> list:
    """The WHERE conditions on `resources` that pick a register's records."""
    _check(register)
    main = _MAIN_TYPE[register]
    conditions = [resources.c.resource_type == main, resources.c.deleted.is_(False),
                  visible(resources.c.pk)]      # only what the caller may see (tenancy)
    if register == "frmo":
        conditions += [_has_frmo_oid(), ~_is_department()]
    if since is not None:
        conditions.append(or_(resources.c.last_updated >= since,
                              *(_changed_referrer(t, p, main, since)
                                for t, p in _RELATED[register])))
    return conditions


def _has_frmo_oid():
    return exists().where(search_token.c.resource_pk == resources.c.pk,
                          search_token.c.param == "identifier",
                          search_token.c.system == systems.FRMO)


def _is_department():
    """partOf points at a current Organization (a dangling partOf makes no department)."""
    parent = resources.alias("parent")
    return exists().where(search_reference.c.resource_pk == resources.c.pk,
                          search_reference.c.param == "partof",
                          parent.c.resource_type == "Organization",
                          parent.c.id == search_reference.c.target_id,
                          parent.c.deleted.is_(False))


def _changed_referrer(resource_type: str, param: str, target_type: str, since: datetime):
    referrer = resources.alias("referrer")
    return exists().where(search_reference.c.resource_type == resource_type,
                          search_reference.c.param == param,
                          search_reference.c.target_id == resources.c.id,
                          or_(search_reference.c.target_type == target_type,
                              search_reference.c.target_type.is_(None)),
                          referrer.c.pk == search_reference.c.resource_pk,
                          referrer.c.last_updated >= since)


def _referring(conn: Connection, resource_type: str, param: str, target_type: str,
               ids: Iterable[str]) -> list[Row]:
    """Current resources whose `param` refers to one of `ids`, in pk order, with `target`."""
    found: dict[int, Row] = {}
    for chunk in _chunked(sorted(set(ids))):
        query = _current(resource_type, search_reference.c.target_id) \
            .join(search_reference, search_reference.c.resource_pk == resources.c.pk) \
            .where(search_reference.c.param == param,
                   search_reference.c.target_id.in_(chunk),
                   or_(search_reference.c.target_type == target_type,
                       search_reference.c.target_type.is_(None)))
        found.update((r.pk, _row(r, keyring_of(conn))) for r in conn.execute(query)
                     if r.pk not in found)
    return [found[pk] for pk in sorted(found)]


def _by_ids(conn: Connection, resource_type: str, ids: Iterable[str]) -> dict[str, Row]:
    found: dict[str, Row] = {}
    for chunk in _chunked(sorted(set(ids))):
        query = _current(resource_type).where(resources.c.id.in_(chunk))
        found.update((r.id, _row(r, keyring_of(conn))) for r in conn.execute(query))
    return found


def _chunked(values: list[str], size: int = BATCH_SIZE) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _grouped(rows: list[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.target or ""].append(row)
    return groups


# --- a batch of records -----------------------------------------------------------------

def _organization_records(conn: Connection, rows: list[Row]) -> list[etree._Element]:
    """Organizations with their departments, level by level (one query per level)."""
    children: dict[str, list[Row]] = defaultdict(list)
    seen, level = {row.id for row in rows}, [row.id for row in rows]
    while level:
        found = _referring(conn, "Organization", "partof", "Organization", level)
        level = []
        for row in found:
            if row.id not in seen:          # a partOf cycle must not loop for ever
                seen.add(row.id)
                children[row.target or ""].append(row)
                level.append(row.id)
    return [organization_element(row, children) for row in rows]


def _worker_records(conn: Connection, rows: list[Row]) -> list[etree._Element]:
    roles = _grouped(_referring(conn, "PractitionerRole", "practitioner", "Practitioner",
                                [row.id for row in rows]))
    org_ids = local_ids((role.content.get("organization") for group in roles.values()
                          for role in group), "Organization")
    organizations = {rid: row.content for rid, row in _by_ids(conn, "Organization",
                                                               org_ids).items()}
    return [worker_element(row, roles.get(row.id, []), organizations) for row in rows]


def _book_records(conn: Connection, rows: list[Row]) -> list[etree._Element]:
    ids = [row.id for row in rows]
    vaccinations = _grouped(_referring(conn, "Immunization", "patient", "Patient", ids))
    reports = _grouped(_referring(conn, "DiagnosticReport", "patient", "Patient", ids))
    own = _referring(conn, "Observation", "patient", "Patient", ids)
    observations = {row.id: row for row in own}
    cited = local_ids((ref for group in reports.values() for report in group
                        for ref in report.content.get("result") or []), "Observation")
    observations.update(_by_ids(conn, "Observation", cited - set(observations)))
    by_patient = _grouped(own)
    return [book_element(row, vaccinations.get(row.id, []), reports.get(row.id, []),
                         by_patient.get(row.id, []), observations) for row in rows]


def _check(register: str) -> None:
    if register not in REGISTERS:
        raise UnknownRegister(f"unknown register {register!r}; use one of {REGISTERS}")


def _naive_utc(moment: datetime | None) -> datetime | None:
    """The store keeps naive UTC times; a naive `since` is taken as UTC."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
