"""Is a received Bundle acceptable at all? The checks behind a 400 (pure).

These are the problems of the Bundle itself, answered at once and for the whole
Bundle: not a transaction, no identifier, entries the protocol does not allow
(docs/upstream-protocol.md, "Sending"). What is wrong with a record inside a
well-formed Bundle is for the business rules, later, per entry.
"""
from __future__ import annotations

import hashlib
import json
import re

from gateway.issues import Issue

MAX_IDENTIFIER = 255
_URL = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")


def identifier_of(bundle: object) -> str | None:
    """`Bundle.identifier.value`, if there is a usable one."""
    if not isinstance(bundle, dict):
        return None
    identifier = bundle.get("identifier")
    value = identifier.get("value") if isinstance(identifier, dict) else None
    if isinstance(value, str) and value.strip() and len(value) <= MAX_IDENTIFIER:
        return value
    return None


def entries_digest(bundle: dict) -> str:
    """A fingerprint of the entries: a retry must carry the same ones."""
    text = json.dumps(bundle.get("entry"), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def not_a_bundle(body: object) -> Issue | None:
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        return None
    return Issue("structure", "Тело запроса должно быть ресурсом Bundle в формате JSON.",
                 "The body must be a FHIR Bundle in JSON.", "Bundle")


def bundle_problems(bundle: dict) -> list[Issue]:
    """Every reason to refuse the whole Bundle; empty when it may be queued."""
    issues: list[Issue] = []
    if bundle.get("type") != "transaction":
        issues.append(Issue("invalid", "Пакет должен иметь тип transaction.",
                            "Bundle.type must be 'transaction'.", "Bundle.type"))
    if identifier_of(bundle) is None:
        issues.append(Issue("required",
                            "У пакета нет идентификатора (Bundle.identifier.value): по нему "
                            "повторная отправка узнаётся и не применяется дважды.",
                            "Bundle.identifier.value is missing, empty or longer than "
                            f"{MAX_IDENTIFIER} characters.", "Bundle.identifier"))
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        issues.append(Issue("required", "Пакет не содержит записей (Bundle.entry).",
                            "Bundle.entry is missing or empty.", "Bundle.entry"))
        return issues
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        issues += _entry_problems(index, entry, seen)
    return issues


def _entry_problems(index: int, entry: object, seen: set[str]) -> list[Issue]:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict):
        return [Issue("structure", f"Запись {index + 1} пакета не является объектом.",
                      f"{where} is not an object.", where)]
    request = entry.get("request")
    method = request.get("method") if isinstance(request, dict) else None
    url = request.get("url") if isinstance(request, dict) else None
    if method not in ("PUT", "DELETE"):
        return [Issue("invalid", f"Запись {index + 1}: допустимы только методы PUT и DELETE.",
                      f"{where}.request.method must be PUT or DELETE.",
                      f"{where}.request.method")]
    if not isinstance(url, str) or not _URL.fullmatch(url):
        return [Issue("invalid", f"Запись {index + 1}: адрес записи должен иметь вид Тип/id.",
                      f"{where}.request.url must be Type/id.", f"{where}.request.url")]
    issues: list[Issue] = []
    if url in seen:
        issues.append(Issue("duplicate", f"Запись {index + 1}: ресурс {url} встречается в "
                                         "пакете дважды.",
                            f"{url} occurs twice in the Bundle.", f"{where}.request.url"))
    seen.add(url)
    full_url = entry.get("fullUrl")
    if full_url is not None and full_url != url:
        issues.append(Issue("invalid", f"Запись {index + 1}: fullUrl не совпадает с адресом "
                                       "запроса.",
                            f"{where}.fullUrl differs from request.url.", f"{where}.fullUrl"))
    if method == "PUT":
        issues += _resource_problems(where, index, url, entry.get("resource"))
    return issues


def _resource_problems(where: str, index: int, url: str, resource: object) -> list[Issue]:
    rtype, rid = url.split("/", 1)
    if not isinstance(resource, dict):
        return [Issue("required", f"Запись {index + 1}: для PUT нужен ресурс.",
                      f"{where}.resource is missing for PUT.", f"{where}.resource")]
    issues: list[Issue] = []
    if resource.get("resourceType") != rtype or resource.get("id") != rid:
        issues.append(Issue("invalid", f"Запись {index + 1}: тип и id ресурса не совпадают с "
                                       "адресом запроса.",
                            f"{where}.resource type/id differ from request.url.",
                            f"{where}.resource.id"))
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    if not isinstance(version, str) or not version:
        issues.append(Issue("required", f"Запись {index + 1}: у ресурса нет номера версии "
                                        "(meta.versionId).",
                            f"{where}.resource.meta.versionId is missing.",
                            f"{where}.resource.meta.versionId"))
    return issues
