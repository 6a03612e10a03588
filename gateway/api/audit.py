"""The audit trail over HTTP: the recorder of every request, and `/fhir/AuditEvent` for admins.

    GET /fhir/AuditEvent?date=&agent=&entity=&entity-type=&action=&outcome=&_count=
    GET /fhir/AuditEvent/{id}

`record` runs after every request (an `after_request` hook): a request that
touched data, and every refused one (401, 403), leaves one record — who, role,
organizations, action, operation, resource type and ids, HTTP status, address,
request id, method, and the path with its query and a detail, both masked
(gateway.masking) before they reach the database. Public endpoints (health,
metadata, JWKS) leave none. Views say which resources they touched with `note`
or `note_bundle`; without a note the type and id come from the URL. Writing the
record never breaks the response: a failure is logged (without personal data).

Search is newest first, paged by the record key (`_cursor`, in the `next` link);
an unknown parameter is 400.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, g, request
from lxml import etree

from gateway import audit as fhir_audit
from gateway import fhir
from gateway.api import auth, fhir_rest, negotiation
from gateway.errors import InvalidRequest, NotFound
from gateway.masking import mask_url
from gateway.services import services
from gateway.store import audit as trail
from gateway.store.clock import utcnow
from gateway.store.indexing import date_range

log = logging.getLogger("gateway.audit")
blueprint = Blueprint("audit", __name__, url_prefix="/fhir")

DEFAULT_COUNT, MAX_COUNT = 50, 1000
MAX_IDS = 1000                    # a search page holds at most 1,000 matches
MAX_TEXT = 2000
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
PARAMS = {name for name, _, _ in fhir_audit.SEARCH_PARAMS} | {"_count", "_cursor", "_format"}

# Flask endpoints → the operation recorded; others are named after their blueprint.
OPERATIONS = {
    "fhir.read": "read", "fhir.vread": "vread", "fhir.search_type": "search",
    "fhir.search_form": "search", "fhir.history_system": "history",
    "fhir.history_type": "history", "fhir.history_instance": "history",
    "fhir.create": "create", "fhir.update": "update", "fhir.conditional_update": "update",
    "fhir.delete": "delete", "fhir.bundle": "transaction",
    "audit.search": "search", "audit.read": "read",
    "bulk.export_system": "$export", "bulk.export_type": "$export", "bulk.status": "$export",
    "bulk.cancel": "$export", "bulk.download": "$export",
    "intake.ingest": "intake", "legacy_export.legacy_export": "export",
}
ENDPOINT_PREFIXES = (("delivery.submission", "submissions"), ("delivery.webhook", "webhooks"),
                     ("delivery.outbox", "admin"), ("admin.", "admin"))
# AuditEvent.action: by method, except where an operation says otherwise.
BY_METHOD = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}
EXECUTE = {"search", "transaction", "batch", "login-failed"}
EXECUTE_ENDPOINTS = {"bulk.export_system", "bulk.export_type", "delivery.outbox_retry",
                     "delivery.outbox_requeue_dead"}
URL_ARGS = {"resource_type", "rid", "vid"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- what the views tell --------------------------------------------------------------

@dataclass(frozen=True)
class Note:
    resource_type: str | None
    ids: tuple[str, ...]
    operation: str | None = None
    detail: str | None = None


def note(resource_type: str | None, ids=(), *, operation: str | None = None,
         detail: str | None = None) -> None:
    """Tell the recorder which resources this request touched (ids bare or `Type/id`)."""
    g.audit_note = Note(resource_type, tuple(str(i) for i in ids), operation, detail)


def note_bundle(bundle: dict, operation: str | None = None,
                resource_type: str | None = None) -> dict:
    """Note the resources a Bundle carries (search, history, transaction); returns it."""
    references: dict[str, None] = {}
    for entry in bundle.get("entry") or ():
        reference = _entry_reference(entry)
        if reference:
            references[reference] = None
    note(resource_type, references, operation=operation)
    return bundle


def _entry_reference(entry: dict) -> str | None:
    resource = entry.get("resource") or {}
    if resource.get("resourceType") == "OperationOutcome":
        return None
    if resource.get("resourceType") and resource.get("id"):
        return f"{resource['resourceType']}/{resource['id']}"
    url = entry.get("fullUrl") or (entry.get("response") or {}).get("location") or ""
    parts = url.split("/_history", 1)[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 and not url.startswith("urn:") else None


# --- the recorder -----------------------------------------------------------------------

def init_app(app: Flask) -> None:
    app.register_blueprint(blueprint)
    app.after_request(record)


def record(response: Response) -> Response:
    """Write this request's audit record; a failure is logged, the response goes on."""
    try:
        fields = describe(response)
        if fields is not None:
            trail.append(services().engine, fields)
    except Exception as exc:   # the audit must never break the response
        log.error("Audit record not written (%s) for %s request %s", type(exc).__name__,
                  request.method, g.get("request_id") or "-")
    return response


def describe(response: Response) -> dict | None:
    """The record of the current request (masked), or None where nothing is recorded."""
    status = response.status_code
    client = g.get("client")
    refused = status in (401, 403)
    if not refused and (client is None or request.endpoint in auth.PUBLIC_ENDPOINTS):
        return None
    noted: Note | None = g.get("audit_note")
    args = request.view_args or {}
    operation = "login-failed" if status == 401 else \
        (noted and noted.operation) or _operation(request.endpoint)
    resource_type = (noted and noted.resource_type) or _text(args.get("resource_type"), 64)
    if noted is not None and noted.ids:
        ids = _own_ids(noted.ids, resource_type)
    else:
        ids = [args["rid"]] if "rid" in args else []
    detail = _detail(response, noted, len(ids))
    return {
        "at": utcnow(),
        "client_pk": client.pk if client else None,
        "client_name": _text(client.name, 200) if client else None,
        "role": client.role if client else None,
        "organizations": json.dumps(list(client.organizations)) if client else None,
        "action": _action(operation, request.endpoint, request.method, status),
        "operation": operation[:64],
        "resource_type": resource_type,
        "resource_ids": json.dumps(ids[:MAX_IDS], ensure_ascii=False) if ids else None,
        "outcome": status,
        "address": _text(request.remote_addr, 64),
        "request_id": _text(g.get("request_id") or response.headers.get("X-Request-Id"), 64),
        "method": request.method[:8],
        "path": _masked(request.path + ("?" + request.query_string.decode("utf-8", "replace")
                                        if request.query_string else "")),
        "detail": _masked(detail) if detail else None,
    }


def _operation(endpoint: str | None) -> str:
    if endpoint is None:
        return "unknown"
    if endpoint in OPERATIONS:
        return OPERATIONS[endpoint]
    for prefix, operation in ENDPOINT_PREFIXES:
        if endpoint.startswith(prefix):
            return operation
    return endpoint.split(".", 1)[0]


def _action(operation: str, endpoint: str | None, method: str, status: int) -> str:
    if operation in EXECUTE or endpoint in EXECUTE_ENDPOINTS:
        return "E"
    if endpoint == "fhir.update" and status == 201:     # PUT that created the resource
        return "C"
    return BY_METHOD.get(method, "E")


def _own_ids(references: tuple[str, ...], resource_type: str | None) -> list[str]:
    """Ids of the record's own type are stored bare, others as `Type/id`."""
    prefix = f"{resource_type}/" if resource_type else None
    return [r[len(prefix):] if prefix and r.startswith(prefix) else r for r in references]


def _detail(response: Response, noted: Note | None, id_count: int) -> str | None:
    parts: list[str] = []
    if response.status_code == 401 and request.endpoint in auth.PUBLIC_ENDPOINTS:
        parts.append("client authentication failed")             # e.g. the OAuth token endpoint
    elif response.status_code == 401:
        parts.append("bearer token not accepted" if request.headers.get("Authorization")
                     else "no bearer token")
    args = request.view_args or {}
    if "vid" in args:
        parts.append(f"version {args['vid']}")
    parts += [f"{key}: {value}" for key, value in args.items() if key not in URL_ARGS]
    if request.endpoint == "fhir.search_form" and request.form:
        parts.append("form: " + "&".join(f"{k}={v}" for k, v in request.form.items(multi=True)))
    if noted is not None and noted.detail:
        parts.append(noted.detail)
    if id_count > MAX_IDS:
        parts.append(f"{id_count - MAX_IDS} more resources not listed")
    if response.status_code >= 400:
        parts += _issues(response)
    return "; ".join(parts) or None


def _issues(response: Response) -> list[str]:
    """Issue codes and element paths of an OperationOutcome reply (paths, never values)."""
    if response.is_streamed or response.content_length and response.content_length > 1_000_000:
        return []
    try:
        body = response.get_data()
        if response.mimetype in negotiation.XML_TYPES:
            root = etree.fromstring(body, fhir.safe_xml_parser())
            ns = {"f": fhir.FHIR_NS}
            issues = [(i.find("f:code", ns).get("value", "") if i.find("f:code", ns) is not None
                       else "", [e.get("value") for e in i.findall("f:expression", ns)])
                      for i in root.findall("f:issue", ns)]
        else:
            outcome = json.loads(body)
            issues = [(i.get("code", ""), i.get("expression") or [])
                      for i in outcome.get("issue", [])]
    except (ValueError, AttributeError, TypeError, etree.XMLSyntaxError):
        return []
    return [f"{code} at {', '.join(where)}" if where else str(code)
            for code, where in issues[:5]]


def _masked(text: str) -> str:
    return _text(mask_url(text), MAX_TEXT) or ""


def _text(value, limit: int) -> str | None:
    """Control characters escaped (PostgreSQL refuses NUL), cut to the column's length."""
    if value is None:
        return None
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))[:limit]


# --- GET /fhir/AuditEvent -----------------------------------------------------------------

@blueprint.get("/AuditEvent")
def search():
    note("AuditEvent")
    auth.require_admin()
    media_type = negotiation.response_type(request)
    pairs = [(name, value) for name, value in request.args.items(multi=True)]
    filters, count, before = parse(pairs)
    with services().engine.connect() as conn:
        rows, following = trail.search(conn, filters, count, before)
    base = fhir_rest.base_url()
    links = [{"relation": "self", "url": request.url}]
    if following is not None:
        kept = [(n, v) for n, v in pairs if n != "_cursor"] + [("_cursor", str(following))]
        links.append({"relation": "next", "url": f"{base}/AuditEvent?{urlencode(kept)}"})
    bundle: dict = {"resourceType": "Bundle", "type": "searchset", "link": links}
    if rows:
        bundle["entry"] = [{"fullUrl": f"{base}/AuditEvent/{row['pk']}",
                            "resource": fhir_audit.to_fhir(row), "search": {"mode": "match"}}
                           for row in rows]
    return negotiation.render_bundle(note_bundle(bundle, resource_type="AuditEvent"),
                                     media_type)


@blueprint.get("/AuditEvent/<rid>")
def read(rid: str):
    note("AuditEvent", [rid])
    auth.require_admin()
    media_type = negotiation.response_type(request)
    row = None
    if rid.isdigit() and len(rid) < 19:
        with services().engine.connect() as conn:
            row = trail.get(conn, int(rid))
    if row is None:
        raise NotFound(f"Запись журнала аудита «{rid[:64]}» не найдена.",
                       f"AuditEvent {rid[:64]!r} not found.")
    return negotiation.render(fhir_audit.to_fhir(row), media_type)


def parse(pairs: list[tuple[str, str]]) -> tuple[trail.Filters, int, int | None]:
    """Search parameters → filters, page size and cursor; anything unknown is 400."""
    unknown = sorted({name for name, _ in pairs if name not in PARAMS})
    if unknown:
        shown = ", ".join(u[:64] for u in unknown)
        raise InvalidRequest(f"Неизвестный параметр поиска AuditEvent: {shown}. Допустимы: "
                             f"{', '.join(sorted(PARAMS))}.",
                             f"Unknown AuditEvent search parameter(s): {shown}.")
    groups: dict[str, list] = {}
    count, before = DEFAULT_COUNT, None
    for name, raw in pairs:
        if name == "_count":
            count = min(_integer(name, raw, 0), MAX_COUNT)
        elif name == "_cursor":
            before = _integer(name, raw, 1)
        elif name != "_format" and raw.strip():
            values = [v.strip() for v in raw.split(",") if v.strip()]
            groups.setdefault(name, []).append(values)
    return trail.Filters(
        dates=tuple(_date(raw) for group in groups.get("date", []) for raw in group),
        agents=tuple(tuple(a for a in map(_agent, group) if a is not None)
                     for group in groups.get("agent", [])),
        entity_types=tuple(tuple(v.rpartition("|")[2] for v in group)
                           for group in groups.get("entity-type", [])),
        entities=tuple(tuple(_entity(v) for v in group) for group in groups.get("entity", [])),
        actions=tuple(tuple(v.rpartition("|")[2] for v in group)
                      for group in groups.get("action", [])),
        outcomes=tuple(tuple(v.rpartition("|")[2] for v in group)
                       for group in groups.get("outcome", [])),
    ), count, before


def _integer(name: str, raw: str, least: int) -> int:
    if not raw.strip().isdigit() or int(raw) < least or len(raw.strip()) > 18:
        raise InvalidRequest(f"Параметр {name}: ожидалось целое число не меньше {least}.",
                             f"{name} must be an integer of at least {least}.")
    return int(raw)


def _date(raw: str) -> trail.DateBound:
    text = raw.replace(" ", "+")                        # "+03:00" arrives as " 03:00"
    prefix, value = (text[:2], text[2:]) if text[:2].isalpha() else ("eq", text)
    try:
        covered = date_range(value) if prefix in PREFIXES else None
    except (ValueError, OverflowError):
        covered = None
    if covered is None:
        raise InvalidRequest(
            f"Параметр date: «{raw[:64]}» — ожидалась дата с префиксом eq, ne, gt, lt, ge, "
            "le, sa или eb: ГГГГ, ГГГГ-ММ, ГГГГ-ММ-ДД или ГГГГ-ММ-ДДTчч:мм:сс+03:00.",
            f"date: {raw[:64]!r} is not [prefix]YYYY, YYYY-MM, YYYY-MM-DD or a dateTime.")
    return trail.DateBound(prefix, *covered)


def _agent(raw: str) -> int | None:
    """A client id, bare or `system|id`; anything else matches no record."""
    system, bar, value = raw.rpartition("|")
    if bar and system and system != fhir_audit.CLIENT_SYSTEM:
        return None
    return int(value) if value.isdigit() and len(value) < 19 else None


def _entity(raw: str) -> tuple[str | None, str]:
    parts = raw.split("/_history", 1)[0].rstrip("/").split("/")
    return (parts[-2], parts[-1]) if len(parts) >= 2 else (None, parts[-1])
