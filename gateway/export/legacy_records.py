"""The records of the legacy XML format 1.0: pure functions from FHIR dicts to elements.

One function per element of schemas/legacy/legacy-registers-1.0.xsd (see
docs/legacy-export.md for what each means). They read only the resources they are
given (`Row`s the exporter in `gateway.export.legacy` read from the store), so they
can be tested without a database, and they never log: records hold personal data.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from lxml import etree

from gateway.store import clock
from gateway.store.indexing import reference_key
from gateway.validation import systems

NS = "urn:egisz-gateway:legacy:1"
KPP = "https://fhir.egisz-gateway.ru/NamingSystem/kpp"
EXTENSION = "https://fhir.egisz-gateway.ru/StructureDefinition/"
_IDENTIFIER_ELEMENTS = {
    systems.SNILS: "snils", systems.INN_PERSON: "inn", systems.INN_ORGANIZATION: "inn",
    systems.OGRN: "ogrn", systems.OGRNIP: "ogrnip", KPP: "kpp", systems.FRMO: "frmoOid",
    systems.OMS_ENP: "omsPolicy", systems.OMS_OLD: "omsPolicyOld", systems.MIS_LOCAL: "misId",
}
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Row:
    """The current version of one resource."""

    pk: int
    id: str
    version: int
    last_updated: datetime
    content: dict
    target: str | None = None      # the id it refers to, when read as a referrer


# --- records: pure functions of FHIR dicts ----------------------------------------------

def organization_element(row: Row, children: dict[str, list[Row]],
                         tag: str = "organization") -> etree._Element:
    org = row.content
    element = _record(tag, row)
    _identifiers(element, org.get("identifier"))
    add(element, "active", _boolean(org.get("active")))
    for concept in org.get("type") or []:
        _concept(element, "type", concept)
    add(element, "name", org.get("name"))
    for alias in org.get("alias") or []:
        add(element, "alias", alias)
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
    add(element, "active", _boolean(role.get("active")))
    organization = role.get("organization")
    if isinstance(organization, dict):
        target = organizations.get(next(iter(local_ids([organization], "Organization")), ""))
        _reference(element, "organization", organization, target)
    extensions = {e.get("url"): e for e in role.get("extension") or [] if isinstance(e, dict)}
    department = extensions.get(EXTENSION + "department", {}).get("valueReference")
    if isinstance(department, dict):
        _reference(element, "department", department)
    for concept in role.get("code") or []:
        _concept(element, "position", concept)
    for concept in role.get("specialty") or []:
        _concept(element, "specialty", concept)
    add(element, "rate", _decimal(extensions.get(EXTENSION + "employment-rate", {})
                                   .get("valueDecimal")))
    position_type = extensions.get(EXTENSION + "position-type", {}).get("valueCoding")
    if isinstance(position_type, dict):
        _concept(element, "positionType", {"coding": [position_type]})
    period = role.get("period") or {}
    add(element, "start", period.get("start"))
    add(element, "end", period.get("end"))
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
        results = local_ids(report.content.get("result") or [], "Observation")
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
    add(element, "status", imm.get("status"))
    if imm.get("vaccineCode"):
        _concept(element, "vaccine", imm["vaccineCode"])
    add(element, "date", imm.get("occurrenceDateTime"))
    add(element, "recorded", imm.get("recorded"))
    add(element, "lotNumber", imm.get("lotNumber"))
    if isinstance(imm.get("manufacturer"), dict):
        _reference(element, "manufacturer", imm["manufacturer"])
    if imm.get("route"):
        _concept(element, "route", imm["route"])
    _quantity(element, "dose", imm.get("doseQuantity"))
    for applied in imm.get("protocolApplied") or []:
        add(element, "doseNumber", applied.get("doseNumberPositiveInt")
             or applied.get("doseNumberString"))
    for performer in imm.get("performer") or []:
        if isinstance(performer, dict) and isinstance(performer.get("actor"), dict):
            _reference(element, "performer", performer["actor"])
    return element


def examination_element(row: Row, results: list[Row]) -> etree._Element:
    report = row.content
    element = _record("examination", row)
    _identifiers(element, report.get("identifier"))
    add(element, "status", report.get("status"))
    for concept in report.get("category") or []:
        _concept(element, "category", concept)
    if report.get("code"):
        _concept(element, "kind", report["code"])
    _effective(element, report)
    add(element, "issued", report.get("issued"))
    for performer in report.get("performer") or []:
        _reference(element, "performer", performer)
    add(element, "conclusion", report.get("conclusion"))
    for concept in report.get("conclusionCode") or []:
        _concept(element, "conclusionCode", concept)
    for result in results:
        element.append(observation_element(result, "result"))
    for form in report.get("presentedForm") or []:
        add(element, "attachment", form.get("data"), contentType=form.get("contentType"),
             title=form.get("title"), url=form.get("url"))
    return element


def observation_element(row: Row, tag: str) -> etree._Element:
    obs = row.content
    element = _record(tag, row)
    _identifiers(element, obs.get("identifier"))
    add(element, "status", obs.get("status"))
    for concept in obs.get("category") or []:
        _concept(element, "category", concept)
    if obs.get("code"):
        _concept(element, "code", obs["code"])
    _effective(element, obs)
    add(element, "issued", obs.get("issued"))
    for performer in obs.get("performer") or []:
        _reference(element, "performer", performer)
    _quantity(element, "valueQuantity", obs.get("valueQuantity"))
    if obs.get("valueCodeableConcept"):
        _concept(element, "valueConcept", obs["valueCodeableConcept"])
    add(element, "valueString", obs.get("valueString"))
    add(element, "valueBoolean", _boolean(obs.get("valueBoolean")))
    add(element, "valueInteger", obs.get("valueInteger"))
    add(element, "valueDateTime", obs.get("valueDateTime"))
    for concept in obs.get("interpretation") or []:
        _concept(element, "interpretation", concept)
    for limits in obs.get("referenceRange") or []:
        reference_range = add(element, "referenceRange", force=True)
        _quantity(reference_range, "low", limits.get("low"))
        _quantity(reference_range, "high", limits.get("high"))
        add(reference_range, "text", limits.get("text"))
    return element


# --- the parts records share ------------------------------------------------------------

def _person(element: etree._Element, person: dict) -> None:
    """Identifiers, name, sex, birth date, addresses and contacts of a worker or patient."""
    _identifiers(element, person.get("identifier"))
    add(element, "active", _boolean(person.get("active")))
    names = [n for n in person.get("name") or [] if isinstance(n, dict)]
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if name:
        given = name.get("given") or []
        part = add(element, "name", force=True)
        add(part, "family", name.get("family"))
        add(part, "given", given[0] if given else None)
        add(part, "patronymic", " ".join(given[1:]) or None)
        add(part, "text", name.get("text"))
    add(element, "gender", person.get("gender"))
    add(element, "birthDate", person.get("birthDate"))
    _addresses(element, person.get("address"))
    _contacts(element, person.get("telecom"))


def _identifiers(element: etree._Element, identifiers: Any) -> None:
    for identifier in identifiers or []:
        if not isinstance(identifier, dict) or identifier.get("value") is None:
            continue
        system, value = identifier.get("system"), identifier["value"]
        if system == systems.PASSPORT:
            assigner = identifier.get("assigner") or {}
            add(element, "passport", value,
                 issued=(identifier.get("period") or {}).get("start"),
                 issuer=assigner.get("display"),
                 divisionCode=(assigner.get("identifier") or {}).get("value"))
        elif system in _IDENTIFIER_ELEMENTS:
            add(element, _IDENTIFIER_ELEMENTS[system], value)
        else:
            add(element, "otherIdentifier", value, system=system)


def _certificate(element: etree._Element, qualification: dict) -> None:
    certificate = add(element, "certificate", force=True)
    identifiers = [i for i in qualification.get("identifier") or [] if isinstance(i, dict)]
    if identifiers:
        add(certificate, "number", identifiers[0].get("value"))
        add(certificate, "kind", (identifiers[0].get("type") or {}).get("text"))
    if qualification.get("code"):
        _concept(certificate, "specialty", qualification["code"])
    if isinstance(qualification.get("issuer"), dict):
        _reference(certificate, "issuer", qualification["issuer"])
    period = qualification.get("period") or {}
    add(certificate, "issued", period.get("start"))
    add(certificate, "validUntil", period.get("end"))


def _concept(parent: etree._Element, tag: str, concept: dict) -> None:
    """A CodeableConcept: its text, and each coding with code, system, version, display."""
    element = add(parent, tag, force=True, text=concept.get("text"))
    for coding in concept.get("coding") or []:
        add(element, "coding", coding.get("display"), force=True, code=coding.get("code"),
             system=coding.get("system"), version=coding.get("version"))


def _reference(parent: etree._Element, tag: str, reference: dict,
               target: dict | None = None) -> None:
    """A Reference: literal `ref`, logical identifier, display (or the target's name)."""
    identifier = reference.get("identifier") or {}
    frmo = [i.get("value") for i in (target or {}).get("identifier") or []
            if isinstance(i, dict) and i.get("system") == systems.FRMO]
    add(parent, tag, reference.get("display") or (target or {}).get("name"), force=True,
         ref=reference.get("reference"),
         identifierSystem=identifier.get("system") or (systems.FRMO if frmo else None),
         identifier=identifier.get("value") or (frmo[0] if frmo else None))


def _addresses(parent: etree._Element, addresses: Any) -> None:
    for address in addresses or []:
        element = add(parent, "address", force=True, use=address.get("use"))
        add(element, "text", address.get("text"))
        add(element, "postalCode", address.get("postalCode"))
        add(element, "region", address.get("state"))
        add(element, "city", address.get("city"))
        for line in address.get("line") or []:
            add(element, "line", line)
        add(element, "country", address.get("country"))


def _contacts(parent: etree._Element, telecoms: Any) -> None:
    for telecom in telecoms or []:
        kind = telecom.get("system")
        if kind in ("phone", "email"):
            add(parent, kind, telecom.get("value"), use=telecom.get("use"))
        else:
            add(parent, "contact", telecom.get("value"), system=kind, use=telecom.get("use"))


def _quantity(parent: etree._Element, tag: str, quantity: Any) -> None:
    if isinstance(quantity, dict) and quantity.get("value") is not None:
        add(parent, tag, force=True, value=_decimal(quantity["value"]),
             unit=quantity.get("unit"), system=quantity.get("system"), code=quantity.get("code"))


def _effective(parent: etree._Element, resource: dict) -> None:
    if resource.get("effectiveDateTime"):
        add(parent, "effective", resource["effectiveDateTime"])
    elif isinstance(resource.get("effectivePeriod"), dict):
        period = resource["effectivePeriod"]
        add(parent, "effectivePeriod", force=True, start=period.get("start"),
             end=period.get("end"))


# --- building elements ------------------------------------------------------------------

def element(tag: str, **attributes: str | None) -> etree._Element:
    """A top-level element of the format's namespace (the default one)."""
    return etree.Element(f"{{{NS}}}{tag}", _attributes(attributes), nsmap={None: NS})


def _record(tag: str, row: Row) -> etree._Element:
    return element(tag, id=row.id, version=str(row.version),
                    lastUpdated=clock.instant(row.last_updated))


def add(parent: etree._Element, tag: str, content: Any = None, *, force: bool = False,
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


def local_ids(references: Iterable[Any], resource_type: str) -> set[str]:
    """The ids of the literal `resource_type/id` references among `references`."""
    ids = set()
    for reference in references:
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            rtype, rid = reference_key(reference["reference"])
            if rtype == resource_type:
                ids.add(rid)
    return ids
