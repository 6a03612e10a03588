"""What the mock ЕГИСЗ decides about one entry: approved, rejected, or clarify.

The rules, in the order they are checked (every rejection is an issue naming the
field in `expression`, with Russian `details.text` and English `diagnostics`):

1. The register takes the type: ФРМО takes Organizations with a ФРМО OID, ФРМР
   Practitioners and PractitionerRoles, ЭЛМК patients, their records and employers.
2. Identifiers are checked again (СНИЛС, ИНН, ОГРН, ОГРНИП, ФРМО OID) with
   `gateway.validation.identifiers`: an upstream does not trust its clients.
3. **The mock's own rule, not one the gateway applies or ЕГИСЗ is known to
   publish:** an Organization's ИНН (digits 1–2: region of the tax office that
   issued it) and ОГРН (digits 4–5: region of registration) must name the same
   region; otherwise the ОГРН identifier is rejected. It stands for the cross-checks
   a real register makes against ЕГРЮЛ that no client can repeat on its own.
4. A PractitionerRole needs its Organization registered in ФРМО and its
   Practitioner registered in ФРМР (approved earlier, or earlier in the same
   Bundle), and a person holds a given position in a given organization once: a
   second PractitionerRole id for the same practitioner, organization and
   position code is rejected (the same id updated is fine).
5. A share `clarification_rate` of entries that pass is answered "clarification
   required", chosen from a hash of (seed, reference, version): the same version
   always gets the same answer, and once a resource was asked, its later versions
   are not asked again.

DELETE entries are approved and unregister the resource. The module does no I/O:
what is registered is asked through a `Lookup`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Protocol

from gateway.issues import Issue
from gateway.mock_upstream.faults import draw
from gateway.validation import identifiers, systems

APPROVED = "approved"
REJECTED = "rejected"
CLARIFICATION = "clarification_required"

FRMO, FRMR, ELMK = "frmo", "frmr", "elmk"
DESTINATIONS = (FRMO, FRMR, ELMK)
ACCEPTED_TYPES = {
    FRMO: ("Organization",),
    FRMR: ("Practitioner", "PractitionerRole"),
    ELMK: ("Patient", "Immunization", "DiagnosticReport", "Observation", "Organization"),
}
REGISTER_NAMES = {FRMO: "ФРМО", FRMR: "ФРМР", ELMK: "ЭЛМК"}
CLARIFICATION_WORKING_DAYS = 3

_IDENTIFIER_CHECKS: dict[str, Callable[[str], str]] = {
    systems.SNILS: identifiers.snils,
    systems.INN_ORGANIZATION: identifiers.inn_organization,
    systems.INN_PERSON: identifiers.inn_person,
    systems.OGRN: identifiers.ogrn,
    systems.OGRNIP: identifiers.ogrnip,
    systems.FRMO: identifiers.frmo_oid,
}

# What the mock asks to clarify, per type: (FHIRPath, Russian text, English text).
_CLARIFY = {
    "Organization": ("Organization.address[0]",
                     "Уточните адрес организации: он не совпадает с адресом в ЕГРЮЛ. "
                     "Приведите адрес в соответствие с выпиской и отправьте запись снова.",
                     "Clarify the organization's address: it differs from the state "
                     "register of legal entities."),
    "Practitioner": ("Practitioner.name[0]",
                     "Уточните ФИО: оно должно совпадать с документом, удостоверяющим "
                     "личность, и со сведениями СНИЛС. Проверьте запись и отправьте снова.",
                     "Clarify the name: it must match the identity document and the "
                     "SNILS records."),
    "PractitionerRole": ("PractitionerRole.period.start",
                         "Уточните дату начала работы в должности: укажите дату из "
                         "приказа о приёме на работу.",
                         "Clarify the start date of the position from the hiring order."),
    "Patient": ("Patient.name[0]",
                "Уточните ФИО работника: оно должно совпадать с паспортом.",
                "Clarify the worker's name: it must match the passport."),
    "Immunization": ("Immunization.lotNumber",
                     "Уточните серию препарата: укажите её так, как она записана на "
                     "упаковке вакцины.",
                     "Clarify the vaccine lot number as printed on the package."),
    "DiagnosticReport": ("DiagnosticReport.presentedForm[0]",
                         "Приложите читаемую копию заключения с подписью врача.",
                         "Attach a legible copy of the report signed by the physician."),
    "Observation": ("Observation.effective",
                    "Уточните дату исследования: она должна совпадать с датой в "
                    "заключении лаборатории.",
                    "Clarify the date of the test as given in the laboratory report."),
}


FRMO_SYSTEM = systems.FRMO


class Lookup(Protocol):
    """What the rules need to know about the registers (the processor answers)."""

    def is_registered(self, destination: str, reference: str) -> bool: ...

    def organization_by_oid(self, oid: str) -> str | None: ...

    def roles_holding(self, practitioner: str, organization: str,
                      position: str) -> list[str]: ...

    def asked_to_clarify(self, reference: str, other_than_version: str | None) -> bool: ...


@dataclass(frozen=True)
class Entry:
    """One Bundle entry, as the processor hands it over (already shape-checked)."""

    method: str              # PUT | DELETE
    reference: str           # Type/id
    version: str | None
    resource: dict | None    # None for DELETE

    @property
    def resource_type(self) -> str:
        return self.reference.split("/", 1)[0]


@dataclass
class Decision:
    status: str
    issues: list[Issue] = field(default_factory=list)
    clarification_due: date | None = None


def decide(entry: Entry, destination: str, lookup: Lookup, *, seed: int,
           clarification_rate: float, today: date) -> Decision:
    """The answer for one entry; the caller registers or unregisters on approval."""
    issues = _wrong_register(entry, destination)
    if not issues and entry.resource is not None:
        issues = _identifier_issues(entry.resource_type, entry.resource)
        if entry.resource_type == "PractitionerRole":
            issues += _role_issues(entry, lookup)
    if issues:
        return Decision(REJECTED, issues)
    if entry.method == "PUT" and _asks_to_clarify(entry, lookup, seed, clarification_rate):
        path, text_ru, text_en = _CLARIFY.get(
            entry.resource_type, (entry.resource_type, "Уточните сведения записи.",
                                  "Clarify the record."))
        return Decision(CLARIFICATION,
                        [Issue("business-rule", text_ru, text_en, path, severity="warning")],
                        add_working_days(today, CLARIFICATION_WORKING_DAYS))
    return Decision(APPROVED)


def add_working_days(start: date, days: int) -> date:
    """Monday–Friday count only: the gateway computes real deadlines with the calendar."""
    current = start
    while days > 0:
        current += timedelta(days=1)
        if current.weekday() < 5:
            days -= 1
    return current


# --- the checks -----------------------------------------------------------------------

def _wrong_register(entry: Entry, destination: str) -> list[Issue]:
    rtype, register = entry.resource_type, REGISTER_NAMES[destination]
    if rtype not in ACCEPTED_TYPES[destination]:
        return [Issue("not-supported",
                      f"{register} не принимает ресурсы типа {rtype}. Отправьте запись в "
                      "сервис, который ведёт такие сведения.",
                      f"{destination} does not accept {rtype} resources.", rtype)]
    if destination == FRMO and entry.resource is not None and _frmo_oid_index(
            entry.resource) is None:
        return [Issue("required",
                      "В ФРМО регистрируются организации с OID ФРМО. Укажите идентификатор "
                      f"с системой {systems.FRMO}.",
                      "An Organization sent to frmo needs a FRMO OID identifier.",
                      "Organization.identifier")]
    return []


def _frmo_oid_index(resource: dict) -> int | None:
    for index, ident in enumerate(_identifiers(resource)):
        if ident.get("system") == systems.FRMO:
            return index
    return None


def _identifiers(resource: dict) -> list[dict]:
    found = resource.get("identifier")
    if not isinstance(found, list):
        return []
    return [i if isinstance(i, dict) else {} for i in found]


def _identifier_issues(rtype: str, resource: dict) -> list[Issue]:
    issues: list[Issue] = []
    valid: dict[str, tuple[int, str]] = {}
    for index, ident in enumerate(_identifiers(resource)):
        value, system = ident.get("value"), ident.get("system")
        if not isinstance(system, str):
            continue
        system = systems.preferred_system(system, value if isinstance(value, str) else None)
        check = _IDENTIFIER_CHECKS.get(system or "")
        if check is None:
            continue
        path = f"{rtype}.identifier[{index}].value"
        try:
            valid[system] = (index, check(value))
        except identifiers.InvalidValue as bad:
            issues.append(Issue("value", bad.text_ru, bad.text_en, path))
    if rtype == "Organization":
        issues += _region_mismatch(valid)
    return issues


def _region_mismatch(valid: dict[str, tuple[int, str]]) -> list[Issue]:
    """The mock's own ИНН/ОГРН region cross-check (see the module docstring)."""
    inn = valid.get(systems.INN_ORGANIZATION)
    ogrn = valid.get(systems.OGRN)
    if inn is None or ogrn is None:
        return []
    inn_region, ogrn_region = inn[1][:2], ogrn[1][3:5]
    if inn_region == ogrn_region:
        return []
    return [Issue(
        "business-rule",
        f"ИНН и ОГРН организации относятся к разным регионам: по ИНН — {inn_region}, по "
        f"ОГРН — {ogrn_region}. Сверьте ОГРН и ИНН с выпиской из ЕГРЮЛ: скорее всего, один "
        "из них принадлежит другой организации.",
        f"INN region {inn_region} differs from OGRN region {ogrn_region} "
        "(mock upstream's own cross-check).",
        f"Organization.identifier[{ogrn[0]}].value")]


def _role_issues(entry: Entry, lookup: Lookup) -> list[Issue]:
    resource = entry.resource or {}
    organization = organization_reference(resource.get("organization"), lookup)
    practitioner = _local_reference(resource.get("practitioner"), "Practitioner")
    issues: list[Issue] = []
    if organization is None and _frmo_oid(resource.get("organization")):
        issues.append(Issue("not-found",
                            f"Организация с OID {_frmo_oid(resource.get('organization'))} не "
                            "зарегистрирована в ФРМО. Сначала зарегистрируйте организацию в "
                            "ФРМО и дождитесь одобрения, затем отправьте должность сотрудника.",
                            "No organization with this FRMO OID is registered in frmo.",
                            "PractitionerRole.organization.identifier.value"))
    elif organization is None:
        issues.append(Issue("required",
                            "Укажите организацию, в которой работает сотрудник "
                            "(ссылка Organization/<id>).",
                            "PractitionerRole.organization must reference Organization/<id>.",
                            "PractitionerRole.organization"))
    elif not lookup.is_registered(FRMO, organization):
        issues.append(Issue("not-found",
                            "Организация не зарегистрирована в ФРМО. Сначала зарегистрируйте "
                            "организацию в ФРМО и дождитесь одобрения, затем отправьте "
                            "должность сотрудника.",
                            f"{organization} is not registered in frmo.",
                            "PractitionerRole.organization"))
    if practitioner is None:
        issues.append(Issue("required",
                            "Укажите сотрудника (ссылка Practitioner/<id>).",
                            "PractitionerRole.practitioner must reference Practitioner/<id>.",
                            "PractitionerRole.practitioner"))
    elif not lookup.is_registered(FRMR, practitioner):
        issues.append(Issue("not-found",
                            "Сотрудник не зарегистрирован в ФРМР. Сначала отправьте личные "
                            "данные сотрудника, затем его должность.",
                            f"{practitioner} is not registered in frmr.",
                            "PractitionerRole.practitioner"))
    position = role_position(resource)
    if organization and practitioner and position:
        others = [r for r in lookup.roles_holding(practitioner, organization, position)
                  if r != entry.reference]
        if others:
            issues.append(Issue(
                "duplicate",
                "Сотрудник уже зарегистрирован в этой организации на этой должности "
                f"(запись {others[0]}). Измените существующую запись, а не создавайте новую.",
                f"The practitioner already holds this position at this organization "
                f"as {others[0]}.",
                "PractitionerRole.code[0].coding[0].code"))
    return issues


def role_position(resource: dict) -> str | None:
    """The position code of a PractitionerRole: the first coding of its first code."""
    codes = resource.get("code")
    if not isinstance(codes, list) or not codes or not isinstance(codes[0], dict):
        return None
    codings = codes[0].get("coding")
    if not isinstance(codings, list) or not codings or not isinstance(codings[0], dict):
        return None
    code = codings[0].get("code")
    return code if isinstance(code, str) and code else None


def _local_reference(value: object, rtype: str) -> str | None:
    reference = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(reference, str):
        return None
    parts = reference.split("/")
    if len(parts) != 2 or parts[0] != rtype or not parts[1]:
        return None
    return reference


def _frmo_oid(value: object) -> str | None:
    identifier = value.get("identifier") if isinstance(value, dict) else None
    if isinstance(identifier, dict) and identifier.get("system") == FRMO_SYSTEM \
            and isinstance(identifier.get("value"), str):
        return identifier["value"]
    return None


def organization_reference(value: object, lookup: Lookup) -> str | None:
    """`Organization/<id>` of a literal reference, or of the clinic named by ФРМО OID.

    ФРМР knows clinics by their ФРМО OID; an MIS often names the clinic that way.
    """
    literal = _local_reference(value, "Organization")
    if literal:
        return literal
    oid = _frmo_oid(value)
    return lookup.organization_by_oid(oid) if oid else None


def role_keys(entry: Entry, lookup: Lookup) -> dict:
    """The registry columns a PractitionerRole is looked up by."""
    resource = entry.resource or {}
    return {"practitioner": _local_reference(resource.get("practitioner"), "Practitioner"),
            "organization": organization_reference(resource.get("organization"), lookup),
            "position": role_position(resource)}


def _asks_to_clarify(entry: Entry, lookup: Lookup, seed: int, rate: float) -> bool:
    if rate <= 0 or draw(seed, "clarify", entry.reference, entry.version) >= rate:
        return False
    return not lookup.asked_to_clarify(entry.reference, entry.version)
