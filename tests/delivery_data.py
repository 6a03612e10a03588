"""Registers of any size for delivery tests: organizations, practitioners, roles.

Built from the reviewed samples in fixtures/valid with fresh identifiers whose
check digits are right, so the gateway accepts every one; what the upstream then
answers depends only on the content (a region mismatch between ИНН and ОГРН, a
second registration of the same person at the same post).
"""
from __future__ import annotations

import copy

from fixtures.generate_fixtures import inn_org, inn_person, ogrn, snils
from tests.conftest import load_fixture

ORGANIZATION = load_fixture("valid/organization-msk-clinic.json")
PRACTITIONER = load_fixture("valid/practitioner-ivanova.json")
ROLE = load_fixture("valid/practitionerrole-ivanova-therapist.json")
FRMO_SYSTEM = "urn:oid:1.2.643.5.1.13.13.11.1461"


def frmo_oid(n: int) -> str:
    return f"1.2.643.5.1.13.13.12.2.77.{10000 + n}"


def organization(n: int, ogrn_region: str = "77") -> dict:
    """Organization/org-{n} of Moscow; another `ogrn_region` makes ЕГИСЗ refuse it."""
    org = copy.deepcopy(ORGANIZATION)
    org["id"] = f"org-{n}"
    org["name"] = f"Клиника № {n}"
    org["identifier"] = [
        {"system": FRMO_SYSTEM, "value": frmo_oid(n)},
        {"system": "urn:oid:1.2.643.100.4", "value": inn_org(f"77{n:07d}")},
        {"system": "urn:oid:1.2.643.100.1", "value": ogrn(f"118{ogrn_region}{n:07d}")},
    ]
    return org


def practitioner(n: int) -> dict:
    person = copy.deepcopy(PRACTITIONER)
    person["id"] = f"prac-{n}"
    person["identifier"][0]["value"] = snils(f"{200000000 + n * 7:09d}")
    person["identifier"][1]["value"] = inn_person(f"7727{n:06d}")
    return person


def role(n: int, practitioner_n: int, organization_n: int, position: str = "109") -> dict:
    post = copy.deepcopy(ROLE)
    post["id"] = f"role-{n}"
    post["practitioner"] = {"reference": f"Practitioner/prac-{practitioner_n}"}
    post["organization"] = {"reference": f"Organization/org-{organization_n}"}
    post["code"][0]["coding"][0]["code"] = position
    return post


def register(organizations: int, per_organization: int) -> list[dict]:
    """Organizations, each with practitioners and one role per practitioner, in write order."""
    resources = []
    for o in range(organizations):
        resources.append(organization(o))
        for k in range(per_organization):
            n = o * per_organization + k
            resources += [practitioner(n), role(n, n, o)]
    return resources
