"""Transaction Bundles are all-or-nothing with urn:uuid references resolved; batch Bundles
run each entry on its own and report each entry's status — on both databases."""
from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import load_fixture


@pytest.fixture
def transaction() -> dict:
    return load_fixture("bundles/elmk-transaction.json")


def _post_bundle(client, auth, bundle):
    return client.post("/fhir", data=json.dumps(bundle, ensure_ascii=False), headers=auth)


def test_transaction_stores_every_entry_and_resolves_urn_uuid_references(client, auth,
                                                                          transaction):
    response = _post_bundle(client, auth, transaction)
    assert response.status_code == 200, response.json
    result = response.json
    assert result["type"] == "transaction-response"
    assert len(result["entry"]) == len(transaction["entry"])
    assigned = {}
    for sent, got in zip(transaction["entry"], result["entry"], strict=True):
        assert got["response"]["status"] == "201 Created"
        assert got["response"]["etag"] == 'W/"1"'
        assigned[sent["fullUrl"]] = f"{got['resource']['resourceType']}/{got['resource']['id']}"
    stored_text = json.dumps([e["resource"] for e in result["entry"]])
    assert "urn:uuid:" not in stored_text
    report = next(e["resource"] for e in result["entry"]
                  if e["resource"]["resourceType"] == "DiagnosticReport")
    patient_ref = report["subject"]["reference"]
    assert patient_ref in assigned.values()
    read = client.get(f"/fhir/{patient_ref}", headers=auth)
    assert read.status_code == 200


def test_transaction_with_one_invalid_entry_stores_nothing(client, auth, transaction):
    broken = copy.deepcopy(transaction)
    patient = next(e["resource"] for e in broken["entry"]
                   if e["resource"]["resourceType"] == "Patient")
    patient["birthDate"] = "2099-01-01"
    response = _post_bundle(client, auth, broken)
    assert response.status_code == 422
    expressions = [e for i in response.json["issue"] for e in i.get("expression", [])]
    index = next(i for i, e in enumerate(broken["entry"])
                 if e["resource"]["resourceType"] == "Patient")
    assert f"Bundle.entry[{index}].resource.birthDate" in expressions
    store = client.application.extensions["gateway"].store
    assert all(store.count(t) == 0 for t in ("Patient", "Immunization", "DiagnosticReport"))


def test_transaction_fails_whole_when_a_write_fails(client, auth, transaction, post):
    practitioner = post(load_fixture("valid/practitioner-ivanova.json")).json
    bundle = copy.deepcopy(transaction)
    bundle["entry"].append({"resource": practitioner, "request": {
        "method": "PUT", "url": f"Practitioner/{practitioner['id']}", "ifMatch": 'W/"7"'}})
    response = _post_bundle(client, auth, bundle)
    assert response.status_code == 412
    store = client.application.extensions["gateway"].store
    assert store.count("Patient") == 0


def test_transaction_conditional_create_reuses_the_match(client, auth, transaction):
    first = _post_bundle(client, auth, transaction).json
    again = copy.deepcopy(transaction)
    patient_entry = next(e for e in again["entry"] if e["resource"]["resourceType"] == "Patient")
    snils = next(i for i in patient_entry["resource"]["identifier"]
                 if i["system"] == "urn:oid:1.2.643.2.69.1.1.1.6.223")["value"]
    patient_entry["request"]["ifNoneExist"] = \
        f"identifier=urn:oid:1.2.643.2.69.1.1.1.6.223|{snils}"
    second = _post_bundle(client, auth, again).json
    patient_ids = {e["resource"]["id"] for r in (first, second) for e in r["entry"]
                   if e["resource"]["resourceType"] == "Patient"}
    assert len(patient_ids) == 1
    store = client.application.extensions["gateway"].store
    assert store.count("Patient") == 1
    report = next(e["resource"] for e in second["entry"]
                  if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["subject"]["reference"] == f"Patient/{patient_ids.pop()}"


def test_batch_reports_each_entry_and_keeps_the_valid_ones(client, auth):
    bundle = load_fixture("bundles/batch-mixed.json")
    response = _post_bundle(client, auth, bundle)
    assert response.status_code == 200
    statuses = [e["response"]["status"] for e in response.json["entry"]]
    assert statuses[:2] == ["201 Created", "201 Created"]
    assert statuses[2].startswith("422")
    outcome = response.json["entry"][2]["response"]["outcome"]
    assert outcome["issue"][0]["expression"][0].startswith("Bundle.entry[2].resource.")


def test_a_bundle_of_another_type_is_refused(client, auth):
    response = _post_bundle(client, auth, {"resourceType": "Bundle", "type": "collection"})
    assert response.status_code == 400


def test_a_transaction_entry_with_an_unknown_method_is_400(client, auth):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": load_fixture("valid/patient-petrova.json"),
         "request": {"method": "PATCH", "url": "Patient/x"}}]}
    response = _post_bundle(client, auth, bundle)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["Bundle.entry[0].request.method"]


def test_transaction_response_can_be_xml(client, auth, transaction):
    response = client.post("/fhir", data=json.dumps(transaction),
                           headers={**auth, "Accept": "application/fhir+xml"})
    assert response.status_code == 200
    assert b"transaction-response" in response.data
