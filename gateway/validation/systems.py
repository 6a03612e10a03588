"""Identifier systems of the Russian health landscape, with their aliases (pure).

Different platforms spell the same identifier differently (N3 uses ПФР OIDs,
certificates use 1.2.643.100.*, RuCoreIG uses URLs). The gateway recognises every
alias, applies the same check, and writes the preferred system (DOMAIN.md).
"""
from __future__ import annotations

from gateway.validation import identifiers

SNILS = "urn:oid:1.2.643.2.69.1.1.1.6.223"
INN_ORGANIZATION = "urn:oid:1.2.643.100.4"
INN_PERSON = "urn:oid:1.2.643.3.131.1.1"
OGRN = "urn:oid:1.2.643.100.1"
OGRNIP = "urn:oid:1.2.643.100.5"
OMS_ENP = "urn:oid:1.2.643.2.69.1.1.1.6.228"
OMS_OLD = "urn:oid:1.2.643.2.69.1.1.1.6.226"
PASSPORT = "https://fhir.ru/ig/core/systems/passport"
PASSPORT_DIVISION = "https://fhir.egisz-gateway.ru/NamingSystem/passport-division-code"
MIS_LOCAL = "urn:oid:1.2.643.5.1.13.2.7.100.5"
FRMO = "urn:oid:1.2.643.5.1.13.13.11.1461"

# alias -> preferred system; the ИНН URL alias is resolved by the number's length.
ALIASES = {
    "urn:oid:1.2.643.100.3": SNILS,
    "https://fhir.ru/ig/core/systems/snils": SNILS,
    "https://fhir.ru/ig/core/systems/ogrn": OGRN,
    "https://fhir.ru/ig/core/systems/ogrnip": OGRNIP,
    "https://fhir.ru/ig/core/systems/oms": OMS_ENP,
}
INN_ALIAS = "https://fhir.ru/ig/core/systems/inn"

LABELS = {
    SNILS: "СНИЛС",
    INN_ORGANIZATION: "ИНН организации",
    INN_PERSON: "ИНН физического лица",
    OGRN: "ОГРН",
    OGRNIP: "ОГРНИП",
    OMS_ENP: "полис ОМС единого образца (ЕНП)",
    PASSPORT: "паспорт гражданина РФ",
    FRMO: "OID организации в ФРМО",
}


def preferred_system(system: str | None, value: str | None = None) -> str | None:
    """The preferred spelling of an identifier system (unknown systems unchanged)."""
    if system == INN_ALIAS:
        digits = "".join(ch for ch in (value or "") if ch.isdigit())
        return INN_PERSON if len(digits) == 12 else INN_ORGANIZATION
    return ALIASES.get(system, system)


def normalised_identifier(system: str | None, value: str) -> tuple[str | None, str]:
    """An identifier as the store keeps it: preferred system, value in its normal form.

    Conditional writes and search look identifiers up this way, so
    `urn:oid:1.2.643.100.3|112-233-445 95` finds the stored СНИЛС `11223344595`.
    A value that fails its check is looked up as given (it simply finds nothing).
    """
    if not system:
        return None, value
    preferred = preferred_system(system, value)
    checkers = {SNILS: identifiers.snils, INN_PERSON: identifiers.inn_person,
                INN_ORGANIZATION: identifiers.inn_organization,
                OGRN: identifiers.ogrn, PASSPORT: identifiers.passport}
    try:
        value = checkers[preferred](value) if preferred in checkers else value
    except identifiers.InvalidValue:
        pass
    return preferred, value
