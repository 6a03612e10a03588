"""Russian rules: identifiers, person names, dates, contacts, region codes (pure).

The rules guard Russian data without refusing valid foreign data: an identifier is
checked only when its system is a Russian one, a name must not mix Latin and
Cyrillic letters but may be wholly Latin, a region code is checked only on a
Russian address. Values are normalised as they are checked (СНИЛС to bare digits,
phones to +7XXXXXXXXXX, aliases of systems to the preferred one), so `check`
returns the resource to store alongside the issues found.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from datetime import date

from gateway.issues import Issue
from gateway.validation import identifiers as ids
from gateway.validation import systems
from gateway.validation.context import ValidationContext
from gateway.validation.terminology import REGIONS

PERSON_TYPES = ("Practitioner", "Patient")
RUSSIAN_COUNTRIES = {"ru", "rus", "643", "россия", "российская федерация", "рф"}
EARLIEST_BIRTH = date(1900, 1, 1)
LABELS_RU = {"phone": "Телефон", "email": "Электронная почта"}


def check(resource: dict, ctx: ValidationContext) -> tuple[dict, list[Issue]]:
    resource = copy.deepcopy(resource)
    rtype = resource.get("resourceType", "")
    issues: list[Issue] = []
    russian = is_russian(resource)
    for path, node in walk_objects(resource, rtype):
        if "system" in node and "value" in node:
            issues += _check_identifier_or_contact(node, path, ctx, russian)
    if rtype in PERSON_TYPES:
        issues += _check_names(resource, rtype)
        birth_issues = _check_birth_date(resource, rtype, ctx.today)
        issues += birth_issues
        if not birth_issues:      # a wrong birth date would make every passport look early
            issues += _check_passport_dates(resource, rtype, ctx.today)
    issues += _check_issue_dates(resource, rtype, ctx.today)
    issues += _check_addresses(resource, rtype, ctx)
    return resource, issues


def walk_objects(node, path: str) -> Iterator[tuple[str, dict]]:
    """Every JSON object in a resource with its FHIRPath, parents before children."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key not in ("contained", "text"):
                yield from walk_objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from walk_objects(item, f"{path}[{index}]")


# --- identifiers and contact points ------------------------------------------------

def _inn_checker(system: str) -> Callable[[str], str]:
    return ids.inn_person if system == systems.INN_PERSON else ids.inn_organization


def _checker(system: str, ctx: ValidationContext) -> Callable[[str], str] | None:
    return {
        systems.SNILS: ids.snils,
        systems.INN_ORGANIZATION: ids.inn_organization,
        systems.INN_PERSON: ids.inn_person,
        systems.OGRN: ids.ogrn,
        systems.OGRNIP: ids.ogrnip,
        systems.OMS_ENP: lambda v: ids.oms_enp(v, verify_check_digit=ctx.oms_check_digit),
        systems.PASSPORT: ids.passport,
        systems.PASSPORT_DIVISION: ids.division_code,
        systems.FRMO: ids.frmo_oid,
        "phone": ids.phone,
        "email": ids.email,
    }.get(system)


def is_russian(resource: dict) -> bool:
    """Whether a resource speaks of Russia: a Russian identifier or a Russian address.

    Foreign records (the HL7 examples: Dutch, American, Australian) write phones in
    their national formats; there a number that is not E.164 is only a warning.
    """
    russian_systems = set(systems.LABELS)
    return any(
        systems.preferred_system(i.get("system"), i.get("value")) in russian_systems
        for i in resource.get("identifier") or [] if isinstance(i, dict)
    ) or any(_is_russian_address(a) for a in resource.get("address") or []
             if isinstance(a, dict))


def _check_identifier_or_contact(node: dict, path: str, ctx: ValidationContext,
                                 russian: bool) -> list[Issue]:
    system, value = node.get("system"), node.get("value")
    if not isinstance(system, str) or not isinstance(value, str):
        return []
    preferred = systems.preferred_system(system, value)
    checker = _checker(preferred, ctx)
    if checker is None:
        return []
    label = systems.LABELS.get(preferred, preferred)
    try:
        normalised = checker(value)
    except ids.InvalidValue as exc:
        severity = "error" if russian or preferred != "phone" else "warning"
        return [Issue("value", f"{LABELS_RU.get(label, label)}: {exc.text_ru}",
                      f"{preferred}: {exc.text_en}", f"{path}.value", severity)]
    node["value"] = normalised
    if preferred not in ("phone", "email"):
        node["system"] = preferred
    issues = []
    if preferred == "email" and ids.is_throwaway_email(normalised):
        issues.append(Issue("value", "Адрес электронной почты на одноразовом домене: укажите "
                                     "постоянный адрес.",
                            "E-mail on a throwaway domain.", f"{path}.value", "warning"))
    if preferred == systems.FRMO:
        region = ids.frmo_region(normalised)
        book = ctx.terminology.find("urn:oid:" + REGIONS)
        if book is not None and not book.has(str(int(region))):
            issues.append(Issue("code-invalid",
                                f"Код региона {region} в OID ФРМО отсутствует в справочнике "
                                f"субъектов РФ ({REGIONS}, версия {book.version}).",
                                f"Region {region} of the FRMO OID is not in the regions book.",
                                f"{path}.value"))
    return issues


# --- names ------------------------------------------------------------------------

def _check_names(resource: dict, rtype: str) -> list[Issue]:
    issues = []
    russian = _has_russian_identity(resource)
    for n, name in enumerate(resource.get("name") or []):
        if not isinstance(name, dict):
            continue
        parts = [("family", name.get("family"))]
        parts += [(f"given[{g}]", given) for g, given in enumerate(name.get("given") or [])]
        for where, part in parts:
            if not isinstance(part, str):
                continue
            expression = f"{rtype}.name[{n}].{where}"
            try:
                ids.person_name_part(part)
            except ids.InvalidValue as exc:
                issues.append(Issue("value", exc.text_ru, exc.text_en, expression))
                continue
            if russian and not ids.is_cyrillic(part):
                issues.append(Issue(
                    "value", "Имя гражданина РФ в ФРМР/ЕГИСЗ записывается кириллицей.",
                    "Names of persons with Russian identifiers are written in Cyrillic.",
                    expression, "warning"))
    return issues


def _has_russian_identity(resource: dict) -> bool:
    return any(isinstance(i, dict) and systems.preferred_system(i.get("system"), i.get("value"))
               in (systems.SNILS, systems.INN_PERSON, systems.OMS_ENP, systems.PASSPORT)
               for i in resource.get("identifier") or [])


# --- dates ------------------------------------------------------------------------

def _date_of(value) -> date | None:
    """The first day a FHIR date/dateTime string names (None if it is not one)."""
    if not isinstance(value, str):
        return None
    match = re.match(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", value)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2] or 1), int(match[3] or 1))
    except ValueError:
        return None


def _check_birth_date(resource: dict, rtype: str, today: date) -> list[Issue]:
    born = _date_of(resource.get("birthDate"))
    expression = f"{rtype}.birthDate"
    if born is None:
        return []
    if born > today:
        return [Issue("value", "Дата рождения в будущем: проверьте дату (формат ГГГГ-ММ-ДД).",
                      "Birth date is in the future.", expression)]
    if born < EARLIEST_BIRTH:
        return [Issue("value", "Дата рождения раньше 1900 года: проверьте дату.",
                      "Birth date is before 1900.", expression)]
    return []


def _not_in_future(value, expression: str, today: date, what_ru: str, what_en: str):
    moment = _date_of(value)
    if moment is not None and moment > today:
        return [Issue("value", f"{what_ru} в будущем: укажите фактическую дату.",
                      f"{what_en} is in the future.", expression)]
    return []


# Elements holding the date something was issued or done: none may be in the future.
ISSUE_DATES = {
    "Immunization": [("occurrenceDateTime", "Дата вакцинации", "Vaccination date"),
                     ("recorded", "Дата записи", "Recorded date")],
    "DiagnosticReport": [("issued", "Дата выдачи заключения", "Issue date"),
                         ("effectiveDateTime", "Дата исследования", "Effective date")],
    "Observation": [("issued", "Дата выдачи результата", "Issue date"),
                    ("effectiveDateTime", "Дата исследования", "Effective date")],
}


def _check_issue_dates(resource: dict, rtype: str, today: date) -> list[Issue]:
    issues = []
    for element, what_ru, what_en in ISSUE_DATES.get(rtype, []):
        issues += _not_in_future(resource.get(element), f"{rtype}.{element}", today,
                                 what_ru, what_en)
    for q, qual in enumerate(resource.get("qualification") or []):
        if isinstance(qual, dict) and isinstance(qual.get("period"), dict):
            issues += _not_in_future(qual["period"].get("start"),
                                     f"{rtype}.qualification[{q}].period.start", today,
                                     "Дата выдачи документа", "Issue date")
    for i, ident in enumerate(resource.get("identifier") or []):
        if isinstance(ident, dict) and isinstance(ident.get("period"), dict):
            issues += _not_in_future(ident["period"].get("start"),
                                     f"{rtype}.identifier[{i}].period.start", today,
                                     "Дата выдачи документа", "Document issue date")
    return issues


def _check_passport_dates(resource: dict, rtype: str, today: date) -> list[Issue]:
    """A Russian passport is issued at 14 at the earliest."""
    born = _date_of(resource.get("birthDate"))
    if born is None:
        return []
    try:
        fourteen = born.replace(year=born.year + 14)
    except ValueError:                       # born on 29 February
        fourteen = date(born.year + 14, 3, 1)
    issues = []
    for i, ident in enumerate(resource.get("identifier") or []):
        if not isinstance(ident, dict) or ident.get("system") != systems.PASSPORT:
            continue
        issued = _date_of((ident.get("period") or {}).get("start"))
        if issued is not None and issued < fourteen:
            issues.append(Issue(
                "value", "Паспорт выдан раньше 14-летия владельца: проверьте дату выдачи "
                         "и дату рождения.",
                "Passport issue date is before the holder's 14th birthday.",
                f"{rtype}.identifier[{i}].period.start"))
    return issues


# --- addresses --------------------------------------------------------------------

def _is_russian_address(address: dict) -> bool:
    country = address.get("country")
    if isinstance(country, str):
        return country.strip().casefold() in RUSSIAN_COUNTRIES
    state = address.get("state")
    return isinstance(state, str) and state.strip().isdigit()


def _check_addresses(resource: dict, rtype: str, ctx: ValidationContext) -> list[Issue]:
    book = ctx.terminology.find("urn:oid:" + REGIONS)
    if book is None:
        return []
    issues = []
    for a, address in enumerate(resource.get("address") or []):
        if not isinstance(address, dict) or not _is_russian_address(address):
            continue
        state = address.get("state")
        if not isinstance(state, str):
            continue
        code = state.strip()
        if not (code.isdigit() and len(code) == 2 and book.has(str(int(code)))):
            issues.append(Issue(
                "code-invalid",
                f"Код субъекта РФ должен быть двузначным кодом из справочника «{book.title}» "
                f"({REGIONS}, версия {book.version}), например 77 — г. Москва.",
                f"Region code is not a two-digit code of the regions book {REGIONS} "
                f"v{book.version}.",
                f"{rtype}.address[{a}].state"))
    return issues
