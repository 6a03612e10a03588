"""Two clinics and a region for tenancy and security tests (used by tests/conftest.py).

Moscow (ФРМО OID ...77.8517, with a laboratory department) and Saint Petersburg
(...78.8623) each push their own sample data through their own mis client;
regions 77 and 78, an admin and read-only / write-only clients look on.
"""
from __future__ import annotations

import json

from gateway.store.clients import create_client
from tests.conftest import FHIR_JSON, load_fixture

MSK = "1.2.643.5.1.13.13.12.2.77.8517"
SPB = "1.2.643.5.1.13.13.12.2.78.8623"

MSK_DATA = ["organization-msk-clinic", "organization-msk-lab-department",
            "practitioner-ivanova", "practitionerrole-ivanova-therapist", "patient-petrova",
            "observation-petrova-glucose", "observation-petrova-hemoglobin",
            "observation-petrova-leukocytes", "diagnosticreport-petrova-lab",
            "immunization-petrova-shigellvak"]
SPB_DATA = ["organization-spb-clinic", "practitioner-sokolov", "practitionerrole-sokolov-gp",
            "patient-kuznetsov", "immunization-kuznetsov-measles"]
MSK_IDS = {load_fixture(f"valid/{name}.json")["id"] for name in MSK_DATA}
SPB_IDS = {load_fixture(f"valid/{name}.json")["id"] for name in SPB_DATA}


class Tenants:
    """The test client and a bearer header per API client."""

    def __init__(self, app, client):
        self.app, self.http = app, client
        engine = app.extensions["gateway"].engine
        self.tokens = {
            "admin": create_client(engine, "admin", "admin")[1],
            "msk": create_client(engine, "clinic-msk", "mis", [MSK])[1],
            "spb": create_client(engine, "clinic-spb", "mis", [SPB])[1],
            "msk-reader": create_client(engine, "msk-reader", "mis", [MSK], access="read")[1],
            "msk-writer": create_client(engine, "msk-writer", "mis", [MSK], access="write")[1],
            "region77": create_client(engine, "region-77", "region", region="77")[1],
            "region78": create_client(engine, "region-78", "region", region="78")[1],
        }

    def headers(self, who: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[who]}", "Content-Type": FHIR_JSON}

    def get(self, who: str, url: str, **headers):
        return self.http.get(url, headers={**self.headers(who), **headers})

    def put(self, who: str, resource: dict):
        return self.http.put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                             data=json.dumps(resource, ensure_ascii=False),
                             headers=self.headers(who))

    def post(self, who: str, url: str, body: dict, **headers):
        return self.http.post(url, data=json.dumps(body, ensure_ascii=False),
                              headers={**self.headers(who), **headers})

    def delete(self, who: str, url: str):
        return self.http.delete(url, headers=self.headers(who))

    def ids(self, who: str, url: str) -> set[str]:
        """The ids of every resource in a Bundle answer (matches and includes)."""
        response = self.get(who, url)
        assert response.status_code == 200, response.get_json()
        return {e["resource"]["id"] for e in response.get_json().get("entry", [])
                if "resource" in e}


def filled(app, client) -> Tenants:
    """The clients, with each clinic's data pushed by its own mis client."""
    tenants = Tenants(app, client)
    for who, names in (("msk", MSK_DATA), ("spb", SPB_DATA)):
        for name in names:
            response = tenants.put(who, load_fixture(f"valid/{name}.json"))
            assert response.status_code in (200, 201), (name, response.get_json())
    return tenants
