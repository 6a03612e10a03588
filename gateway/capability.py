"""The CapabilityStatement, generated from the same registry that routes requests.

Search parameters, includes and modifiers come from `gateway.registry` and
`gateway.search.params`, the tables the search code itself reads.
"""
from __future__ import annotations

from gateway import audit, history
from gateway.api.negotiation import NDJSON_TYPES, PRODUCED
from gateway.export import bulk
from gateway.registry import RESOURCE_TYPES, SYSTEM_INTERACTIONS, includes, revincludes
from gateway.search.params import DEFAULT_COUNT, KIND_NOTES, MAX_COUNT

SEARCH_NOTES = (
    f"Search: GET [type]?… or POST [type]/_search (form). Comma = OR, repeated parameter = "
    f"AND; _sort (several keys, -key descending), _count (default {DEFAULT_COUNT}, at most "
    f"{MAX_COUNT}: larger values are lowered, with a warning in the Bundle), "
    "_total=accurate|none, _summary=true|text|data|count|false, _elements, _include, "
    "_revinclude, chained parameters one level deep. Unknown parameters are refused (400) "
    "unless Prefer: handling=lenient. Pages are linked by opaque cursors (next, previous). "
    "_format=ndjson (or Accept: application/fhir+ndjson) streams every match, one per line. "
    f"History: _history of the server, a type or a resource, newest first, with _since and "
    f"_count (default {history.DEFAULT_COUNT}, at most {history.MAX_COUNT}); each page's "
    "meta.lastUpdated is the sync point: ask _since=<it> next time to get every later change "
    "exactly once.")

SOFTWARE_VERSION = "0.1.0"
RELEASE_DATE = "2026-11-23"


SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def statement(base_url: str, token_url: str) -> dict:
    """The CapabilityStatement; `token_url` is the OAuth token endpoint (SMART discovery)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "ЕГИСЗ FHIR gateway",
        "kind": "instance",
        "software": {"name": "egisz-fhir-gateway", "version": SOFTWARE_VERSION},
        "implementation": {"description": "Шлюз HL7 FHIR R4 между МИС и ЕГИСЗ (ФРМО, ФРМР, ЭЛМК)",
                           "url": base_url},
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "fhirVersion": "4.0.1",
        "format": [*PRODUCED, *NDJSON_TYPES],
        "rest": [{
            "mode": "server",
            "security": {
                "extension": [{"url": SMART_OAUTH_URIS, "extension": [
                    {"url": "token", "valueUri": token_url}]}],
                "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}],
                             "text": "OAuth 2.0 client credentials (SMART Backend Services)"}],
                "description": "Authorization: Bearer <token> — a client token issued by "
                               "`gateway clients create`, or an access token from the token "
                               "endpoint (client credentials with a signed JWT assertion). "
                               "mis clients see their organizations' data, region clients "
                               "their region's."},
            "documentation": SEARCH_NOTES,
            "resource": [*(_resource(spec) for spec in RESOURCE_TYPES.values()),
                         audit.CAPABILITY],         # the audit trail (gateway.audit), admin only
            "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
            "operation": [_operation()] if "system" in bulk.OPERATION["levels"] else [],
        }],
    }


def _resource(spec) -> dict:
    writable = "create" in spec.interactions
    entry = {
        "type": spec.name,
        "interaction": [{"code": code} for code in spec.interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": writable,
        "conditionalCreate": writable and spec.conditional,
        "conditionalUpdate": writable and spec.conditional,
        "conditionalDelete": "not-supported",
    }
    if "search-type" in spec.interactions:
        included = [f"{source}:{p.name}" for source, p in includes(spec.name)]
        revincluded = [f"{source}:{p.name}" for source, p in revincludes(spec.name)]
        if included:
            entry["searchInclude"] = included
        if revincluded:
            entry["searchRevInclude"] = revincluded
        entry["searchParam"] = [_search_param(p) for p in spec.search]
    if "type" in bulk.OPERATION["levels"] and spec.name in bulk.OPERATION["types"]:
        entry["operation"] = [_operation()]
    return entry


def _operation() -> dict:
    """FHIR Bulk Data `$export` (gateway.export.bulk): async, NDJSON files per type."""
    return {"name": bulk.OPERATION["name"], "definition": bulk.OPERATION["definition"],
            "documentation": "Kick-off with Prefer: respond-async; _type, _since, "
                             "_outputFormat=application/fhir+ndjson. 202 + Content-Location; "
                             "poll it (Retry-After), DELETE to cancel."}


def _search_param(param) -> dict:
    notes = {"_id": "an id, or several separated by commas",
             "_lastUpdated": KIND_NOTES["date"].rsplit(";", 1)[0]}.get(param.name) \
        or KIND_NOTES[param.kind]
    if param.kind == "reference" and param.targets:
        notes = f"to {', '.join(param.targets)}; {notes}"
    return {"name": param.name, "type": param.kind,
            "documentation": f"{param.description + '. ' if param.description else ''}{notes}"}
