"""fhirpy, a FHIR client from PyPI, against a running gateway (a real HTTP server on
loopback): it creates, pages through everything, follows includes, and gets exactly
what was stored — on SQLite and on PostgreSQL."""
from __future__ import annotations

import json
import threading

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome
from werkzeug.serving import make_server

from tests.conftest import FIXTURES, load_fixture

SNILS = "urn:oid:1.2.643.2.69.1.1.1.6.223"


@pytest.fixture
def server(app):
    """The app served over HTTP on a free loopback port, for the test's duration."""
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}/fhir"
    http.shutdown()
    thread.join()


@pytest.fixture
def fhir(server, token) -> SyncFHIRClient:
    return SyncFHIRClient(server, authorization=f"Bearer {token}")


@pytest.fixture
def samples(fhir) -> dict[str, dict]:
    """Every sample resource PUT by the client; what the server stored, by Type/id."""
    stored = {}
    for path in sorted((FIXTURES / "valid").glob("*.json")):
        data = load_fixture(f"valid/{path.name}")
        resource = fhir.resource(data.pop("resourceType"), **data)
        resource.save()
        stored[f"{resource.resourceType}/{resource.id}"] = resource.serialize()
    return stored


def test_fhirpy_pages_through_everything_and_gets_what_was_stored(fhir, samples):
    for n in range(45):
        practitioner = fhir.resource("Practitioner", name=[{"family": "Лебедева",
                                                            "given": ["Вера"]}],
                                     gender="female", birthDate=f"19{50 + n}-01-01")
        practitioner.save()
        samples[f"Practitioner/{practitioner.id}"] = practitioner.serialize()
    expected = {key: value for key, value in samples.items()
                if key.startswith("Practitioner/")}
    fetched = fhir.resources("Practitioner").limit(4).fetch_all()
    assert len(fetched) == len(expected) == 47
    assert {f"Practitioner/{r.id}": r.serialize() for r in fetched} == expected
    by_birth = fhir.resources("Practitioner").sort("-birthdate").limit(10).fetch_all()
    dates = [r.birthDate for r in by_birth]
    assert dates == sorted(dates, reverse=True)
    assert len({r.id for r in by_birth}) == 47


def test_fhirpy_follows_includes(fhir, samples):
    bundle = fhir.resources("PractitionerRole").search(
        **{"practitioner.identifier": f"{SNILS}|14831576274"}) \
        .include("PractitionerRole", "practitioner") \
        .include("PractitionerRole", "organization").fetch_raw()
    entries = {f"{e.resource.resourceType}/{e.resource.id}": (e.search.mode, e.resource)
               for e in bundle.entry}
    assert {key: mode for key, (mode, _) in entries.items()} == {
        "PractitionerRole/role-ivanova-therapist": "match",
        "Practitioner/prac-ivanova": "include",
        "Organization/org-msk-clinic": "include",
    }
    for key, (_, resource) in entries.items():
        assert json.loads(json.dumps(resource.serialize())) == samples[key]
    roles = fhir.resources("Practitioner").search(gender="male") \
        .revinclude("PractitionerRole", "practitioner").fetch_raw()
    assert [(e.search.mode, e.resource.id) for e in roles.entry] == [
        ("match", "prac-sokolov"), ("include", "role-sokolov-gp")]


def test_fhirpy_count_needs_lenient_handling_of_its_own_parameter(fhir, server, token,
                                                                   samples):
    search = fhir.resources("Observation").search(patient="pat-petrova")
    with pytest.raises(OperationOutcome):
        search.count()                   # fhirpy adds _totalMethod, which FHIR does not define
    lenient = SyncFHIRClient(server, authorization=f"Bearer {token}",
                             extra_headers={"Prefer": "handling=lenient"})
    assert lenient.resources("Observation").search(patient="pat-petrova").count() == 3
    assert len(search.fetch_all()) == 3
