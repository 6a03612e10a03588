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

import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, BinaryIO

from lxml import etree
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.engine import Connection, Engine

from gateway.export import xmldsig
from gateway.signing import SignatureInvalid, Signer
from gateway.store import clock
from gateway.store.indexing import reference_key
from gateway.store.repository import Store
from gateway.store.schema import resource_versions, resources, search_reference, search_token
from gateway.validation import systems

log = logging.getLogger(__name__)

NS = "urn:egisz-gateway:legacy:1"
FORMAT_VERSION = "1.0"
REGISTERS = ("frmo", "frmr", "elmk")
BATCH_SIZE = 500
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "legacy" / \
    "legacy-registers-1.0.xsd"

KPP = "https://fhir.egisz-gateway.ru/NamingSystem/kpp"
EXTENSION = "https://fhir.egisz-gateway.ru/StructureDefinition/"
_IDENTIFIER_ELEMENTS = {
    systems.SNILS: "snils", systems.INN_PERSON: "inn", systems.INN_ORGANIZATION: "inn",
    systems.OGRN: "ogrn", systems.OGRNIP: "ogrnip", KPP: "kpp", systems.FRMO: "frmoOid",
    systems.OMS_ENP: "omsPolicy", systems.OMS_OLD: "omsPolicyOld", systems.MIS_LOCAL: "misId",
}
# Related resources whose change puts a record into an export `since` (type, param).
_RELATED = {
    "frmo": (("Organization", "partof"),),
    "frmr": (("PractitionerRole", "practitioner"),),
    "elmk": (("Immunization", "patient"), ("DiagnosticReport", "patient"),
             ("Observation", "patient")),
}
_MAIN_TYPE = {"frmo": "Organization", "frmr": "Practitioner", "elmk": "Patient"}
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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
    trailer = _element("trailer", recordCount=str(total))
    yield writer.child(trailer) + writer.finish()
    log.info("legacy export of %s: %d records, signed with key %s (%s)",
             register, total, signer.kid, signer.alg)


def root_element(register: str, exported: datetime, since: datetime | None) -> etree._Element:
    return _element("registers", formatVersion=FORMAT_VERSION, register=register,
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
            rows = [_row(r) for r in conn.execute(query)]
            if not rows:
                return
            records = build(conn, rows)
        after = rows[-1].pk
        yield records


# --- reading the store ------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """The current version of one resource."""

    pk: int
    id: str
    version: int
    last_updated: datetime
    content: dict
    target: str | None = None      # the id it refers to, when read as a referrer


def _current(resource_type: str, *extra):
    return select(resources.c.pk, resources.c.id, resources.c.version,
                  resources.c.last_updated, resource_versions.c.content, *extra) \
        .join(resource_versions, and_(resource_versions.c.resource_pk == resources.c.pk,
                                      resource_versions.c.version == resources.c.version)) \
        .where(resources.c.resource_type == resource_type, resources.c.deleted.is_(False))


def _row(r) -> Row:
    return Row(r.pk, r.id, r.version, r.last_updated, json.loads(r.content),
               getattr(r, "target_id", None))


def _conditions(register: str, since: datetime | None) -> list:
    """The WHERE conditions on `resources` that pick a register's records."""
    _check(register)
    main = _MAIN_TYPE[register]
    conditions = [resources.c.resource_type == main, resources.c.deleted.is_(False)]
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
        found.update((r.pk, _row(r)) for r in conn.execute(query) if r.pk not in found)
    return [found[pk] for pk in sorted(found)]


def _by_ids(conn: Connection, resource_type: str, ids: Iterable[str]) -> dict[str, Row]:
    found: dict[str, Row] = {}
    for chunk in _chunked(sorted(set(ids))):
        query = _current(resource_type).where(resources.c.id.in_(chunk))
        found.update((r.id, _row(r)) for r in conn.execute(query))
    return found


def _chunked(values: list[str], size: int = BATCH_SIZE) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _grouped(rows: list[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.target or ""].append(row)
    return groups


def _local_ids(references: Iterable[Any], resource_type: str) -> set[str]:
    """The ids of the literal `resource_type/id` references among `references`."""
    ids = set()
    for reference in references:
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            rtype, rid = reference_key(reference["reference"])
            if rtype == resource_type:
                ids.add(rid)
    return ids


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
    org_ids = _local_ids((role.content.get("organization") for group in roles.values()
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
    cited = _local_ids((ref for group in reports.values() for report in group
                        for ref in report.content.get("result") or []), "Observation")
    observations.update(_by_ids(conn, "Observation", cited - set(observations)))
    by_patient = _grouped(own)
    return [book_element(row, vaccinations.get(row.id, []), reports.get(row.id, []),
                         by_patient.get(row.id, []), observations) for row in rows]


# --- records: pure functions of FHIR dicts ----------------------------------------------

def organization_element(row: Row, children: dict[str, list[Row]],
                         tag: str = "organization") -> etree._Element:
    org = row.content
    element = _record(tag, row)
    _identifiers(element, org.get("identifier"))
    _add(element, "active", _boolean(org.get("active")))
    for concept in org.get("type") or []:
        _concept(element, "type", concept)
    _add(element, "name", org.get("name"))
    for alias in org.get("alias") or []:
        _add(element, "alias", alias)
    _addresses(element, org.get("address"))
    _contacts(element, org.get("telecom"))
    for child in children.get(row.id, []):
        element.append(organization_element(child, children, "department"))
    return element


def worker_element(row: Row, roles: list[Row],
                   organizations: dict[str, dict]) -> etree._Element:
    person = row.content
    element = _record("worker", row)
    _person(element, person)
    for qualification in person.get("qualification") or []:
        _certificate(element, qualification)
    for role in roles:
        element.append(employment_element(role, organizations))
    return element


def employment_element(row: Row, organizations: dict[str, dict]) -> etree._Element:
    role = row.content
    element = _record("employment", row)
    _identifiers(element, role.get("identifier"))
    _add(element, "active", _boolean(role.get("active")))
    organization = role.get("organization")
    if isinstance(organization, dict):
        target = organizations.get(next(iter(_local_ids([organization], "Organization")), ""))
        _reference(element, "organization", organization, target)
    extensions = {e.get("url"): e for e in role.get("extension") or [] if isinstance(e, dict)}
    department = extensions.get(EXTENSION + "department", {}).get("valueReference")
    if isinstance(department, dict):
        _reference(element, "department", department)
    for concept in role.get("code") or []:
        _concept(element, "position", concept)
    for concept in role.get("specialty") or []:
        _concept(element, "specialty", concept)
    _add(element, "rate", _decimal(extensions.get(EXTENSION + "employment-rate", {})
                                   .get("valueDecimal")))
    position_type = extensions.get(EXTENSION + "position-type", {}).get("valueCoding")
    if isinstance(position_type, dict):
        _concept(element, "positionType", {"coding": [position_type]})
    period = role.get("period") or {}
    _add(element, "start", period.get("start"))
    _add(element, "end", period.get("end"))
    _contacts(element, role.get("telecom"))
    return element


def book_element(row: Row, vaccinations: list[Row], reports: list[Row],
                 observations: list[Row], lookup: dict[str, Row]) -> etree._Element:
    element = _record("medicalBook", row)
    _person(element, row.content)
    for vaccination in vaccinations:
        element.append(vaccination_element(vaccination))
    cited: set[str] = set()
    for report in reports:
        results = _local_ids(report.content.get("result") or [], "Observation")
        cited |= results
        element.append(examination_element(report, [lookup[r] for r in _ordered(
            report.content.get("result"), results) if r in lookup]))
    for observation in observations:
        if observation.id not in cited:
            element.append(observation_element(observation, "labResult"))
    return element


def vaccination_element(row: Row) -> etree._Element:
    imm = row.content
    element = _record("vaccination", row)
    _identifiers(element, imm.get("identifier"))
    _add(element, "status", imm.get("status"))
    if imm.get("vaccineCode"):
        _concept(element, "vaccine", imm["vaccineCode"])
    _add(element, "date", imm.get("occurrenceDateTime"))
    _add(element, "recorded", imm.get("recorded"))
    _add(element, "lotNumber", imm.get("lotNumber"))
    if isinstance(imm.get("manufacturer"), dict):
        _reference(element, "manufacturer", imm["manufacturer"])
    if imm.get("route"):
        _concept(element, "route", imm["route"])
    _quantity(element, "dose", imm.get("doseQuantity"))
    for applied in imm.get("protocolApplied") or []:
        _add(element, "doseNumber", applied.get("doseNumberPositiveInt")
             or applied.get("doseNumberString"))
    for performer in imm.get("performer") or []:
        if isinstance(performer, dict) and isinstance(performer.get("actor"), dict):
            _reference(element, "performer", performer["actor"])
    return element


def examination_element(row: Row, results: list[Row]) -> etree._Element:
    report = row.content
    element = _record("examination", row)
    _identifiers(element, report.get("identifier"))
    _add(element, "status", report.get("status"))
    for concept in report.get("category") or []:
        _concept(element, "category", concept)
    if report.get("code"):
        _concept(element, "kind", report["code"])
    _effective(element, report)
    _add(element, "issued", report.get("issued"))
    for performer in report.get("performer") or []:
        _reference(element, "performer", performer)
    _add(element, "conclusion", report.get("conclusion"))
    for concept in report.get("conclusionCode") or []:
        _concept(element, "conclusionCode", concept)
    for result in results:
        element.append(observation_element(result, "result"))
    for form in report.get("presentedForm") or []:
        _add(element, "attachment", form.get("data"), contentType=form.get("contentType"),
             title=form.get("title"), url=form.get("url"))
    return element


def observation_element(row: Row, tag: str) -> etree._Element:
    obs = row.content
    element = _record(tag, row)
    _identifiers(element, obs.get("identifier"))
    _add(element, "status", obs.get("status"))
    for concept in obs.get("category") or []:
        _concept(element, "category", concept)
    if obs.get("code"):
        _concept(element, "code", obs["code"])
    _effective(element, obs)
    _add(element, "issued", obs.get("issued"))
    for performer in obs.get("performer") or []:
        _reference(element, "performer", performer)
    _quantity(element, "valueQuantity", obs.get("valueQuantity"))
    if obs.get("valueCodeableConcept"):
        _concept(element, "valueConcept", obs["valueCodeableConcept"])
    _add(element, "valueString", obs.get("valueString"))
    _add(element, "valueBoolean", _boolean(obs.get("valueBoolean")))
    _add(element, "valueInteger", obs.get("valueInteger"))
    _add(element, "valueDateTime", obs.get("valueDateTime"))
    for concept in obs.get("interpretation") or []:
        _concept(element, "interpretation", concept)
    for limits in obs.get("referenceRange") or []:
        reference_range = _add(element, "referenceRange", force=True)
        _quantity(reference_range, "low", limits.get("low"))
        _quantity(reference_range, "high", limits.get("high"))
        _add(reference_range, "text", limits.get("text"))
    return element


# --- the parts records share ------------------------------------------------------------

def _person(element: etree._Element, person: dict) -> None:
    """Identifiers, name, sex, birth date, addresses and contacts of a worker or patient."""
    _identifiers(element, person.get("identifier"))
    _add(element, "active", _boolean(person.get("active")))
    names = [n for n in person.get("name") or [] if isinstance(n, dict)]
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if name:
        given = name.get("given") or []
        part = _add(element, "name", force=True)
        _add(part, "family", name.get("family"))
        _add(part, "given", given[0] if given else None)
        _add(part, "patronymic", " ".join(given[1:]) or None)
        _add(part, "text", name.get("text"))
    _add(element, "gender", person.get("gender"))
    _add(element, "birthDate", person.get("birthDate"))
    _addresses(element, person.get("address"))
    _contacts(element, person.get("telecom"))


def _identifiers(element: etree._Element, identifiers: Any) -> None:
    for identifier in identifiers or []:
        if not isinstance(identifier, dict) or identifier.get("value") is None:
            continue
        system, value = identifier.get("system"), identifier["value"]
        if system == systems.PASSPORT:
            assigner = identifier.get("assigner") or {}
            _add(element, "passport", value,
                 issued=(identifier.get("period") or {}).get("start"),
                 issuer=assigner.get("display"),
                 divisionCode=(assigner.get("identifier") or {}).get("value"))
        elif system in _IDENTIFIER_ELEMENTS:
            _add(element, _IDENTIFIER_ELEMENTS[system], value)
        else:
            _add(element, "otherIdentifier", value, system=system)


def _certificate(element: etree._Element, qualification: dict) -> None:
    certificate = _add(element, "certificate", force=True)
    identifiers = [i for i in qualification.get("identifier") or [] if isinstance(i, dict)]
    if identifiers:
        _add(certificate, "number", identifiers[0].get("value"))
        _add(certificate, "kind", (identifiers[0].get("type") or {}).get("text"))
    if qualification.get("code"):
        _concept(certificate, "specialty", qualification["code"])
    if isinstance(qualification.get("issuer"), dict):
        _reference(certificate, "issuer", qualification["issuer"])
    period = qualification.get("period") or {}
    _add(certificate, "issued", period.get("start"))
    _add(certificate, "validUntil", period.get("end"))


def _concept(parent: etree._Element, tag: str, concept: dict) -> None:
    """A CodeableConcept: its text, and each coding with code, system, version, display."""
    element = _add(parent, tag, force=True, text=concept.get("text"))
    for coding in concept.get("coding") or []:
        _add(element, "coding", coding.get("display"), force=True, code=coding.get("code"),
             system=coding.get("system"), version=coding.get("version"))


def _reference(parent: etree._Element, tag: str, reference: dict,
               target: dict | None = None) -> None:
    """A Reference: literal `ref`, logical identifier, display (or the target's name)."""
    identifier = reference.get("identifier") or {}
    frmo = [i.get("value") for i in (target or {}).get("identifier") or []
            if isinstance(i, dict) and i.get("system") == systems.FRMO]
    _add(parent, tag, reference.get("display") or (target or {}).get("name"), force=True,
         ref=reference.get("reference"),
         identifierSystem=identifier.get("system") or (systems.FRMO if frmo else None),
         identifier=identifier.get("value") or (frmo[0] if frmo else None))


def _addresses(parent: etree._Element, addresses: Any) -> None:
    for address in addresses or []:
        element = _add(parent, "address", force=True, use=address.get("use"))
        _add(element, "text", address.get("text"))
        _add(element, "postalCode", address.get("postalCode"))
        _add(element, "region", address.get("state"))
        _add(element, "city", address.get("city"))
        for line in address.get("line") or []:
            _add(element, "line", line)
        _add(element, "country", address.get("country"))


def _contacts(parent: etree._Element, telecoms: Any) -> None:
    for telecom in telecoms or []:
        kind = telecom.get("system")
        if kind in ("phone", "email"):
            _add(parent, kind, telecom.get("value"), use=telecom.get("use"))
        else:
            _add(parent, "contact", telecom.get("value"), system=kind, use=telecom.get("use"))


def _quantity(parent: etree._Element, tag: str, quantity: Any) -> None:
    if isinstance(quantity, dict) and quantity.get("value") is not None:
        _add(parent, tag, force=True, value=_decimal(quantity["value"]),
             unit=quantity.get("unit"), system=quantity.get("system"), code=quantity.get("code"))


def _effective(parent: etree._Element, resource: dict) -> None:
    if resource.get("effectiveDateTime"):
        _add(parent, "effective", resource["effectiveDateTime"])
    elif isinstance(resource.get("effectivePeriod"), dict):
        period = resource["effectivePeriod"]
        _add(parent, "effectivePeriod", force=True, start=period.get("start"),
             end=period.get("end"))


# --- building elements ------------------------------------------------------------------

def _element(tag: str, **attributes: str | None) -> etree._Element:
    """A top-level element of the format's namespace (the default one)."""
    return etree.Element(f"{{{NS}}}{tag}", _attributes(attributes), nsmap={None: NS})


def _record(tag: str, row: Row) -> etree._Element:
    return _element(tag, id=row.id, version=str(row.version),
                    lastUpdated=clock.instant(row.last_updated))


def _add(parent: etree._Element, tag: str, content: Any = None, *, force: bool = False,
         **attributes: Any) -> etree._Element | None:
    """Append <tag> with content and attributes; nothing when all are empty, unless `force`."""
    attributes = _attributes(attributes)
    if content is None and not attributes and not force:
        return None
    element = etree.SubElement(parent, f"{{{NS}}}{tag}", attributes)
    if content is not None:
        element.text = _clean(content)
    return element


def _attributes(attributes: dict[str, Any]) -> dict[str, str]:
    return {name: _clean(value) for name, value in attributes.items() if value is not None}


def _clean(value: Any) -> str:
    """Text as XML 1.0 can carry it: characters it cannot hold are dropped."""
    return _NOT_XML.sub("", value if isinstance(value, str) else str(value))


def _boolean(value: Any) -> str | None:
    return None if value is None else ("true" if value else "false")


def _decimal(value: Any) -> str | None:
    """A JSON number as xs:decimal (never an exponent: 1e-05 is 0.00001)."""
    if value is None or isinstance(value, bool):
        return None
    return format(Decimal(repr(value) if isinstance(value, float) else str(value)), "f")


def _ordered(references: Any, ids: set[str]) -> list[str]:
    """`ids` in the order the references name them."""
    ordered = [reference_key(r["reference"])[1] for r in references or []
               if isinstance(r, dict) and isinstance(r.get("reference"), str)]
    return list(dict.fromkeys(rid for rid in ordered if rid in ids))


def _check(register: str) -> None:
    if register not in REGISTERS:
        raise UnknownRegister(f"unknown register {register!r}; use one of {REGISTERS}")


def _naive_utc(moment: datetime | None) -> datetime | None:
    """The store keeps naive UTC times; a naive `since` is taken as UTC."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
