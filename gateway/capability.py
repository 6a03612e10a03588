"""The CapabilityStatement, generated from the same registry that routes requests."""
from __future__ import annotations

from gateway.api.negotiation import PRODUCED
from gateway.registry import RESOURCE_TYPES, SYSTEM_INTERACTIONS

SOFTWARE_VERSION = "0.1.0"
RELEASE_DATE = "2026-11-23"


def statement(base_url: str) -> dict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "ЕГИСЗ FHIR gateway",
        "kind": "instance",
        "software": {"name": "egisz-fhir-gateway", "version": SOFTWARE_VERSION},
        "implementation": {"description": "Шлюз HL7 FHIR R4 между МИС и ЕГИСЗ (ФРМО, ФРМР, ЭЛМК)",
                           "url": base_url},
        "fhirVersion": "4.0.1",
        "format": list(PRODUCED),
        "rest": [{
            "mode": "server",
            "security": {"description": "Authorization: Bearer <token>, issued by "
                                        "`gateway clients create`."},
            "resource": [_resource(spec) for spec in RESOURCE_TYPES.values()],
            "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
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
        entry["searchParam"] = [{"name": p.name, "type": p.kind} for p in spec.search]
    return entry
