"""The write path of the FHIR API: validate, then store — singly or as a Bundle.

Nothing reaches the store without passing `validation.validate`; a resource with
any error is refused whole with every problem listed. Transaction Bundles are
all-or-nothing in one database transaction, with `urn:uuid:` references between
entries rewritten to the ids the server assigns; batch Bundles run each entry on
its own and report each entry's status.
"""
from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from sqlalchemy.engine import Connection

from gateway import validation
from gateway.errors import GatewayError, InvalidRequest, MethodNotAllowed, ValidationFailed
from gateway.issues import Issue, has_errors, operation_outcome
from gateway.registry import RESOURCE_TYPES
from gateway.store import submissions
from gateway.store.repository import Store, Stored, WriteResult, check_id, instant
from gateway.validation import systems
from gateway.validation.context import ValidationContext

Condition = list[tuple[str, str | None, str]]


@dataclass
class Resources:
    store: Store
    context: Callable[[], ValidationContext]

    # --- single resources ---------------------------------------------------------

    def prepare(self, resource: dict, resource_type: str, prefix: str | None = None) -> dict:
        """The resource to store, or ValidationFailed listing every problem."""
        checked, issues = self.check(resource, resource_type, prefix)
        if has_errors(issues):
            raise ValidationFailed(issues)
        return checked

    def check(self, resource: dict, resource_type: str,
              prefix: str | None = None) -> tuple[dict, list[Issue]]:
        if resource.get("resourceType") != resource_type:
            issue = Issue("invalid", f"Тип ресурса в теле ({resource.get('resourceType')}) не "
                                     f"совпадает с адресом запроса ({resource_type}).",
                          f"resourceType {resource.get('resourceType')!r} does not match "
                          f"the URL type {resource_type!r}.", "resourceType")
            return resource, [_prefixed(issue, prefix, resource_type)]
        if RESOURCE_TYPES.get(resource_type) is None or \
                "create" not in RESOURCE_TYPES[resource_type].interactions:
            raise MethodNotAllowed(f"Запись ресурсов {resource_type} не поддерживается.",
                                   f"Writing {resource_type} is not supported.")
        checked, issues = validation.validate(resource, self.context())
        return checked, [_prefixed(i, prefix, resource_type) for i in issues]

    def create(self, resource: dict, resource_type: str,
               if_none_exist: str | None = None) -> WriteResult:
        prepared = self.prepare(resource, resource_type)
        condition = parse_condition(if_none_exist) if if_none_exist else None
        return self.store.run_write(lambda conn: self.store.create(conn, prepared, condition))

    def update(self, resource: dict, resource_type: str, rid: str,
               if_match: int | None) -> WriteResult:
        check_id(rid)
        prepared = self.prepare(resource, resource_type)
        return self.store.run_write(
            lambda conn: self.store.update(conn, prepared, rid, if_match))

    def conditional_update(self, resource: dict, resource_type: str, query: str) -> WriteResult:
        prepared = self.prepare(resource, resource_type)
        condition = parse_condition(query)
        return self.store.run_write(
            lambda conn: self.store.conditional_update(conn, prepared, condition))

    def delete(self, resource_type: str, rid: str) -> WriteResult | None:
        return self.store.run_write(lambda conn: self.store.delete(conn, resource_type, rid))

    # --- Bundles --------------------------------------------------------------------

    def transaction(self, bundle: dict, base: str) -> dict:
        entries = [_entry(e, i) for i, e in enumerate(bundle.get("entry") or [])]
        issues: list[Issue] = []
        for entry in entries:
            if entry.resource is not None:
                entry.resource, found = self.check(entry.resource, entry.type,
                                                   f"Bundle.entry[{entry.index}].resource")
                issues += found
        if has_errors(issues):
            raise ValidationFailed(issues)
        results = self.store_checked(entries)
        return _response_bundle("transaction-response",
                                [_entry_response(r, base) for r in results])

    def store_checked(self, entries: list[Entry]) -> list[WriteResult]:
        """Write already validated entries as one transaction; results in entry order."""
        return self.store.run_write(lambda conn: self._run_transaction(conn, entries))

    def _run_transaction(self, conn: Connection, entries: list[Entry]) -> list[WriteResult]:
        entries = [copy.copy(e) for e in entries]
        ids: dict[str, str] = {}
        matched: dict[int, WriteResult] = {}
        for entry in entries:                       # decide every id first
            if entry.method == "POST":
                found = self.store.match(conn, entry.type, parse_condition(entry.if_none_exist)) \
                    if entry.if_none_exist else None
                if found:
                    matched[entry.index] = self.store.existing(
                        conn, self.store.read_in(conn, entry.type, found), "matched")
                entry.id = found or str(uuid.uuid4())
            elif entry.method == "PUT" and entry.condition:
                entry.id = self.store.match(conn, entry.type, parse_condition(entry.condition)) \
                    or entry.resource.get("id") or str(uuid.uuid4())
            if entry.full_url and entry.id:
                ids[entry.full_url] = f"{entry.type}/{entry.id}"
        results: dict[int, WriteResult] = dict(matched)
        for entry in entries:
            entry.resource = _rewrite_references(entry.resource, ids)
        for entry in (e for e in entries if e.method == "DELETE"):
            results[entry.index] = self.store.delete(conn, entry.type, entry.id) or _nothing(entry)
        creates = [e for e in entries if e.method == "POST" and e.index not in matched]
        created = self.store.create_many(conn, [(e.resource, e.id) for e in creates])
        results.update((e.index, r) for e, r in zip(creates, created, strict=True))
        for entry in (e for e in entries if e.method == "PUT"):
            results[entry.index] = self.store.update(conn, entry.resource, entry.id,
                                                     entry.if_match)
        ordered = [results[i] for i in sorted(results)]
        submissions.adopt_organization(conn, [r.submission for r in ordered])
        return ordered

    def batch(self, bundle: dict, base: str) -> dict:
        responses = []
        for i, raw in enumerate(bundle.get("entry") or []):
            try:
                entry = _entry(raw, i)
                responses.append(_entry_response(self._run_one(entry), base))
            except GatewayError as error:
                responses.append({"response": {
                    "status": f"{error.status} {_REASONS.get(error.status, '')}".strip(),
                    "outcome": operation_outcome(
                        [_prefixed(issue, f"Bundle.entry[{i}].resource", None)
                         for issue in error.issues])}})
        return _response_bundle("batch-response", responses)

    def _run_one(self, entry: Entry) -> WriteResult:
        if entry.method == "POST":
            return self.create(entry.resource, entry.type, entry.if_none_exist)
        if entry.method == "PUT":
            return self.update(entry.resource, entry.type, entry.id, entry.if_match)
        return self.delete(entry.type, entry.id) or _nothing(entry)


# --- conditions -----------------------------------------------------------------------

def parse_condition(query: str) -> Condition:
    """`identifier=system|value&_id=x` as (param, system, code) tuples.

    Identifier systems are taken to their preferred spelling and values normalised
    as the validation stores them, so `112-233-445 95` finds `11223344595`.
    """
    condition: Condition = []
    for name, value in parse_qsl(query.lstrip("?"), keep_blank_values=True):
        if name == "_id":
            condition.append(("_id", None, value))
        elif name == "identifier":
            system, _, code = value.partition("|") if "|" in value else (None, "", value)
            condition.append(("identifier", *systems.normalised_identifier(system, code)))
        else:
            raise InvalidRequest(
                f"Условие по параметру «{name}» не поддерживается: используйте identifier "
                "или _id.", f"Conditional parameter {name!r} is not supported "
                            "(use identifier or _id).")
    if not condition:
        raise InvalidRequest("Пустое условие условной операции.", "Empty condition.")
    return condition


# --- Bundle helpers -------------------------------------------------------------------

_METHODS = ("DELETE", "POST", "PUT")      # the order a transaction applies them in
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 410: "Gone",
            412: "Precondition Failed", 422: "Unprocessable Entity"}


@dataclass
class Entry:
    """One request of a Bundle: POST (maybe If-None-Exist), PUT (by id or by condition)
    or DELETE."""

    index: int
    method: str
    type: str
    id: str | None
    resource: dict | None
    full_url: str | None
    if_none_exist: str | None = None
    if_match: int | None = None
    condition: str | None = None         # PUT Type?identifier=system|value


def _entry(raw: dict, index: int) -> Entry:
    where = f"Bundle.entry[{index}]"
    request = raw.get("request") or {}
    method = str(request.get("method", "")).upper()
    url, _, query = str(request.get("url", "")).partition("?")
    url = url.strip("/")
    if method not in _METHODS:
        raise InvalidRequest(f"{where}: метод {method or '(не указан)'} не поддерживается "
                             "(POST, PUT, DELETE).",
                             f"{where}: unsupported request.method {method!r}.",
                             expression=f"{where}.request.method")
    parts = url.split("/")
    rtype, rid = parts[0], (parts[1] if len(parts) > 1 else None)
    resource = raw.get("resource")
    if rtype not in RESOURCE_TYPES:
        raise InvalidRequest(f"{where}: неизвестный тип ресурса в request.url.",
                             f"{where}: unknown resource type in request.url {url!r}.",
                             expression=f"{where}.request.url")
    if not rid and (method == "DELETE" or (method == "PUT" and not query)):
        raise InvalidRequest(f"{where}: для {method} в request.url нужен id ресурса.",
                             f"{where}: {method} needs Type/id in request.url.",
                             expression=f"{where}.request.url")
    if method != "DELETE" and not isinstance(resource, dict):
        raise InvalidRequest(f"{where}: нет ресурса для {method}.",
                             f"{where}: {method} needs a resource.",
                             expression=f"{where}.resource")
    return Entry(index, method, rtype, rid, resource if method != "DELETE" else None,
                 raw.get("fullUrl"), request.get("ifNoneExist"),
                 etag_version(request.get("ifMatch")), query or None)


def etag_version(etag: str | None) -> int | None:
    if not etag:
        return None
    digits = etag.replace("W/", "").strip('"')
    if not digits.isdigit():
        raise InvalidRequest("ETag в If-Match должен иметь вид W/\"номер версии\".",
                             f"Malformed ETag {etag!r}; expected W/\"<version>\".")
    return int(digits)


def _rewrite_references(node, ids: dict[str, str]):
    if isinstance(node, dict):
        return {k: (ids.get(v, v) if k == "reference" and isinstance(v, str)
                    else _rewrite_references(v, ids)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_references(v, ids) for v in node]
    return node


def _prefixed(issue: Issue, prefix: str | None, resource_type: str | None) -> Issue:
    if not prefix or not issue.expression:
        return issue
    expression = issue.expression
    if resource_type and expression.startswith(resource_type):
        expression = expression[len(resource_type):].lstrip(".")
    elif "." in expression and expression.split(".")[0][:1].isupper():
        expression = expression.split(".", 1)[1]
    return issue.at(f"{prefix}.{expression}" if expression else prefix)


def _nothing(entry: Entry) -> WriteResult:
    return WriteResult(Stored(entry.type, entry.id or "", 0, None, True, None), "absent")


_STATUS = {"created": "201 Created", "updated": "200 OK", "unchanged": "200 OK",
           "matched": "200 OK", "deleted": "204 No Content", "absent": "204 No Content"}


def _entry_response(result: WriteResult, base: str) -> dict:
    stored = result.stored
    response: dict = {"status": _STATUS[result.outcome]}
    if stored.version:
        response["etag"] = stored.etag
        response["lastModified"] = instant(stored.last_updated)
        if result.outcome != "deleted":
            response["location"] = \
                f"{stored.resource_type}/{stored.id}/_history/{stored.version}"
    entry: dict = {"response": response}
    if stored.content is not None:
        entry = {"fullUrl": f"{base}/{stored.resource_type}/{stored.id}",
                 "resource": stored.content, **entry}
    return entry


def _response_bundle(kind: str, entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": kind, "entry": entries}
