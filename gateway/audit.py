"""Audit records as FHIR R4 AuditEvent resources (pure: a row in, a resource out).

One AuditEvent per request that touched data (gateway.store.audit keeps the rows):

- `type`: the FHIR `rest` event type, or DICOM 110114 "User Authentication" (subtype
  110122 "Login") for a refused bearer token; `subtype`: the RESTful interaction
  where there is one, and always the gateway's own operation code (read, search,
  create..., $export, intake, submissions, webhooks, admin, login-failed);
- `action` C/R/U/D/E, `recorded`, `outcome` 0/4/8/12 from the HTTP status, which
  `outcomeDesc` names (with the masked detail of a failure);
- `agent`: the client (who: its id and name; role; ФРМО organizations as an
  extension; network address) as requestor, and the gateway as destination;
- `source`: the gateway, a web server;
- `entity`: one per resource touched (`Type/id`), and one for the HTTP request
  (its X-Request-Id, method and masked path; the masked query of a search);
- `extension`: the record's hash and the hash it is chained to.

`CAPABILITY` is the AuditEvent entry of the CapabilityStatement; `SEARCH_PARAMS`
are the parameters gateway.api.audit accepts.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from gateway.store.audit import outcome_code
from gateway.store.clock import instant

SITE = "https://fhir.egisz-gateway.ru"
EXT_HASH = f"{SITE}/StructureDefinition/audit-hash"
EXT_PREVIOUS_HASH = f"{SITE}/StructureDefinition/audit-previous-hash"
EXT_ORGANIZATION = f"{SITE}/StructureDefinition/audit-client-organization"
CLIENT_SYSTEM = f"{SITE}/NamingSystem/client"
REQUEST_ID_SYSTEM = f"{SITE}/NamingSystem/request-id"
ROLE_SYSTEM = f"{SITE}/CodeSystem/client-role"
OPERATION_SYSTEM = f"{SITE}/CodeSystem/audit-operation"

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"

REST = {"system": EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
AUTHENTICATION = {"system": DCM, "code": "110114", "display": "User Authentication"}
LOGIN = {"system": DCM, "code": "110122", "display": "Login"}
# The gateway's operations that are FHIR RESTful interactions.
INTERACTIONS = {"read": "read", "vread": "vread", "update": "update", "delete": "delete",
                "history": "history", "create": "create", "search": "search-type",
                "transaction": "transaction", "batch": "batch", "$export": "operation"}
ACTIONS = ("C", "R", "U", "D", "E")
GATEWAY = "egisz-fhir-gateway"

SEARCH_PARAMS = (
    ("date", "date", "When the event was recorded: eq, ne, gt, lt, ge, le, sa, eb with "
                     "YYYY, YYYY-MM, YYYY-MM-DD or a dateTime (no zone: UTC)"),
    ("agent", "token", "The client's id, as `gateway clients list` shows it (or "
                       f"{CLIENT_SYSTEM}|id)"),
    ("entity", "reference", "A resource the request touched: Type/id or id"),
    ("entity-type", "token", "The type of a resource the request touched (e.g. Patient)"),
    ("action", "token", "C, R, U, D or E"),
    ("outcome", "token", "0 success, 4 refused (HTTP 4xx), 8 gateway error (5xx), "
                         "12 unavailable (503)"),
)

CAPABILITY = {
    "type": "AuditEvent",
    "documentation": "The audit trail, for the admin role only: one event per request that "
                     "touched data, hash-chained (`gateway audit verify`); personal data is "
                     "masked. Newest first; _count (default 50, at most 1000), next links.",
    "interaction": [{"code": "read"}, {"code": "search-type"}],
    "versioning": "no-version",
    "readHistory": False,
    "updateCreate": False,
    "conditionalCreate": False,
    "conditionalUpdate": False,
    "conditionalDelete": "not-supported",
    "searchParam": [{"name": name, "type": kind, "documentation": notes}
                    for name, kind, notes in SEARCH_PARAMS],
}


def to_fhir(row: Mapping) -> dict:
    """The AuditEvent of one stored record (a row of `audit_events` as a mapping)."""
    recorded = instant(row["at"])
    operation = row["operation"]
    failed_login = operation == "login-failed"
    subtype = [LOGIN] if failed_login else []
    if operation in INTERACTIONS:
        subtype.append({"system": INTERACTION, "code": INTERACTIONS[operation]})
    subtype.append({"system": OPERATION_SYSTEM, "code": operation})
    outcome = outcome_code(row["outcome"])
    description = f"HTTP {row['outcome']}"
    if row.get("detail") and outcome != "0":
        description += f": {row['detail']}"
    return {
        "resourceType": "AuditEvent",
        "id": str(row["pk"]),
        "meta": {"lastUpdated": recorded},
        "extension": [{"url": EXT_HASH, "valueString": row["hash"]},
                      {"url": EXT_PREVIOUS_HASH, "valueString": row["previous_hash"]}],
        "type": AUTHENTICATION if failed_login else REST,
        "subtype": subtype,
        "action": row["action"] if row["action"] in ACTIONS else "E",
        "recorded": recorded,
        "outcome": outcome,
        "outcomeDesc": description,
        "agent": [_client(row), {
            "type": {"coding": [{"system": DCM, "code": "110152",
                                 "display": "Destination Role ID"}]},
            "who": {"display": GATEWAY}, "requestor": False}],
        "source": {"site": GATEWAY, "observer": {"display": GATEWAY},
                   "type": [{"system": SOURCE_TYPE, "code": "3", "display": "Web Server"}]},
        "entity": [*_resources(row), _request(row)],
    }


def _client(row: Mapping) -> dict:
    agent: dict = {"type": {"coding": [{"system": DCM, "code": "110153",
                                        "display": "Source Role ID"}]}}
    if row.get("client_pk") is not None:
        agent["who"] = {"identifier": {"system": CLIENT_SYSTEM, "value": str(row["client_pk"])},
                        "display": row.get("client_name") or str(row["client_pk"])}
        if row.get("role"):
            agent["role"] = [{"coding": [{"system": ROLE_SYSTEM, "code": row["role"]}]}]
        organizations = json.loads(row["organizations"]) if row.get("organizations") else []
        if organizations:
            agent["extension"] = [{"url": EXT_ORGANIZATION, "valueIdentifier": {
                "system": "urn:ietf:rfc:3986", "value": f"urn:oid:{oid}"}}
                for oid in organizations]
    else:
        agent["who"] = {"display": "unknown client"}
    agent["requestor"] = True
    if row.get("address"):
        agent["network"] = {"address": row["address"], "type": "2"}     # 2: an IP address
    return agent


def references(row: Mapping) -> list[str]:
    """`Type/id` of every resource the record names (ids of its own type are stored bare)."""
    ids = json.loads(row["resource_ids"]) if row.get("resource_ids") else []
    kind = row.get("resource_type")
    return [rid if "/" in rid or not kind else f"{kind}/{rid}" for rid in ids]


def _resources(row: Mapping) -> list[dict]:
    return [{"what": {"reference": reference},
             "type": {"system": RESOURCE_TYPES, "code": reference.split("/", 1)[0]},
             "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}}
            for reference in references(row)]


def _request(row: Mapping) -> dict:
    """The HTTP request as an entity: its id, method, masked path and detail."""
    entity: dict = {}
    if row.get("request_id"):
        entity["what"] = {"identifier": {"system": REQUEST_ID_SYSTEM,
                                         "value": row["request_id"]}}
    if row["operation"] == "search" and row.get("resource_type"):
        entity["type"] = {"system": RESOURCE_TYPES, "code": row["resource_type"]}
        entity["role"] = {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
        query = row["path"].partition("?")[2]
        if query:
            entity["query"] = base64.b64encode(query.encode("utf-8")).decode("ascii")
    else:
        entity["type"] = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
    entity["description"] = "HTTP request"
    details = [("method", row["method"]), ("path", row["path"]), ("detail", row.get("detail"))]
    entity["detail"] = [{"type": name, "valueString": value} for name, value in details if value]
    return entity
