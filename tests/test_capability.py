"""The CapabilityStatement says exactly what the server does: no more, no less.

Every advertised interaction has a route that answers it, every FHIR route is
advertised, every advertised search parameter is accepted by search, and every
advertised format is produced.
"""
from __future__ import annotations

import pytest

from gateway.fhir import model_class
from gateway.registry import RESOURCE_TYPES

# Flask endpoints of the FHIR blueprints → the interaction (or operation) each serves.
ENDPOINTS = {
    "fhir.metadata": {"capabilities"},
    "fhir.bundle": {"transaction", "batch"},
    "fhir.history_system": {"history-system"},
    "fhir.search_type": {"search-type"},
    "fhir.search_form": {"search-type"},
    "fhir.create": {"create"},
    "fhir.conditional_update": {"update"},
    "fhir.read": {"read"},
    "fhir.vread": {"vread"},
    "fhir.history_type": {"history-type"},
    "fhir.history_instance": {"history-instance"},
    "fhir.update": {"update"},
    "fhir.delete": {"delete"},
    "bulk.export_system": {"$export"},
    "bulk.export_type": {"$export"},
    "bulk.status": {"$export"},              # the async pattern's status, cancel and files
    "bulk.cancel": {"$export"},
    "bulk.download": {"$export"},
    "audit.search": {"search-type"},         # AuditEvent, the audit trail (gateway.api.audit)
    "audit.read": {"read"},
    "oauth.smart_configuration": {"capabilities"},   # SMART discovery beside the statement
}


@pytest.fixture
def statement(client) -> dict:
    found = client.get("/fhir/metadata").json
    model_class("CapabilityStatement").model_validate(found)
    return found


def advertised(statement: dict) -> set[str]:
    rest = statement["rest"][0]
    codes = {i["code"] for i in rest["interaction"]}
    codes |= {f"${o['name']}" for o in rest.get("operation", [])}
    for resource in rest["resource"]:
        codes |= {i["code"] for i in resource["interaction"]}
        codes |= {f"${o['name']}" for o in resource.get("operation", [])}
    return codes | {"capabilities"}


def test_every_fhir_route_is_advertised_and_every_interaction_has_a_route(app, statement):
    routed = {rule.endpoint for rule in app.url_map.iter_rules() if rule.rule.startswith("/fhir")}
    assert routed == set(ENDPOINTS), "a FHIR route without a known interaction"
    served = set().union(*ENDPOINTS.values())
    assert advertised(statement) == served


def test_resources_list_the_registry_interactions(statement):
    served = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(served) == set(RESOURCE_TYPES) | {"AuditEvent"}    # + the audit trail
    for name, spec in RESOURCE_TYPES.items():
        assert [i["code"] for i in served[name]["interaction"]] == list(spec.interactions)


def test_export_is_advertised_where_it_answers(client, auth, statement):
    rest = statement["rest"][0]
    assert [o["name"] for o in rest["operation"]] == ["export"]
    for resource in rest["resource"]:
        if resource["type"] == "AuditEvent":        # the audit trail is not exported
            continue
        assert [o["name"] for o in resource["operation"]] == ["export"]
        response = client.get(f"/fhir/{resource['type']}/$export",
                              headers={**auth, "Prefer": "respond-async"})
        assert response.status_code == 202, resource["type"]


def test_every_advertised_search_parameter_is_accepted(client, auth, statement):
    for resource in statement["rest"][0]["resource"]:
        for param in resource.get("searchParam", []):
            value = {"token": "x", "string": "x", "date": "2024", "reference": "x",
                     "quantity": "1", "number": "1", "uri": "x"}[param["type"]]
            response = client.get(f"/fhir/{resource['type']}",
                                  query_string={param["name"]: value}, headers=auth)
            assert response.status_code == 200, (resource["type"], param["name"],
                                                  response.json)


def test_an_unadvertised_parameter_is_refused(client, auth):
    assert client.get("/fhir/Practitioner?colour=red", headers=auth).status_code == 400


def test_every_advertised_format_is_produced(client, auth, statement):
    for media_type in statement["format"]:
        response = client.get("/fhir/Practitioner", headers={**auth, "Accept": media_type})
        assert response.status_code == 200, media_type
        assert response.mimetype == media_type


def test_the_statement_names_the_same_token_endpoint_as_smart_discovery(client, statement):
    security = statement["rest"][0]["security"]
    uris = next(e for e in security["extension"] if e["url"].endswith("oauth-uris"))
    token = next(e["valueUri"] for e in uris["extension"] if e["url"] == "token")
    assert token == client.get("/.well-known/smart-configuration").json["token_endpoint"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
