"""MIS intake: vendor JSON and CSV through the mapping files, as a vendor sees it.

Every valid fixture record is accepted; every invalid one is refused with an issue
that names the vendor's own field (`$.cards[0].postId`); arrays keep the good
records and refuse the bad; pushing the same record again changes nothing.
"""
from __future__ import annotations

import base64
import copy
import csv
import json

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import FIXTURES

MAPPINGS = FIXTURES / "mappings"
JSON_MAPPINGS = ["frmo-organization", "frmr-person", "elmk-record"]
VALID = [(m, p.name) for m in JSON_MAPPINGS for p in sorted((MAPPINGS / m).glob("valid-*.json"))
         if not p.name.endswith(".expected.json")]
INVALID = [(m, p.name) for m in JSON_MAPPINGS
           for p in sorted((MAPPINGS / m).glob("invalid-*.json"))]


def _load(mapping: str, name: str):
    return json.loads((MAPPINGS / mapping / name).read_text(encoding="utf-8"))


def _materialise(record):
    """Replace a large-attachment placeholder by a real PDF of that many bytes."""
    text = json.dumps(record, ensure_ascii=False)
    if "__GENERATE_PDF_BYTES__:" not in text:
        return record
    size = int(text.split("__GENERATE_PDF_BYTES__:")[1].split('"')[0])
    pdf = b"%PDF-1.4\n" + b"0" * (size - 14) + b"%%EOF"
    return json.loads(text.replace(f"__GENERATE_PDF_BYTES__:{size}",
                                   base64.b64encode(pdf).decode()))


@pytest.fixture
def ingest(client, token):
    def _ingest(mapping: str, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False)
        return client.post(f"/api/v1/ingest/{mapping}", data=data,
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": content_type})
    return _ingest


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("mapping", "name"), VALID)
def test_valid_records_are_accepted(ingest, mapping, name):
    response = ingest(mapping, _load(mapping, name))
    assert response.status_code == 200, response.json
    for record in response.json["records"]:
        assert record["status"] == "accepted", json.dumps(record, ensure_ascii=False)
        assert record["resources"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("mapping", "name"), INVALID)
def test_invalid_records_are_refused_naming_the_vendor_field(ingest, app, mapping, name):
    case = _load(mapping, name)
    response = ingest(mapping, _materialise(case["record"]))
    result = response.json["records"][0]
    assert result["status"] == "rejected"
    issues = result["outcome"]["issue"]
    errors = {(i["code"], loc) for i in issues if i["severity"] == "error"
              for loc in i.get("location", [])}
    for expected in case["expect"]:
        assert (expected["code"], expected["source"]) in errors, \
            json.dumps(issues, ensure_ascii=False, indent=1)
    store = app.extensions["gateway"].store
    assert all(store.count(t) == 0 for t in ("Practitioner", "Patient", "PractitionerRole"))


def test_an_error_names_both_the_fhir_element_and_the_source_field(ingest):
    case = _load("frmr-person", "invalid-position-unknown.json")
    issue = ingest("frmr-person", case["record"]).json["records"][0]["outcome"]["issue"][0]
    assert issue["expression"][0].startswith("PractitionerRole.code[0].coding[0]")
    assert issue["location"][-1].startswith("$.cards[")
    assert issue["details"]["text"]
    assert issue["diagnostics"]


def test_an_array_keeps_the_valid_records_and_refuses_the_bad(ingest, app):
    good = _load("frmr-person", "valid-full.json")
    bad = _load("frmr-person", "invalid-snils-checksum.json")["record"]
    other = _load("frmr-person", "valid-minimal.json")
    response = ingest("frmr-person", [good, bad, other])
    statuses = [r["status"] for r in response.json["records"]]
    assert statuses == ["accepted", "rejected", "accepted"]
    assert [r["index"] for r in response.json["records"]] == [0, 1, 2]
    assert response.json["summary"] == {"records": 3, "accepted": 2, "rejected": 1,
                                        "unchanged": 0}
    assert app.extensions["gateway"].store.count("Practitioner") == 2


def test_pushing_the_same_record_again_creates_no_duplicate_and_no_version(ingest, app):
    record = _load("frmr-person", "valid-full.json")
    first = ingest("frmr-person", record).json["records"][0]
    second = ingest("frmr-person", copy.deepcopy(record)).json["records"][0]
    assert [r["reference"] for r in second["resources"]] == \
        [r["reference"] for r in first["resources"]]
    assert {r["outcome"] for r in second["resources"]} == {"unchanged"}
    assert {r["version"] for r in second["resources"]} == {1}
    store = app.extensions["gateway"].store
    assert store.count("Practitioner") == 1


def test_a_changed_record_updates_in_place_with_a_new_version(ingest):
    record = _load("frmr-person", "valid-full.json")
    ingest("frmr-person", record)
    record["phone"] = "+74959876543"
    again = ingest("frmr-person", record).json["records"][0]
    practitioner = next(r for r in again["resources"] if r["reference"].startswith("Pract"))
    assert practitioner["outcome"] == "updated"
    assert practitioner["version"] == 2


def test_elmk_record_becomes_linked_fhir_resources(ingest, client, auth):
    result = ingest("elmk-record", _load("elmk-record", "valid-full.json")).json["records"][0]
    types = [r["reference"].split("/")[0] for r in result["resources"]]
    assert {"Patient", "Immunization", "DiagnosticReport", "Observation"} <= set(types)
    patient = next(r["reference"] for r in result["resources"] if r["reference"].startswith(
        "Patient/"))
    report_ref = next(r["reference"] for r in result["resources"]
                      if r["reference"].startswith("DiagnosticReport/"))
    report = client.get(f"/fhir/{report_ref}", headers=auth).json
    assert report["subject"]["reference"] == patient
    assert report["presentedForm"][0]["contentType"] == "application/pdf"


def test_an_unknown_mapping_is_404(ingest):
    assert ingest("no-such-format", {}).status_code == 404


def test_more_than_a_thousand_records_are_refused(ingest):
    response = ingest("frmo-organization", [{}] * 1001)
    assert response.status_code == 400


def test_malformed_json_is_400(ingest):
    assert ingest("frmr-person", b"{broken").status_code == 400


# --- CSV ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("name", ["staff-utf8.csv", "staff-cp1251.csv"])
def test_csv_staff_lists_in_either_encoding_are_accepted(ingest, name):
    body = (MAPPINGS / "frmr-person-csv" / name).read_bytes()
    response = ingest("frmr-person-csv", body, "text/csv")
    assert response.status_code == 200, response.json
    summary = response.json["summary"]
    assert summary["records"] == summary["accepted"] == 5


def test_the_two_encodings_describe_the_same_people(ingest, app):
    for name in ("staff-utf8.csv", "staff-cp1251.csv"):
        ingest("frmr-person-csv", (MAPPINGS / "frmr-person-csv" / name).read_bytes(),
               "text/csv")
    assert app.extensions["gateway"].store.count("Practitioner") == 5


def test_csv_import_cli_reports_rows_columns_and_changes_nothing_on_rerun(tmp_path, app,
                                                                         database_url,
                                                                         monkeypatch):
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    source = tmp_path / "staff.csv"
    source.write_bytes((MAPPINGS / "frmr-person-csv" / "staff-with-errors.csv").read_bytes())
    runner = CliRunner()
    first = runner.invoke(main, ["import", "--mapping", "frmr-person-csv", str(source)])
    assert first.exit_code == 0, first.output
    assert "Rows read: 6, accepted: 3 (unchanged: 0), rejected: 3." in first.output
    with open(tmp_path / "staff.errors.csv", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    expected = json.loads((MAPPINGS / "frmr-person-csv" /
                           "staff-with-errors.expect.json").read_text(encoding="utf-8"))
    found = {(int(r["Строка"]), r["Столбец"]) for r in rows}
    for item in expected:
        assert (item["row"], item["column"]) in found
    again = runner.invoke(main, ["import", "--mapping", "frmr-person-csv", str(source),
                                 "--report", str(tmp_path / "second.csv")])
    assert "accepted: 3 (unchanged: 3)" in again.output


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("change", "location"), [
    ({"cards": "109"}, "$.cards"),
    ({"certs": {"specId": 27}}, "$.certs"),
    ({"birthDate": ["1987-05-21"]}, "$.birthDate"),
    ({"lastName": {"text": "Смирнова"}}, "$.lastName"),
])
def test_wrong_types_in_a_vendor_record_are_refused_not_dropped(ingest, change, location):
    record = {**_load("frmr-person", "valid-full.json"), **change}
    result = ingest("frmr-person", record).json["records"][0]
    assert result["status"] == "rejected"
    locations = [loc for i in result["outcome"]["issue"] for loc in i.get("location", [])]
    assert location in locations


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_record_that_is_not_an_object_is_refused_alone(ingest):
    good = _load("frmr-person", "valid-full.json")
    response = ingest("frmr-person", ["just text", good])
    assert [r["status"] for r in response.json["records"]] == ["rejected", "accepted"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_csv_without_a_required_column_is_400_naming_it(ingest):
    body = "Фамилия;Имя\nСмирнова;Ольга\n".encode()
    response = ingest("frmr-person-csv", body, "text/csv")
    assert response.status_code == 400
    assert "СНИЛС" in response.json["issue"][0]["details"]["text"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_oversized_intake_body_is_413(ingest):
    response = ingest("frmr-person", b"[" + b"{}," * (4 * 1024 * 1024) + b"{}]")
    assert response.status_code == 413
