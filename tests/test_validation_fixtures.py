"""Validation as integration testers see it: the shipped fixtures, through the API.

- every file in fixtures/valid is accepted and stored;
- every official HL7 example (Dutch, American, Australian, …) is accepted: the
  Russian rules must not refuse valid foreign data;
- every file in fixtures/invalid is refused with the OperationOutcome it names,
  and nothing of it is stored.
"""
from __future__ import annotations

import base64
import json

import pytest

from gateway import fhir
from tests.conftest import FIXTURES, load_fixture

VALID = sorted(p.name for p in (FIXTURES / "valid").glob("*.json"))
# DiagnosticReport-example-pgx carries the text "pdfInBase64Binary" declared as a PDF:
# the attachment rule refuses it, as it must (see the test below).
FAKE_PDF_EXAMPLE = "DiagnosticReport-example-pgx.json"
HL7 = sorted(p.name for p in (FIXTURES / "hl7").glob("*.json") if p.name != FAKE_PDF_EXAMPLE)
INVALID = sorted(p.stem for p in (FIXTURES / "invalid").glob("*.json"))
HL7_XML = ["organization-1.xml", "patient-example.xml", "patient-example-xds.xml",
           "observation-example.xml"]

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _materialise(resource: dict) -> dict:
    """Replace the large-attachment placeholder with a real PDF of that size."""
    for form in resource.get("presentedForm", []):
        data = form.get("data", "")
        if data.startswith("__GENERATE_PDF_BYTES__:"):
            size = int(data.split(":")[1])
            pdf = b"%PDF-1.4\n" + b"0" * (size - len(b"%PDF-1.4\n%%EOF")) + b"%%EOF"
            form["data"] = base64.b64encode(pdf).decode()
    return resource


@pytest.mark.parametrize("name", VALID)
def test_valid_russian_fixture_is_accepted(post, name):
    response = post(load_fixture(f"valid/{name}"))
    assert response.status_code == 201, response.json
    issues = [i for i in response.json.get("issue", []) if i["severity"] == "error"]
    assert not issues


@pytest.mark.parametrize("name", HL7)
def test_official_hl7_example_is_accepted(post, name):
    response = post(load_fixture(f"hl7/{name}"))
    assert response.status_code == 201, response.json


def test_official_example_with_a_fake_pdf_is_refused_for_its_attachment(post):
    response = post(load_fixture(f"hl7/{FAKE_PDF_EXAMPLE}"))
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"] == ["DiagnosticReport.presentedForm[0].data"]


@pytest.mark.parametrize("name", HL7_XML)
def test_official_hl7_xml_example_is_accepted(client, auth, name):
    body = (FIXTURES / "hl7-xml" / name).read_bytes()
    response = client.post(f"/fhir/{fhir.parse_xml_tree(body).tag.split('}')[1]}", data=body,
                           headers={**auth, "Content-Type": "application/fhir+xml"})
    assert response.status_code == 201, response.json


@pytest.mark.parametrize("name", INVALID)
def test_invalid_fixture_is_refused_with_its_outcome(post, client, auth, name):
    case = load_fixture(f"invalid/{name}.json")
    resource = _materialise(case["resource"])
    response = post(resource)
    assert response.status_code == case["expect"]["status"], response.json
    outcome = response.json
    assert outcome["resourceType"] == "OperationOutcome"
    found = {(i["severity"], i["code"], e) for i in outcome["issue"]
             for e in i.get("expression", [])}
    for expected in case["expect"]["issues"]:
        assert (expected["severity"], expected["code"], expected["expression"]) in found, \
            json.dumps(outcome, ensure_ascii=False, indent=1)
    for issue in outcome["issue"]:
        assert issue["details"]["text"]
        assert issue["diagnostics"]
    stored = client.get(f"/fhir/{resource['resourceType']}/{resource.get('id', 'none')}",
                        headers=auth)
    assert stored.status_code == 404


def test_all_problems_are_reported_at_once(post):
    case = load_fixture("invalid/several-problems-at-once.json")
    outcome = post(case["resource"]).json
    errors = [i for i in outcome["issue"] if i["severity"] == "error"]
    assert len(errors) >= 3


def test_error_messages_do_not_repeat_personal_data(post):
    case = load_fixture("invalid/snils-checksum.json")
    snils = case["resource"]["identifier"][0]["value"]
    text = json.dumps(post(case["resource"]).json, ensure_ascii=False)
    assert snils not in text
    assert snils[:9] not in text


def test_a_date_written_the_russian_way_gets_a_hint(post):
    resource = load_fixture("valid/practitioner-ivanova.json")
    resource["birthDate"] = "14.03.1985"
    outcome = post(resource).json
    birth = next(i for i in outcome["issue"] if i["expression"] == ["Practitioner.birthDate"])
    assert "ГГГГ-ММ-ДД" in birth["details"]["text"]


def test_a_throwaway_email_is_a_warning_not_an_error(post):
    resource = load_fixture("valid/practitioner-ivanova.json")
    email = next(t for t in resource["telecom"] if t["system"] == "email")
    email["value"] = "ivanova@mailinator.com"
    assert post(resource).status_code == 201


def test_phone_numbers_are_stored_normalised(post):
    resource = load_fixture("valid/practitioner-ivanova.json")
    phone = next(t for t in resource["telecom"] if t["system"] == "phone")
    phone["value"] = "8 (495) 123-45-67"
    stored = post(resource).json
    assert {"system": "phone", "value": "+74951234567"}.items() <= \
        next(t for t in stored["telecom"] if t["system"] == "phone").items()
