"""Where each change goes and in what order (pure functions, no database)."""
from __future__ import annotations

from gateway.delivery import bundles, routing
from gateway.delivery.bundles import Candidate
from tests import delivery_data as data


def candidate(pk, reference, depends_on=(), organization="org-1", destination="frmr"):
    return Candidate(pk, reference, 1, "PUT", destination, organization, tuple(depends_on))


def test_destinations_follow_the_registers():
    assert routing.destination("Organization", data.organization(1)) == "frmo"
    employer = {"resourceType": "Organization", "name": "ООО Ромашка"}
    assert routing.destination("Organization", employer) == "elmk"
    assert routing.destination("PractitionerRole", data.role(1, 1, 1)) == "frmr"
    assert routing.destination("Immunization", {}) == "elmk"
    assert routing.destination("Provenance", {}) is None


def test_dependencies_are_literal_or_logical_references():
    assert routing.dependencies("PractitionerRole", data.role(1, 2, 3)) == \
        ["Practitioner/prac-2", "Organization/org-3"]
    by_oid = data.role(1, 2, 3)
    by_oid["organization"] = {"identifier": {"system": data.FRMO_SYSTEM,
                                             "value": data.frmo_oid(3)}}
    logical = routing.dependencies("PractitionerRole", by_oid)[1]
    assert routing.logical(logical) == ("Organization", data.FRMO_SYSTEM, data.frmo_oid(3))
    assert routing.dependencies("Organization", data.organization(1)) == []
    department = {**data.organization(2), "partOf": {"reference": "Organization/org-1"}}
    assert routing.dependencies("Organization", department) == ["Organization/org-1"]
    assert routing.organization_of("Organization", department, "org-2") == "Organization/org-1"


def test_a_practitioner_travels_before_his_role_in_one_bundle():
    role = candidate(1, "PractitionerRole/r1", ["Practitioner/p1", "Organization/org-1"])
    person = candidate(2, "Practitioner/p1", organization=None)
    adopted = bundles.adopt_owners([role, person])
    plan = bundles.plan(adopted, {"PractitionerRole/r1": 1, "Practitioner/p1": 2},
                        {"Organization/org-1": "approved"}, batch_size=10)
    assert [[c.reference for c in b] for b in plan.bundles] == \
        [["Practitioner/p1", "PractitionerRole/r1"]]
    assert plan.waiting == {1: None, 2: None}


def test_a_dependency_in_an_earlier_bundle_must_be_approved_first():
    person = candidate(1, "Practitioner/p1")
    role = candidate(2, "PractitionerRole/r1", ["Practitioner/p1"])
    plan = bundles.plan([person, role], {"Practitioner/p1": 1, "PractitionerRole/r1": 2}, {},
                        batch_size=1)
    assert [[c.reference for c in b] for b in plan.bundles] == [["Practitioner/p1"]]
    assert plan.waiting[2] is not None


def test_a_newer_version_waits_for_the_older_and_says_so():
    older = candidate(1, "Organization/org-1", destination="frmo")
    newer = candidate(2, "Organization/org-1", destination="frmo")
    plan = bundles.plan([older, newer], {"Organization/org-1": 1}, {}, batch_size=10)
    assert [[c.pk for c in b] for b in plan.bundles] == [[1]]
    assert "previous version" in plan.waiting[2]["reason_en"]


def test_what_waits_names_its_blocker_and_why():
    role = candidate(1, "PractitionerRole/r1", ["Organization/org-1", "Practitioner/p1"])
    plan = bundles.plan([role], {"PractitionerRole/r1": 1},
                        {"Organization/org-1": "rejected", "Practitioner/p1": None}, 10)
    reason = plan.waiting[1]
    assert reason["waiting_for"] == ["Organization/org-1", "Practitioner/p1"]
    assert "не одобрен ЕГИСЗ (rejected)" in reason["reason_ru"]
    assert "has not been received" in reason["reason_en"]
    assert plan.bundles == []


def test_the_transaction_bundle_puts_resources_and_deletes_by_reference():
    put = candidate(1, "Organization/org-1", destination="frmo")
    gone = Candidate(2, "Organization/org-2", 3, "DELETE", "frmo", "org-2", ())
    bundle = bundles.transaction_bundle("urn:uuid:x", [(put, {"resourceType": "Organization"}),
                                                       (gone, None)])
    assert bundle["type"] == "transaction"
    assert bundle["identifier"]["value"] == "urn:uuid:x"
    assert bundle["entry"][0]["request"] == {"method": "PUT", "url": "Organization/org-1"}
    assert bundle["entry"][1] == {"fullUrl": "Organization/org-2",
                                  "request": {"method": "DELETE", "url": "Organization/org-2"}}
