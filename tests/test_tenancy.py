"""Tenancy: a clinic sees and changes only its own data, a region only its region's.

Two clinics push their own data through their own mis clients: Moscow
(ФРМО OID ...77.8517, with a laboratory department) and Saint Petersburg
(...78.8623). Every read path is then tried as the wrong client — read, vread,
instance/type/system history, search with includes and chains, bulk export,
legacy export, submissions — and must answer as if the other clinic's data did
not exist. Writes of the other clinic's data are refused with 403 and leave
nothing behind.
"""
from __future__ import annotations

import json

import pytest
from sqlalchemy import delete

from gateway.export import bulk
from gateway.store import tenancy
from gateway.store.clients import create_client
from gateway.store.schema import resource_owners
from tests.conftest import load_fixture
from tests.tenants import MSK, MSK_IDS, SPB, SPB_IDS, Tenants, filled


@pytest.fixture
def tenants(app, client) -> Tenants:
    return filled(app, client)

def _leaks(response, ids: set[str]) -> set[str]:
    """Ids found anywhere in the answer but its links (which echo the query asked)."""
    body = response.get_json()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "link"}
    text = json.dumps(body, ensure_ascii=False)
    return {rid for rid in ids if rid in text}


# --- reading: what is not yours does not exist ----------------------------------------------

OWN_READS = [
    "/fhir/Organization/org-msk-clinic", "/fhir/Organization/org-msk-lab-dept",
    "/fhir/Practitioner/prac-ivanova", "/fhir/PractitionerRole/role-ivanova-therapist",
    "/fhir/Patient/pat-petrova", "/fhir/DiagnosticReport/dr-petrova-lab",
    "/fhir/Organization/org-msk-clinic/_history/1",
    "/fhir/Patient/pat-petrova/_history",
]


@pytest.mark.parametrize("url", OWN_READS)
def test_a_clinic_reads_its_own_data_and_the_other_clinic_gets_404(backend, tenants, url):
    if "dr-petrova-lab" in url:
        url = url.replace("dr-petrova-lab",
                          load_fixture("valid/diagnosticreport-petrova-lab.json")["id"])
    assert tenants.get("msk", url).status_code == 200
    other = tenants.get("spb", url)
    assert other.status_code == 404
    assert other.get_json()["resourceType"] == "OperationOutcome"
    assert tenants.get("admin", url).status_code == 200


def test_a_deleted_resource_of_another_clinic_is_404_not_410(backend, tenants):
    assert tenants.delete("msk", "/fhir/Patient/pat-petrova").status_code in (200, 204)
    assert tenants.get("msk", "/fhir/Patient/pat-petrova").status_code == 410
    assert tenants.get("spb", "/fhir/Patient/pat-petrova").status_code == 404


SEARCHES = [
    "/fhir/Organization", "/fhir/Practitioner", "/fhir/PractitionerRole", "/fhir/Patient",
    "/fhir/Immunization", "/fhir/DiagnosticReport", "/fhir/Observation",
    "/fhir/Organization?_id=org-msk-clinic,org-spb-clinic",
    "/fhir/Organization?identifier=urn:oid:1.2.643.5.1.13.13.11.1461|" + MSK,
    "/fhir/PractitionerRole?_include=PractitionerRole:practitioner"
    "&_include=PractitionerRole:organization",
    "/fhir/Practitioner?_revinclude=PractitionerRole:practitioner",
    "/fhir/Patient?_revinclude=Immunization:patient&_revinclude=DiagnosticReport:subject",
    "/fhir/DiagnosticReport?_include=DiagnosticReport:result&_include=DiagnosticReport:subject",
    "/fhir/PractitionerRole?organization.name=Здоровье",
    "/fhir/Organization?_lastUpdated=gt2000-01-01&_sort=-_lastUpdated",
    "/fhir/_history", "/fhir/Patient/_history", "/fhir/Organization/_history",
]


@pytest.mark.parametrize("url", SEARCHES)
def test_searches_includes_chains_and_history_show_only_the_clinics_own_data(
        backend, tenants, url):
    msk_sees = tenants.ids("msk", url)
    spb_sees = tenants.ids("spb", url)
    assert msk_sees <= MSK_IDS
    assert spb_sees <= SPB_IDS
    assert not _leaks(tenants.get("spb", url), MSK_IDS)
    assert not _leaks(tenants.get("msk", url), SPB_IDS)
    assert tenants.ids("admin", url) >= msk_sees | spb_sees


def test_a_count_only_search_counts_only_what_the_client_may_see(backend, tenants):
    total = tenants.get("spb", "/fhir/Patient?_summary=count").get_json()["total"]
    assert total == 1
    assert tenants.get("admin", "/fhir/Patient?_summary=count").get_json()["total"] == 2


def test_a_region_sees_its_regions_organizations_and_everything_of_them(backend, tenants):
    seen = set()
    for url in ("/fhir/Organization", "/fhir/Practitioner", "/fhir/PractitionerRole",
                "/fhir/Patient", "/fhir/Observation", "/fhir/DiagnosticReport",
                "/fhir/Immunization"):
        seen |= tenants.ids("region77", url)
    assert seen == MSK_IDS
    assert tenants.ids("region78", "/fhir/Organization") == {"org-spb-clinic"}
    assert tenants.get("region78", "/fhir/Patient/pat-petrova").status_code == 404
    assert not _leaks(tenants.get("region78", "/fhir/_history"), MSK_IDS)


def test_an_organization_arriving_later_brings_its_region_to_what_named_it(backend, app,
                                                                          client):
    tenants = Tenants(app, client)
    dental = load_fixture("valid/organization-msk-ip-dental.json")
    oid = "1.2.643.5.1.13.13.12.2.77.9104"
    dentist = create_client(app.extensions["gateway"].engine, "dental", "mis", [oid])[1]
    tenants.tokens["dental"] = dentist
    role = load_fixture("valid/practitionerrole-ivanova-therapist.json")
    role.update(id="role-dental", organization={"reference": f"Organization/{dental['id']}"})
    assert tenants.put("admin", role).status_code == 201          # the clinic is not here yet
    assert tenants.get("dental", "/fhir/PractitionerRole/role-dental").status_code == 404
    assert tenants.put("admin", dental).status_code == 201
    assert tenants.get("dental", "/fhir/PractitionerRole/role-dental").status_code == 200
    assert tenants.get("region77", "/fhir/PractitionerRole/role-dental").status_code == 200
    assert tenants.get("region78", "/fhir/PractitionerRole/role-dental").status_code == 404


def test_a_department_and_its_records_belong_to_the_clinic(backend, tenants):
    assert tenants.get("msk", "/fhir/Organization/org-msk-lab-dept").status_code == 200
    assert tenants.get("region77", "/fhir/Organization/org-msk-lab-dept").status_code == 200
    department = load_fixture("valid/organization-msk-lab-department.json")
    department["name"] = "Лаборатория (переименована)"
    assert tenants.put("msk", department).status_code == 200
    assert tenants.put("spb", department).status_code == 403


# --- writing: another clinic's data is refused and nothing is left behind ------------------

def test_a_clinic_cannot_change_or_delete_another_clinics_data(backend, tenants):
    organization = load_fixture("valid/organization-msk-clinic.json")
    organization["name"] = "Захвачено"
    response = tenants.put("spb", organization)
    assert response.status_code == 403
    assert response.get_json()["issue"][0]["code"] == "forbidden"
    for url in ("/fhir/Patient/pat-petrova", "/fhir/Organization/org-msk-clinic",
                "/fhir/PractitionerRole/role-ivanova-therapist"):
        assert tenants.delete("spb", url).status_code == 403
        assert tenants.get("msk", url).status_code == 200
    assert "Захвачено" not in tenants.get("admin", "/fhir/Organization/org-msk-clinic") \
        .get_data(as_text=True)


def test_a_clinic_cannot_create_an_organization_or_role_of_another_clinic(backend, tenants):
    fake = load_fixture("valid/organization-msk-clinic.json")
    fake["id"] = "org-fake"
    assert tenants.put("spb", fake).status_code == 403
    role = load_fixture("valid/practitionerrole-sokolov-gp.json")
    role.update(id="role-sokolov-at-msk", organization={"reference": "Organization/org-msk-clinic"})
    assert tenants.put("spb", role).status_code == 403
    by_oid = dict(role, id="role-by-oid", organization={"identifier": {
        "system": "urn:oid:1.2.643.5.1.13.13.11.1461", "value": MSK}})
    assert tenants.post("spb", "/fhir/PractitionerRole", by_oid).status_code == 403
    assert tenants.get("admin", "/fhir/PractitionerRole/role-sokolov-at-msk").status_code == 404
    assert tenants.get("admin", "/fhir/Organization/org-fake").status_code == 404


def test_a_conditional_create_that_matches_another_clinics_patient_reveals_nothing(
        backend, tenants):
    petrova = load_fixture("valid/patient-petrova.json")
    snils = next(i for i in petrova["identifier"] if "1.6.223" in i["system"])
    copy = dict(petrova)
    copy.pop("id")
    response = tenants.post("spb", "/fhir/Patient", copy,
                            **{"If-None-Exist": f"identifier={snils['system']}|{snils['value']}"})
    assert response.status_code == 403
    assert "pat-petrova" not in response.get_data(as_text=True)
    assert petrova["name"][0]["family"] not in response.get_data(as_text=True)


def test_a_transaction_with_one_foreign_entry_writes_nothing(backend, tenants):
    patient = load_fixture("valid/patient-kuznetsov.json")
    patient["id"] = "pat-new-spb"
    foreign = load_fixture("valid/organization-msk-clinic.json")
    foreign["name"] = "Захвачено"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient, "request": {"method": "PUT", "url": "Patient/pat-new-spb"}},
        {"resource": foreign, "request": {"method": "PUT", "url": "Organization/org-msk-clinic"}},
    ]}
    assert tenants.post("spb", "/fhir", bundle).status_code == 403
    assert tenants.get("admin", "/fhir/Patient/pat-new-spb").status_code == 404


def test_a_batch_refuses_only_the_foreign_entry(backend, tenants):
    patient = load_fixture("valid/patient-kuznetsov.json")
    patient["id"] = "pat-batch-spb"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient, "request": {"method": "PUT", "url": "Patient/pat-batch-spb"}},
        {"request": {"method": "DELETE", "url": "Patient/pat-petrova"}},
    ]}
    response = tenants.post("spb", "/fhir", bundle)
    statuses = [e["response"]["status"][:3] for e in response.get_json()["entry"]]
    assert statuses == ["201", "403"]
    assert tenants.get("msk", "/fhir/Patient/pat-petrova").status_code == 200


def test_a_clinic_may_register_a_doctor_who_already_works_at_another_clinic(backend, tenants):
    doctor = load_fixture("valid/practitioner-ivanova.json")
    role = load_fixture("valid/practitionerrole-sokolov-gp.json")
    role.update(id="role-ivanova-at-spb", practitioner={"reference": "Practitioner/prac-ivanova"})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": doctor, "request": {"method": "PUT", "url": "Practitioner/prac-ivanova"}},
        {"resource": role, "request": {"method": "PUT",
                                       "url": "PractitionerRole/role-ivanova-at-spb"}},
    ]}
    assert tenants.post("spb", "/fhir", bundle).status_code == 200
    assert tenants.get("spb", "/fhir/Practitioner/prac-ivanova").status_code == 200
    assert tenants.get("msk", "/fhir/Practitioner/prac-ivanova").status_code == 200
    assert tenants.get("spb", "/fhir/PractitionerRole/role-ivanova-therapist").status_code == 404
    # without a role at his clinic, the doctor of the other clinic stays out of reach
    sokolov = load_fixture("valid/practitioner-sokolov.json")
    assert tenants.put("msk", sokolov).status_code == 403
    # the role ends: the doctor is no longer the Petersburg clinic's
    assert tenants.delete("spb", "/fhir/PractitionerRole/role-ivanova-at-spb").status_code \
        in (200, 204)
    assert tenants.get("spb", "/fhir/Practitioner/prac-ivanova").status_code == 404


def test_regions_read_only_and_write_only_clients_are_held_to_their_kind(backend, tenants):
    patient = load_fixture("valid/patient-petrova.json")
    assert tenants.put("region77", patient).status_code == 403
    assert tenants.put("msk-reader", patient).status_code == 403
    assert tenants.get("msk-reader", "/fhir/Patient/pat-petrova").status_code == 200
    assert tenants.get("msk-writer", "/fhir/Patient/pat-petrova").status_code == 403
    assert tenants.get("msk-writer", "/fhir/Patient").status_code == 403
    patient["gender"] = "female"
    assert tenants.put("msk-writer", patient).status_code in (200, 201)
    assert tenants.post("region77", "/fhir/Patient/_search", {}).status_code in (200, 415)


# --- exports and the outbox ------------------------------------------------------------------

def _run_exports(app) -> None:
    gateway = app.extensions["gateway"]
    runner = bulk.Runner(gateway.engine, gateway.settings)
    while runner.run_once():
        pass


def test_bulk_export_holds_only_what_the_client_may_see(backend, tenants, app):
    kicked = tenants.get("spb", "/fhir/$export", Prefer="respond-async")
    assert kicked.status_code == 202
    status_url = kicked.headers["Content-Location"].split("/fhir/", 1)[1]
    _run_exports(app)
    manifest = tenants.get("spb", f"/fhir/{status_url}").get_json()
    exported = set()
    for output in manifest["output"]:
        path = output["url"].split("/fhir/", 1)[1]
        response = tenants.get("spb", f"/fhir/{path}")
        body = response.get_data(as_text=True)
        response.close()
        exported |= {json.loads(line)["id"] for line in body.splitlines() if line}
    assert exported == SPB_IDS
    # and the job itself is nobody else's
    assert tenants.get("msk", f"/fhir/{status_url}").status_code == 404


def test_the_legacy_export_holds_only_the_regions_records(backend, tenants):
    document = tenants.get("region78", "/api/v1/export/legacy/frmr").get_data(as_text=True)
    assert "prac-sokolov" in document or "Соколов" in document
    assert "prac-ivanova" not in document
    assert "Иванова" not in document
    frmo = tenants.get("msk", "/api/v1/export/legacy/frmo").get_data(as_text=True)
    assert MSK in frmo
    assert SPB not in frmo


def test_submissions_of_another_clinic_are_not_found(backend, tenants):
    mine = tenants.http.get("/api/v1/submissions", headers=tenants.headers("msk")).get_json()
    theirs = tenants.http.get("/api/v1/submissions", headers=tenants.headers("spb")).get_json()
    msk_resources = {s["resource"] for s in mine["submissions"]}
    assert msk_resources
    assert all(r.split("/")[1] in MSK_IDS for r in msk_resources)
    assert all(s["resource"].split("/")[1] in SPB_IDS for s in theirs["submissions"])
    one = mine["submissions"][0]["id"]
    assert tenants.http.get(f"/api/v1/submissions/{one}",
                            headers=tenants.headers("spb")).status_code == 404
    assert tenants.http.get(f"/api/v1/submissions/{one}",
                            headers=tenants.headers("msk")).status_code == 200


# --- the rule itself --------------------------------------------------------------------------

def test_owners_can_be_rebuilt_from_content(backend, tenants, app):
    engine = app.extensions["gateway"].engine
    with engine.begin() as conn:
        conn.execute(delete(resource_owners))
    assert tenants.get("msk", "/fhir/Organization/org-msk-clinic").status_code == 404
    assert tenancy.rebuild(engine, batch=4) == len(MSK_IDS) + len(SPB_IDS)
    assert tenants.get("msk", "/fhir/Organization/org-msk-clinic").status_code == 200
    assert tenants.get("msk", "/fhir/PractitionerRole/role-ivanova-therapist").status_code == 200
    assert tenants.get("msk", "/fhir/Practitioner/prac-ivanova").status_code == 200
    assert tenants.get("spb", "/fhir/Practitioner/prac-ivanova").status_code == 404


def test_a_client_definition_that_would_see_too_much_is_refused(app):
    from gateway.store.clients import ClientError
    engine = app.extensions["gateway"].engine
    for args, kwargs in [(("x", "mis"), {}), (("x", "mis", ["not-an-oid"]), {}),
                         (("x", "region"), {}), (("x", "region"), {"region": "7"}),
                         (("x", "admin", [MSK]), {}), (("x", "root"), {}),
                         (("x", "mis", [MSK]), {"access": "all"})]:
        with pytest.raises(ClientError):
            create_client(engine, *args, **kwargs)


def test_a_streamed_search_reads_every_page_as_the_client(backend, tenants):
    """NDJSON pages are read while the answer streams, after the request has ended."""
    response = tenants.get("spb", "/fhir/Observation?_format=ndjson&_count=1")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == ""
    lines = tenants.get("msk", "/fhir/Observation?_format=ndjson").get_data(as_text=True)
    assert {json.loads(line)["id"] for line in lines.splitlines()} == {
        rid for rid in MSK_IDS if rid.startswith("obs-")}
    everything = tenants.get("spb", "/fhir/Patient?_format=ndjson").get_data(as_text=True)
    assert {json.loads(line)["id"] for line in everything.splitlines()} == {"pat-kuznetsov"}


def test_the_cli_after_a_request_runs_with_its_own_access(backend, tenants, app):
    """The thread that served a clinic's request is not left with the clinic's access."""
    tenants.get("spb", "/fhir/Patient")
    assert tenancy.current_access.get() is tenancy.SYSTEM
