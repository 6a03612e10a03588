"""The FHIR REST API: create, read, versions, update, delete, conditional writes,
formats and authentication — on SQLite and on PostgreSQL."""
from __future__ import annotations

import json

import pytest
from lxml import etree

from tests.conftest import FHIR_JSON, FIXTURES, load_fixture

PRACTITIONER = "valid/practitioner-ivanova.json"
SNILS_SYSTEM = "urn:oid:1.2.643.2.69.1.1.1.6.223"


def _snils(resource: dict) -> str:
    return next(i["value"] for i in resource["identifier"] if i["system"] == SNILS_SYSTEM)


@pytest.fixture
def practitioner() -> dict:
    resource = load_fixture(PRACTITIONER)
    resource.pop("id", None)
    return resource


@pytest.fixture
def created(post, practitioner) -> dict:
    response = post(practitioner)
    assert response.status_code == 201, response.json
    return response.json


# --- create and read -------------------------------------------------------------------

def test_create_returns_201_with_location_etag_and_server_meta(post, practitioner):
    response = post(practitioner)
    assert response.status_code == 201
    body = response.json
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"].endswith(f"/fhir/Practitioner/{body['id']}/_history/1")
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("+00:00")


def test_read_returns_the_stored_resource(client, auth, created):
    response = client.get(f"/fhir/Practitioner/{created['id']}", headers=auth)
    assert response.status_code == 200
    assert response.json == created
    assert response.headers["ETag"] == 'W/"1"'
    assert response.content_type.startswith(FHIR_JSON)


def test_client_supplied_meta_version_is_replaced(post, practitioner):
    practitioner["meta"] = {"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z",
                            "profile": ["http://example.org/profile"]}
    body = post(practitioner).json
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["profile"] == ["http://example.org/profile"]


def test_identifiers_are_stored_normalised(post, practitioner):
    snils = _snils(practitioner)
    practitioner["identifier"][0] = {"system": "urn:oid:1.2.643.100.3",
                                     "value": f"{snils[:3]}-{snils[3:6]}-{snils[6:9]} {snils[9:]}"}
    body = post(practitioner).json
    assert body["identifier"][0] == {"system": SNILS_SYSTEM, "value": snils}


def test_unknown_resource_is_404_with_operation_outcome(client, auth):
    response = client.get("/fhir/Practitioner/does-not-exist", headers=auth)
    assert response.status_code == 404
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["code"] == "not-found"


def test_unsupported_type_is_404(client, auth):
    assert client.get("/fhir/Encounter/1", headers=auth).status_code == 404


def test_type_in_body_must_match_url(post, practitioner):
    response = post(practitioner, path="/fhir/Organization")
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"] == ["resourceType"]


# --- versions --------------------------------------------------------------------------

def test_update_writes_a_new_version_and_old_versions_stay_readable(client, auth, created):
    rid = created["id"]
    changed = {**created, "gender": "female", "active": False}
    response = client.put(f"/fhir/Practitioner/{rid}", data=json.dumps(changed), headers=auth)
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    assert response.json["meta"]["versionId"] == "2"
    first = client.get(f"/fhir/Practitioner/{rid}/_history/1", headers=auth)
    assert first.status_code == 200
    assert first.json["active"] is True
    assert client.get(f"/fhir/Practitioner/{rid}", headers=auth).json["active"] is False


def test_unchanged_update_creates_no_new_version(client, auth, created):
    response = client.put(f"/fhir/Practitioner/{created['id']}", data=json.dumps(created),
                          headers=auth)
    assert response.status_code == 200
    assert response.json["meta"]["versionId"] == "1"


def test_if_match_with_a_stale_version_is_412(client, auth, created):
    rid = created["id"]
    url = f"/fhir/Practitioner/{rid}"
    ok = client.put(url, data=json.dumps({**created, "active": False}),
                    headers={**auth, "If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = client.put(url, data=json.dumps({**created, "gender": "male"}),
                       headers={**auth, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json["issue"][0]["code"] == "conflict"
    assert client.get(url, headers=auth).json["meta"]["versionId"] == "2"


def test_put_to_a_new_id_creates_the_resource(client, auth, practitioner):
    response = client.put("/fhir/Practitioner/ivanova-1",
                          data=json.dumps({**practitioner, "id": "ivanova-1"}), headers=auth)
    assert response.status_code == 201
    assert response.json["id"] == "ivanova-1"


def test_put_with_an_id_in_the_body_that_differs_from_the_url_is_refused(client, auth,
                                                                          practitioner):
    response = client.put("/fhir/Practitioner/a", data=json.dumps({**practitioner, "id": "b"}),
                          headers=auth)
    assert response.status_code == 409


def test_delete_is_logical_and_earlier_versions_remain(client, auth, created):
    url = f"/fhir/Practitioner/{created['id']}"
    assert client.delete(url, headers=auth).status_code == 204
    gone = client.get(url, headers=auth)
    assert gone.status_code == 410
    assert gone.json["issue"][0]["code"] == "deleted"
    assert client.get(f"{url}/_history/1", headers=auth).status_code == 200
    history = client.get(f"{url}/_history", headers=auth).json
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]


def test_a_deleted_resource_can_be_recreated_by_put(client, auth, created):
    url = f"/fhir/Practitioner/{created['id']}"
    client.delete(url, headers=auth)
    response = client.put(url, data=json.dumps(created), headers=auth)
    assert response.status_code == 200
    assert response.json["meta"]["versionId"] == "3"


def test_history_lists_every_version_newest_first(client, auth, created):
    url = f"/fhir/Practitioner/{created['id']}"
    client.put(url, data=json.dumps({**created, "active": False}), headers=auth)
    bundle = client.get(f"{url}/_history", headers=auth).json
    assert bundle["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2", "1"]


# --- conditional writes ----------------------------------------------------------------

def test_conditional_create_returns_the_existing_resource(post, practitioner, created):
    condition = f"identifier={SNILS_SYSTEM}|{_snils(practitioner)}"
    again = post(practitioner, **{"If-None-Exist": condition})
    assert again.status_code == 200
    assert again.json["id"] == created["id"]


def test_conditional_create_recognises_identifier_aliases_and_written_forms(post, practitioner,
                                                                            created):
    snils = _snils(practitioner)
    written = f"{snils[:3]}-{snils[3:6]}-{snils[6:9]} {snils[9:]}"
    again = post(practitioner,
                 **{"If-None-Exist": f"identifier=urn:oid:1.2.643.100.3|{written}"})
    assert again.json["id"] == created["id"]


def test_conditional_create_without_match_creates(post, practitioner):
    response = post(practitioner, **{"If-None-Exist": f"identifier={SNILS_SYSTEM}|00000000000"})
    assert response.status_code == 201


def test_conditional_update_updates_the_match_or_creates(client, auth, practitioner):
    url = f"/fhir/Practitioner?identifier={SNILS_SYSTEM}|{_snils(practitioner)}"
    first = client.put(url, data=json.dumps(practitioner), headers=auth)
    assert first.status_code == 201
    second = client.put(url, data=json.dumps({**practitioner, "active": False}), headers=auth)
    assert second.status_code == 200
    assert second.json["id"] == first.json["id"]
    assert second.json["meta"]["versionId"] == "2"


def test_conditional_update_matching_several_is_412(client, auth, post, practitioner):
    post(practitioner)
    post(practitioner)
    url = f"/fhir/Practitioner?identifier={SNILS_SYSTEM}|{_snils(practitioner)}"
    assert client.put(url, data=json.dumps(practitioner), headers=auth).status_code == 412


def test_conditional_on_an_unsupported_parameter_is_400(post, practitioner):
    response = post(practitioner, **{"If-None-Exist": "name=Иванова"})
    assert response.status_code == 400


# --- formats ---------------------------------------------------------------------------

def test_xml_output_validates_against_the_official_schema(client, auth, created, fhir_schema):
    response = client.get(f"/fhir/Practitioner/{created['id']}",
                          headers={**auth, "Accept": "application/fhir+xml"})
    assert response.status_code == 200
    assert response.content_type.startswith("application/fhir+xml")
    document = etree.fromstring(response.data)
    fhir_schema.assertValid(document)


@pytest.mark.parametrize(("fmt", "content_type"), [
    ("xml", "application/fhir+xml"), ("json", "application/fhir+json"),
    ("application/xml", "application/xml"), ("application/json", "application/json"),
])
def test_format_parameter_overrides_accept(client, auth, created, fmt, content_type):
    response = client.get(f"/fhir/Practitioner/{created['id']}?_format={fmt}",
                          headers={**auth, "Accept": "application/fhir+json"})
    assert response.status_code == 200
    assert response.content_type.startswith(content_type)


def test_xml_can_be_posted_and_reads_back_as_the_same_json(client, auth, practitioner, post):
    from gateway.fhir import to_xml_bytes
    response = client.post("/fhir/Practitioner", data=to_xml_bytes(practitioner),
                           headers={**auth, "Content-Type": "application/fhir+xml"})
    assert response.status_code == 201, response.json
    stored = response.json
    for key in ("identifier", "name", "birthDate", "gender", "telecom"):
        assert stored[key] == post(practitioner).json[key]


def test_an_accept_we_cannot_produce_is_406(client, auth, created):
    response = client.get(f"/fhir/Practitioner/{created['id']}",
                          headers={**auth, "Accept": "text/csv"})
    assert response.status_code == 406
    assert response.json["resourceType"] == "OperationOutcome"


def test_a_content_type_we_cannot_read_is_415(client, auth, practitioner):
    response = client.post("/fhir/Practitioner", data=json.dumps(practitioner),
                           headers={**auth, "Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.json["issue"][0]["code"] == "not-supported"


def test_errors_come_in_the_requested_format(client, auth):
    response = client.get("/fhir/Practitioner/none", headers={**auth, "Accept": "application/xml"})
    assert response.status_code == 404
    assert b"OperationOutcome" in response.data
    assert response.data.lstrip().startswith(b"<?xml")


# --- capability, health, authentication -----------------------------------------------

def test_an_interaction_the_statement_does_not_list_is_405(client, auth):
    statement = client.get("/fhir/metadata").json
    provenance = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Provenance")
    assert "create" not in [i["code"] for i in provenance["interaction"]]
    response = client.post("/fhir/Provenance", data="{}", headers=auth)
    assert response.status_code == 405


def test_healthz_reports_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok"}


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer wrong-token", "Basic abc"])
def test_requests_without_a_valid_token_are_401(client, created, header):
    headers = {"Authorization": header} if header else {}
    response = client.get(f"/fhir/Practitioner/{created['id']}", headers=headers)
    assert response.status_code == 401
    assert response.json["issue"][0]["code"] == "login"
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_tokens_are_stored_only_as_hashes(app, token):
    from sqlalchemy import select

    from gateway.store.schema import clients
    with app.extensions["gateway"].engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(select(clients))]
    assert token not in repr(stored)


VALID_FIXTURES = sorted(p.name for p in (FIXTURES / "valid").glob("*.json"))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("name", VALID_FIXTURES)
def test_every_sample_resource_reads_back_as_schema_valid_xml(client, auth, post, name,
                                                              fhir_schema):
    created = post(load_fixture(f"valid/{name}")).json
    response = client.get(f"/fhir/{created['resourceType']}/{created['id']}?_format=xml",
                          headers=auth)
    fhir_schema.assertValid(etree.fromstring(response.data))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_bundles_and_outcomes_in_xml_are_schema_valid(client, auth, created, fhir_schema):
    url = f"/fhir/Practitioner/{created['id']}"
    history = client.get(f"{url}/_history?_format=xml", headers=auth)
    fhir_schema.assertValid(etree.fromstring(history.data))
    missing = client.get("/fhir/Practitioner/missing?_format=xml", headers=auth)
    fhir_schema.assertValid(etree.fromstring(missing.data))
    metadata = client.get("/fhir/metadata?_format=xml")
    fhir_schema.assertValid(etree.fromstring(metadata.data))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_unit_code_outside_the_units_book_is_refused(post):
    observation = load_fixture("valid/observation-petrova-hemoglobin.json")
    observation["valueQuantity"]["code"] = "999999"
    response = post(observation)
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"] == ["Observation.valueQuantity.code"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_search_is_offered_as_searchset_bundles(client, auth, created):
    response = client.get("/fhir/Practitioner", headers=auth)
    assert response.status_code == 200
    assert response.json["type"] == "searchset"
    assert [e["resource"]["id"] for e in response.json["entry"]] == [created["id"]]
