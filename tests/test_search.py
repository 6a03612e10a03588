"""FHIR search over the sample data (fixtures/valid), on SQLite and on PostgreSQL.

Each parameter type with its modifiers and prefixes, OR and AND, sorting, paging by
cursor while others write, includes, chains, result parameters, strict and lenient
handling, XML against the official schema, hostile input, and the
CapabilityStatement listing exactly what is served.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
from lxml import etree
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url

from gateway.app import create_app
from gateway.registry import RESOURCE_TYPES, searchable
from gateway.store.clients import create_client
from gateway.store.schema import resources
from tests.conftest import FIXTURES, POSTGRES_URL, load_fixture

SNILS = "urn:oid:1.2.643.2.69.1.1.1.6.223"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
UNITS = "urn:oid:1.2.643.5.1.13.13.11.1358"
VALID = sorted(p.name for p in (FIXTURES / "valid").glob("*.json"))


@pytest.fixture
def loaded(client, auth):
    """Every sample resource, PUT by its id."""
    for name in VALID:
        resource = load_fixture(f"valid/{name}")
        response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                              data=json.dumps(resource, ensure_ascii=False), headers=auth)
        assert response.status_code == 201, (name, response.json)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared(request, tmp_path_factory):
    """One app per backend holding the samples, shared by the tests that only read.

    On PostgreSQL it has a database of its own, so the per-test apps emptying the
    session database between tests do not touch it.
    """
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('shared') / 'gateway.sqlite3'}"
    else:
        request.getfixturevalue("postgres_database")       # skips (or fails) as the suite does
        admin = create_engine(make_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
        name = f"gw_search_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    # Thousands of requests as one client: the per-client rate limit is off here.
    app = create_app({"data_dir": str(tmp_path_factory.mktemp("data")), "database_url": url,
                      "log_level": "WARNING", "rate_limit_per_minute": 0})
    _, token = create_client(app.extensions["gateway"].engine, "search-tests", "admin")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    client = app.test_client()
    for file in VALID:
        put(client, headers, load_fixture(f"valid/{file}"))
    yield Shared(app, client, headers)
    app.extensions["gateway"].engine.dispose()
    if name:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Shared:
    app: object
    client: object
    headers: dict


@pytest.fixture
def search(shared):
    """search("Practitioner?name=x", **headers) -> the response, from the shared samples."""
    def _search(query: str, **headers):
        return shared.client.get(f"/fhir/{query}", headers={**shared.headers, **headers})
    return _search


@pytest.fixture
def found(search):
    """found("Practitioner?name=x") -> the ids matched, in Bundle order (200 asserted)."""
    def _found(query: str, **headers) -> list[str]:
        response = search(query, **headers)
        assert response.status_code == 200, response.json
        return matched(response.json)
    return _found


@pytest.fixture
def written(client, auth):
    """Search on this test's own app, for the tests that write."""
    def _search(query: str, **headers):
        return client.get(f"/fhir/{query}", headers={**auth, **headers})
    return _search


def ids(response) -> list[str]:
    assert response.status_code == 200, response.json
    return matched(response.json)


def matched(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def link(bundle: dict, relation: str) -> str | None:
    return next((item["url"] for item in bundle.get("link", [])
                 if item["relation"] == relation), None)


def path(url: str) -> str:
    """A link as the test client's path: /fhir/...?..."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def put(client, auth, resource: dict) -> dict:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                          data=json.dumps(resource, ensure_ascii=False), headers=auth)
    assert response.status_code in (200, 201), response.json
    return response.json


def person(rid: str, family: str, given: str = "Ольга", **extra) -> dict:
    return {"resourceType": "Practitioner", "id": rid,
            "name": [{"family": family, "given": [given]}], **extra}


# --- token -----------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ("Practitioner?gender=female", ["prac-ivanova"]),
    ("Practitioner?gender=|female", ["prac-ivanova"]),               # stored without a system
    (f"Practitioner?identifier={SNILS}|14831576274", ["prac-ivanova"]),
    ("Practitioner?identifier=urn:oid:1.2.643.100.3|148-315-762 74", ["prac-ivanova"]),
    ("Practitioner?identifier=14831576274", ["prac-ivanova"]),        # any system
    ("Practitioner?identifier=|14831576274", []),                     # has a system
    (f"Practitioner?identifier={SNILS}|", ["prac-ivanova", "prac-sokolov"]),
    ("Practitioner?identifier=urn:oid:1.2.643.100.4|14831576274", []),
    ("Practitioner?active=true", ["prac-ivanova", "prac-sokolov"]),
    ("Practitioner?gender:not=female", ["prac-sokolov"]),
    ("Practitioner?_id=prac-sokolov", ["prac-sokolov"]),
    ("Practitioner?_id=prac-sokolov,prac-ivanova", ["prac-ivanova", "prac-sokolov"]),
    (f"Organization?type={ORG_TYPE}|dept", ["org-msk-lab-dept"]),
    ("Organization?type=dept", ["org-msk-lab-dept"]),
    ("Organization?partof:missing=false", ["org-msk-lab-dept"]),
    ("Organization?partof:missing=true", ["org-msk-clinic", "org-msk-ip-dental",
                                          "org-spb-clinic"]),
    ("Organization?identifier=urn:oid:1.2.643.100.5|319774600123661", ["org-msk-ip-dental"]),
    ("PractitionerRole?role=urn:oid:1.2.643.5.1.13.13.11.1002|109", ["role-ivanova-therapist"]),
    ("PractitionerRole?specialty=16", ["role-sokolov-gp"]),
    ("Immunization?vaccine-code=urn:oid:1.2.643.5.1.13.13.11.1078|253",
     ["imm-petrova-shigellvak"]),
    ("Immunization?status=completed", ["imm-kuznetsov-measles", "imm-petrova-shigellvak"]),
    ("DiagnosticReport?category=http://terminology.hl7.org/CodeSystem/v2-0074|LAB",
     ["dr-petrova-lab"]),
    ("DiagnosticReport?code=19", ["dr-petrova-periodic-exam"]),
    ("DiagnosticReport?status=final", ["dr-petrova-lab", "dr-petrova-periodic-exam"]),
    ("Observation?code=http://loinc.org|718-7", ["obs-petrova-hemoglobin"]),
])
def test_token_search(found, query, expected):
    assert sorted(found(query)) == expected


# --- string ----------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ("Practitioner?name=иван", ["prac-ivanova"]),                   # prefix of the family
    ("Practitioner?name=МАР", ["prac-ivanova"]),                    # prefix of a given name
    ("Practitioner?name=Иванова Мария", ["prac-ivanova"]),          # prefix of name.text
    ("Practitioner?name=ванова", []),                               # not a prefix
    ("Practitioner?family=соколов", ["prac-sokolov"]),
    ("Practitioner?given=андрей", ["prac-sokolov"]),
    ("Practitioner?family:exact=Иванова", ["prac-ivanova"]),
    ("Practitioner?family:exact=Иванов", []),
    ("Practitioner?family:contains=КОЛ", ["prac-sokolov"]),
    ("Practitioner?family:contains=ов", ["prac-ivanova", "prac-sokolov"]),
    ("Organization?name:contains=нева", ["org-spb-clinic"]),
    ("Organization?name=клиника «здоровье»", ["org-msk-clinic"]),   # the alias
    ("Organization?address-state=78", ["org-spb-clinic"]),
    ("Patient?family=петрова", ["pat-petrova"]),
    ("Patient?name:missing=false", ["pat-kuznetsov", "pat-petrova"]),
    ("Patient?name:missing=true", []),
])
def test_string_search(found, query, expected):
    assert sorted(found(query)) == expected


@pytest.mark.parametrize("query", [
    "family=Алешина", "family=АЛЁШИНА", "family=алёш", "family:exact=алешина",
    "name:contains=лёши", "name:contains=ЛЕШ",
])
def test_string_search_treats_yo_as_ye_and_ignores_case(client, auth, written, query):
    put(client, auth, person("alyoshina", "Алёшина"))
    put(client, auth, person("aleshina", "Алешина"))
    assert sorted(ids(written(f"Practitioner?{query}"))) == ["aleshina", "alyoshina"]


# --- date ------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    # Иванова born 1985-03-14, Соколов 1978-09-02
    ("birthdate=1985", ["prac-ivanova"]),
    ("birthdate=1985-03", ["prac-ivanova"]),
    ("birthdate=eq1985-03-14", ["prac-ivanova"]),
    ("birthdate=1985-03-15", []),
    ("birthdate=ne1985", ["prac-sokolov"]),
    ("birthdate=gt1980", ["prac-ivanova"]),
    ("birthdate=lt1980", ["prac-sokolov"]),
    ("birthdate=ge1985-03-14", ["prac-ivanova"]),
    ("birthdate=gt1985-03-14", []),
    ("birthdate=le1985-03-14", ["prac-ivanova", "prac-sokolov"]),
    ("birthdate=lt1985-03-14", ["prac-sokolov"]),
    ("birthdate=sa1978-09-02", ["prac-ivanova"]),
    ("birthdate=sa1985", []),
    ("birthdate=eb1985-03-14", ["prac-sokolov"]),
    ("birthdate=eb1978", []),
    ("birthdate=1985-03-14T10:00:00Z", []),          # a day is not inside one second
    ("birthdate=ge1985-03-14T10:00:00Z", ["prac-ivanova"]),
    ("birthdate=le1985-03-14T10:00:00Z", ["prac-ivanova", "prac-sokolov"]),
    ("birthdate:missing=true", []),
    ("_lastUpdated=gt2000-01-01", ["prac-ivanova", "prac-sokolov"]),
    ("_lastUpdated=lt2000", []),
])
def test_date_search_on_dates(found, query, expected):
    assert sorted(found(f"Practitioner?{query}")) == expected


@pytest.mark.parametrize(("query", "expected"), [
    # roles: Иванова since 2019-09-02, Соколов since 2016-02-01, both without an end
    ("date=gt2025", ["role-ivanova-therapist", "role-sokolov-gp"]),    # an open end goes on
    ("date=2019", []),                                   # an open period is inside no year
    ("date=ne2019", ["role-ivanova-therapist", "role-sokolov-gp"]),
    ("date=sa2018", ["role-ivanova-therapist"]),
    ("date=lt2017", ["role-sokolov-gp"]),
    ("date=le2016-02-01", []),          # starts within that day but is not inside it
    ("date=le2016-02-02", ["role-sokolov-gp"]),
    ("date=eb2030", []),
])
def test_date_search_on_open_periods(found, query, expected):
    assert sorted(found(f"PractitionerRole?{query}")) == expected


@pytest.mark.parametrize(("query", "expected"), [
    # Immunizations 2026-09-15T10:20+03:00 (Петрова), 2026-03-04T14:05+03:00 (Кузнецов)
    ("date=2026-09", ["imm-petrova-shigellvak"]),
    ("date=2026-09-15T07:20:00Z", ["imm-petrova-shigellvak"]),
    ("date=2026-09-15T10:20:00%2B03:00", ["imm-petrova-shigellvak"]),
    ("date=2026-09-15T10:20:00+03:00", ["imm-petrova-shigellvak"]),   # "+" read as a space
    ("date=2026-09-15T07:20", ["imm-petrova-shigellvak"]),            # a minute, UTC
    ("date=ge2026-04&date=le2026-12", ["imm-petrova-shigellvak"]),  # AND: a range
    ("date=2026-03,2026-09", ["imm-kuznetsov-measles", "imm-petrova-shigellvak"]),  # OR
])
def test_date_search_on_instants_with_zones(found, query, expected):
    assert sorted(found(f"Immunization?{query}")) == expected


@pytest.mark.parametrize("value", ["2024-13-01", "1985-02-30", "0000", "ap2020", "xx1985",
                                   "1985-3-14", "yesterday", "9999-12-31T23:59:59-01:00"])
def test_an_unreadable_date_is_400(search, value):
    response = search(f"Practitioner?birthdate={quote(value)}")
    assert response.status_code == 400
    assert response.json["issue"][0]["code"] == "invalid"


# --- reference -------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ("PractitionerRole?practitioner=Practitioner/prac-ivanova", ["role-ivanova-therapist"]),
    ("PractitionerRole?practitioner=prac-ivanova", ["role-ivanova-therapist"]),
    ("PractitionerRole?practitioner=https://other.example/fhir/Practitioner/prac-ivanova",
     ["role-ivanova-therapist"]),
    ("PractitionerRole?practitioner=Organization/prac-ivanova", []),
    ("PractitionerRole?practitioner:Practitioner=prac-sokolov", ["role-sokolov-gp"]),
    ("PractitionerRole?organization=org-spb-clinic,org-msk-clinic",
     ["role-ivanova-therapist", "role-sokolov-gp"]),
    ("Organization?partof=Organization/org-msk-clinic", ["org-msk-lab-dept"]),
    ("Immunization?patient=pat-kuznetsov", ["imm-kuznetsov-measles"]),
    ("Immunization?performer=Practitioner/prac-ivanova", ["imm-petrova-shigellvak"]),
    ("DiagnosticReport?subject:Patient=pat-petrova",
     ["dr-petrova-lab", "dr-petrova-periodic-exam"]),
    ("DiagnosticReport?patient=Patient/pat-kuznetsov", []),
    ("DiagnosticReport?performer=Organization/org-msk-clinic", ["dr-petrova-periodic-exam"]),
    ("DiagnosticReport?result=Observation/obs-petrova-glucose", ["dr-petrova-lab"]),
    ("Observation?patient=pat-petrova", ["obs-petrova-glucose", "obs-petrova-hemoglobin",
                                         "obs-petrova-leukocytes"]),
    ("Observation?subject:missing=true", []),
])
def test_reference_search(found, query, expected):
    assert sorted(found(query)) == expected


# --- quantity --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    # hemoglobin 135 (unit 60), glucose 5.1 (195), leukocytes 6.4 (322)
    ("135", ["obs-petrova-hemoglobin"]),
    ("5.1", ["obs-petrova-glucose"]),
    ("5.12", []),                                   # [5.115, 5.125) does not hold 5.1
    ("1e2", ["obs-petrova-hemoglobin"]),            # one significant figure: [50, 150)
    ("gt100", ["obs-petrova-hemoglobin"]),
    ("lt6", ["obs-petrova-glucose"]),
    ("le6.4", ["obs-petrova-glucose", "obs-petrova-leukocytes"]),
    ("ge135", ["obs-petrova-hemoglobin"]),
    ("ne135", ["obs-petrova-glucose", "obs-petrova-leukocytes"]),
    ("sa100", ["obs-petrova-hemoglobin"]),
    ("eb6", ["obs-petrova-glucose"]),
    (f"135|{UNITS}|60", ["obs-petrova-hemoglobin"]),
    ("135||60", ["obs-petrova-hemoglobin"]),
    ("135||61", []),
    (f"gt1|{UNITS}|195", ["obs-petrova-glucose"]),
    ("lt10,gt100", ["obs-petrova-glucose", "obs-petrova-hemoglobin",
                    "obs-petrova-leukocytes"]),
])
def test_quantity_search(found, value, expected):
    assert sorted(found(f"Observation?value-quantity={quote(value)}")) == expected


@pytest.mark.parametrize("value", ["abc", "5|x", "ap5", "1e9999", "NaN", "5,,6|a|b|c"])
def test_an_unreadable_quantity_is_400(search, value):
    assert search(f"Observation?value-quantity={quote(value)}").status_code == 400


# --- OR, AND, chains -------------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ("Practitioner?given=мария,андрей", ["prac-ivanova", "prac-sokolov"]),
    ("Practitioner?given=мария&given=андрей", []),
    ("Practitioner?given=мария&given=петровна", ["prac-ivanova"]),
    ("Practitioner?given=мария&gender=male", []),
    ("Patient?gender=female,male&birthdate=lt1990", ["pat-kuznetsov"]),
])
def test_comma_is_or_and_repetition_is_and(found, query, expected):
    assert sorted(found(query)) == expected


@pytest.mark.parametrize(("query", "expected"), [
    (f"PractitionerRole?practitioner.identifier={SNILS}|14831576274", ["role-ivanova-therapist"]),
    ("PractitionerRole?practitioner.identifier=urn:oid:1.2.643.100.3|163-904-527 73",
     ["role-sokolov-gp"]),
    ("PractitionerRole?practitioner.name=соколов", ["role-sokolov-gp"]),
    ("PractitionerRole?organization.name:contains=нева", ["role-sokolov-gp"]),
    ("PractitionerRole?organization.address-state=77", ["role-ivanova-therapist"]),
    ("PractitionerRole?organization:Organization.identifier=urn:oid:1.2.643.5.1.13.13.11.1461|"
     "1.2.643.5.1.13.13.12.2.78.8623", ["role-sokolov-gp"]),
    ("DiagnosticReport?subject:Patient.name=петрова",
     ["dr-petrova-lab", "dr-petrova-periodic-exam"]),
    ("DiagnosticReport?patient.birthdate=1992", ["dr-petrova-lab", "dr-petrova-periodic-exam"]),
    ("Organization?partof.identifier=1.2.643.5.1.13.13.12.2.77.8517", ["org-msk-lab-dept"]),
    ("Immunization?patient.gender=male", ["imm-kuznetsov-measles"]),
])
def test_chained_parameters(found, query, expected):
    assert sorted(found(query)) == expected


@pytest.mark.parametrize("query", [
    "DiagnosticReport?subject.name=петрова",                  # Patient, Practitioner or ...?
    "PractitionerRole?practitioner.organization.name=x",      # two levels
])
def test_an_ambiguous_or_deep_chain_is_400(search, query):
    response = search(query)
    assert response.status_code == 400
    assert response.json["resourceType"] == "OperationOutcome"


def test_a_chain_does_not_follow_deleted_targets(client, auth, loaded, written):
    assert client.delete("/fhir/Practitioner/prac-ivanova", headers=auth).status_code == 204
    assert ids(written(f"PractitionerRole?practitioner.identifier={SNILS}|14831576274")) == []


# --- deleted resources -----------------------------------------------------------------

def test_deleted_resources_never_match_nor_are_included(client, auth, loaded, written):
    assert client.delete("/fhir/PractitionerRole/role-sokolov-gp", headers=auth).status_code == 204
    assert client.delete("/fhir/Practitioner/prac-ivanova", headers=auth).status_code == 204
    assert ids(written("Practitioner?gender=female")) == []
    assert ids(written("PractitionerRole?specialty=16")) == []
    bundle = written("Practitioner?_revinclude=PractitionerRole:practitioner").json
    assert bundle["total"] == 1
    assert matched(bundle) == ["prac-sokolov"]
    assert matched(bundle, "include") == []
    bundle = written("PractitionerRole?_include=PractitionerRole:practitioner").json
    assert matched(bundle) == ["role-ivanova-therapist"]
    assert matched(bundle, "include") == []


# --- sort ------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ("Practitioner?_sort=birthdate", ["prac-sokolov", "prac-ivanova"]),
    ("Practitioner?_sort=-birthdate", ["prac-ivanova", "prac-sokolov"]),
    ("Practitioner?_sort=family", ["prac-ivanova", "prac-sokolov"]),
    ("Practitioner?_sort=-family", ["prac-sokolov", "prac-ivanova"]),
    ("Organization?_sort=_id", ["org-msk-clinic", "org-msk-ip-dental", "org-msk-lab-dept",
                                "org-spb-clinic"]),
    ("Organization?_sort=-_id", ["org-spb-clinic", "org-msk-lab-dept", "org-msk-ip-dental",
                                 "org-msk-clinic"]),
    # no address: last in both directions
    ("Organization?_sort=address-state,_id", ["org-msk-clinic", "org-msk-ip-dental",
                                              "org-spb-clinic", "org-msk-lab-dept"]),
    ("Organization?_sort=-address-state,-_id", ["org-spb-clinic", "org-msk-ip-dental",
                                                "org-msk-clinic", "org-msk-lab-dept"]),
    ("Observation?_sort=date,-_id", ["obs-petrova-leukocytes", "obs-petrova-hemoglobin",
                                     "obs-petrova-glucose"]),
    ("Observation?_sort=-value-quantity", ["obs-petrova-hemoglobin", "obs-petrova-leukocytes",
                                           "obs-petrova-glucose"]),
    ("DiagnosticReport?_sort=-date", ["dr-petrova-periodic-exam", "dr-petrova-lab"]),
    ("Immunization?_sort=vaccine-code", ["imm-petrova-shigellvak", "imm-kuznetsov-measles"]),
])
def test_sort(found, query, expected):
    assert found(query) == expected


def test_sort_by_last_updated_follows_writes(client, auth, loaded, written):
    put(client, auth, {**load_fixture("valid/practitioner-ivanova.json"), "active": False})
    assert ids(written("Practitioner?_sort=_lastUpdated")) == ["prac-sokolov", "prac-ivanova"]
    assert ids(written("Practitioner?_sort=-_lastUpdated")) == ["prac-ivanova", "prac-sokolov"]


@pytest.mark.parametrize("value", ["practitioner", "bogus", "name:exact"])
def test_sort_by_what_cannot_be_sorted_is_400(search, value):
    assert search(f"PractitionerRole?_sort={value}").status_code == 400


# --- paging ----------------------------------------------------------------------------

def _pages(client, auth, first: str, between=None) -> list[list[str]]:
    """Follow `next` from `first` to the end; `between(n)` runs after page n is read."""
    pages, url = [], first
    while url:
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.json
        pages.append(matched(response.json))
        if between:
            between(len(pages))
        url = link(response.json, "next")
        url = path(url) if url else None
    return pages


FAMILIES = ("Борисова", "Абрамова", "Жукова", "Васильева", "Дмитриева", "Егорова",
            "Григорьева")


def _staff(client, auth, count: int, prefix: str = "p") -> list[str]:
    ids = [f"{prefix}-{n:03d}" for n in range(count)]
    for n, rid in enumerate(ids):
        put(client, auth, person(rid, FAMILIES[n % 7], gender="female" if n % 2 else "male"))
    return ids


def test_default_page_is_50_with_links_through_everything(client, auth):
    ids = _staff(client, auth, 53)
    first = client.get("/fhir/Practitioner", headers=auth).json
    assert first["total"] == 53
    assert len(matched(first)) == 50
    assert link(first, "self").endswith("/fhir/Practitioner")
    assert link(first, "previous") is None
    second = client.get(path(link(first, "next")), headers=auth).json
    assert matched(second) == ids[50:]
    assert link(second, "next") is None
    back = client.get(path(link(second, "previous")), headers=auth).json
    assert matched(back) == ids[:50]
    assert link(back, "previous") is None
    assert link(back, "next")


def test_paging_never_skips_or_repeats_while_others_write(app, client, auth):
    """Default order (creation): creates, updates and deletes between pages."""
    ids = _staff(client, auth, 23)
    created: list[str] = []

    def write(page: int) -> None:
        rid = f"new-{page}"
        put(client, auth, person(rid, "Аааа"))                      # sorts first by name
        created.append(rid)
        put(client, auth, person(ids[page], "Яяяя", gender="male"))  # update a seen one
        put(client, auth, person(ids[-page], "Бббб", gender="male"))  # and an unseen one
    pages = _pages(client, auth, "/fhir/Practitioner?_count=5", write)
    seen = [rid for page in pages for rid in page]
    assert len(seen) == len(set(seen)), "an entry was repeated"
    assert seen == ids + created[:len(seen) - len(ids)]
    assert set(ids) <= set(seen), "an entry was skipped"
    assert all(len(page) == 5 for page in pages[:-1])


def test_paging_by_a_sort_key_with_inserts_before_and_after_the_cursor(client, auth):
    ids = _staff(client, auth, 14)
    expected = sorted(ids, key=lambda rid: (FAMILIES[int(rid[2:]) % 7], rid))
    # pk order equals id order here, so ties on the family fall back to creation order

    def write(page: int) -> None:
        put(client, auth, person(f"early-{page}", "Аааа"))   # before the cursor: not seen
        put(client, auth, person(f"late-{page}", "Яяяя"))    # after the cursor: seen
    pages = _pages(client, auth, "/fhir/Practitioner?_sort=family&_count=4", write)
    seen = [rid for page in pages for rid in page]
    assert len(seen) == len(set(seen))
    assert seen[:len(ids)] == expected
    assert {rid for rid in seen[len(ids):]} == {f"late-{n}" for n in range(1, len(pages))}
    assert not any(rid.startswith("early-") for rid in seen)


def test_a_resource_moved_past_the_cursor_appears_again_at_its_new_place(client, auth):
    ids = _staff(client, auth, 6)
    pages = _pages(client, auth, "/fhir/Practitioner?_sort=_lastUpdated&_count=3",
                   lambda page: page == 1 and put(client, auth, person(ids[0], "Новая")))
    assert pages == [ids[:3], ids[3:], [ids[0]]]


def test_deleted_between_pages_are_not_returned(client, auth):
    ids = _staff(client, auth, 9)
    pages = _pages(client, auth, "/fhir/Practitioner?_count=3",
                   lambda page: page == 1 and client.delete(f"/fhir/Practitioner/{ids[4]}",
                                                            headers=auth))
    assert pages == [ids[:3], [ids[3], ids[5], ids[6]], ids[7:]]


def test_previous_links_walk_back_through_the_same_pages(client, auth):
    ids = _staff(client, auth, 11)
    url, forward = "/fhir/Practitioner?_sort=-family&_count=4", []
    while url:
        bundle = client.get(url, headers=auth).json
        forward.append(matched(bundle))
        url = path(link(bundle, "next")) if link(bundle, "next") else None
    backward = [matched(bundle)]
    while link(bundle, "previous"):
        bundle = client.get(path(link(bundle, "previous")), headers=auth).json
        backward.append(matched(bundle))
    assert backward[::-1] == forward
    assert sorted(rid for page in forward for rid in page) == ids


def test_an_emptied_page_still_links_back(client, auth):
    ids = _staff(client, auth, 4)
    first = client.get("/fhir/Practitioner?_count=2", headers=auth).json
    for rid in ids[2:]:
        client.delete(f"/fhir/Practitioner/{rid}", headers=auth)
    empty = client.get(path(link(first, "next")), headers=auth).json
    assert matched(empty) == []
    assert empty["total"] == 2
    assert matched(client.get(path(link(empty, "previous")), headers=auth).json) == ids[:2]


@pytest.mark.parametrize("query", [
    "Practitioner?_sort=birthdate", "Organization?_sort=-name,_id",
    "Observation?_sort=-date,value-quantity", "Organization?_sort=address-state",
    "Immunization?_sort=-_lastUpdated", "DiagnosticReport?_sort=code,-_id",
])
def test_one_entry_pages_give_the_same_order_as_one_page(search, query):
    whole = matched(search(query).json)
    pages, response = [], search(query + "&_count=1")
    while True:
        pages += matched(response.json)
        following = link(response.json, "next")
        if not following:
            break
        response = search(path(following).removeprefix("/fhir/"))
    assert pages == whole
    assert len(whole) >= 2


def test_the_cursor_carries_the_query(client, auth, loaded):
    first = client.get("/fhir/Observation?patient=pat-petrova&_sort=-value-quantity&_count=1"
                       "&_elements=code&_include=Observation:patient", headers=auth).json
    next_url = link(first, "next")
    assert set(dict(_query(next_url))) == {"_cursor"}
    second = client.get(path(next_url), headers=auth).json
    assert matched(second) == ["obs-petrova-leukocytes"]
    assert matched(second, "include") == ["pat-petrova"]
    assert "valueQuantity" not in second["entry"][0]["resource"]
    assert second["total"] == 3


def test_links_keep_the_format(client, auth, loaded):
    response = client.get("/fhir/Organization?_count=1&_format=xml", headers=auth)
    assert response.content_type.startswith("application/fhir+xml")
    document = etree.fromstring(response.data)
    urls = document.xpath("//f:link/f:url/@value", namespaces={"f": "http://hl7.org/fhir"})
    assert all("_format=xml" in url for url in urls)
    following = client.get(path(urls[1]), headers=auth)
    assert following.content_type.startswith("application/fhir+xml")


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query)


def test_a_tampered_cursor_is_400(client, auth, loaded):
    first = client.get("/fhir/Organization?_count=1", headers=auth).json
    token = dict(_query(link(first, "next")))["_cursor"]
    body, tag = token.split(".")
    for bad in (body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + tag,
                body + "." + tag[::-1], body, "", "x.y", "%%%", token + "A"):
        response = client.get("/fhir/Organization?" + urlencode({"_cursor": bad}), headers=auth)
        assert response.status_code == 400, bad
        assert response.json["issue"][0]["expression"] == ["_cursor"]


def test_a_cursor_is_for_its_own_type_and_alone(client, auth, loaded):
    first = client.get("/fhir/Organization?_count=1", headers=auth).json
    token = dict(_query(link(first, "next")))["_cursor"]
    assert client.get("/fhir/Practitioner?" + urlencode({"_cursor": token}),
                      headers=auth).status_code == 400
    assert client.get("/fhir/Organization?" + urlencode({"_cursor": token, "name": "x"}),
                      headers=auth).status_code == 400


def test_pages_are_keyset_queries_never_offset(app, client, auth):
    _staff(client, auth, 7)
    statements: list[str] = []
    engine = app.extensions["gateway"].engine

    def record(conn, cursor, statement, parameters, *args):
        statements.append((statement, parameters))
    event.listen(engine, "before_cursor_execute", record)
    try:
        pages = _pages(client, auth, "/fhir/Practitioner?_sort=-family,birthdate&_count=2")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(pages) == 4
    paged = [(s, p) for s, p in statements if "LIMIT" in s and "FROM resources" in s]
    assert len(paged) == 4
    for statement, parameters in paged:
        # SQLAlchemy's SQLite dialect always writes "LIMIT ? OFFSET ?": its offset is 0
        assert "OFFSET" not in statement or list(parameters)[-1] == 0


# --- _count, _total, _summary, _elements -----------------------------------------------

def test_count_above_the_maximum_is_lowered_and_said_so(search):
    bundle = search("Practitioner?_count=5000").json
    assert matched(bundle) == ["prac-ivanova", "prac-sokolov"]
    assert "_count=1000" in link(bundle, "self")
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome[0]["resource"]["issue"][0]["severity"] == "warning"
    assert outcome[0]["resource"]["issue"][0]["expression"] == ["_count"]


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "١٢"])
def test_a_bad_count_is_400(search, value):
    assert search(f"Practitioner?_count={quote(value)}").status_code == 400


def test_count_zero_gives_the_total_only(search):
    bundle = search("Observation?_count=0").json
    assert bundle["total"] == 3
    assert "entry" not in bundle
    assert link(bundle, "next") is None


def test_total(search):
    assert search("Observation").json["total"] == 3
    assert search("Observation?_total=accurate").json["total"] == 3
    assert search("Observation?_total=estimate").json["total"] == 3
    assert "total" not in search("Observation?_total=none").json
    assert search("Observation?_total=some").status_code == 400


def test_summary_count(search):
    bundle = search("Observation?patient=pat-petrova&_summary=count&_include=Observation:patient"
                    ).json
    assert bundle == {**bundle, "type": "searchset", "total": 3}
    assert "entry" not in bundle


def test_summary_true_keeps_summary_elements_and_marks_them(search):
    bundle = search("DiagnosticReport?_id=dr-petrova-periodic-exam&_summary=true").json
    report = bundle["entry"][0]["resource"]
    assert "presentedForm" not in report
    assert "conclusion" not in report
    assert report["code"]
    assert report["status"] == "final"
    assert report["subject"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED"}.items() <= report["meta"]["tag"][0].items()


def test_summary_data_and_text(client, auth, written):
    put(client, auth, person("with-text", "Текстова",
                             text={"status": "generated",
                                   "div": '<div xmlns="http://www.w3.org/1999/xhtml">Т</div>'}))
    data = written("Practitioner?_summary=data").json["entry"][0]["resource"]
    assert "text" not in data
    assert data["name"]
    text = written("Practitioner?_summary=text").json["entry"][0]["resource"]
    assert set(text) == {"resourceType", "id", "meta", "text"}
    assert written("Practitioner?_summary=maybe").status_code == 400


def test_elements_keep_what_is_asked_and_what_is_mandatory(search):
    bundle = search("Observation?_id=obs-petrova-glucose&_elements=subject"
                    "&_include=Observation:patient").json
    observation, patient = (e["resource"] for e in bundle["entry"])
    assert set(observation) == {"resourceType", "id", "meta", "subject", "status", "code"}
    assert observation["meta"]["tag"][-1]["code"] == "SUBSETTED"
    assert patient == load_fixture("valid/patient-petrova.json") | {"meta": patient["meta"]}
    choice = search("Immunization?_elements=lotNumber").json["entry"][0]["resource"]
    assert "occurrenceDateTime" in choice
    assert "lotNumber" in choice
    assert "route" not in choice
    value = search("Observation?_elements=value").json["entry"][0]["resource"]
    assert "valueQuantity" in value
    assert "referenceRange" not in value
    assert search("Observation?_elements=Patient.name").status_code == 400
    assert search("Observation?_elements=value&_summary=true").status_code == 400


# --- _include and _revinclude ----------------------------------------------------------

def test_include_practitioner_and_organization_of_roles(search):
    bundle = search("PractitionerRole?_include=PractitionerRole:practitioner"
                    "&_include=PractitionerRole:organization&_sort=_id").json
    assert matched(bundle) == ["role-ivanova-therapist", "role-sokolov-gp"]
    assert sorted(matched(bundle, "include")) == ["org-msk-clinic", "org-spb-clinic",
                                                  "prac-ivanova", "prac-sokolov"]
    assert bundle["total"] == 2
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"].endswith(f"/fhir/{resource['resourceType']}/{resource['id']}")


def test_include_with_a_target_type_and_no_duplicates(search):
    bundle = search("DiagnosticReport?_include=DiagnosticReport:performer:Practitioner"
                    "&_include=DiagnosticReport:result").json
    assert sorted(matched(bundle, "include")) == [
        "obs-petrova-glucose", "obs-petrova-hemoglobin", "obs-petrova-leukocytes",
        "prac-ivanova"]
    both = search("Organization?_include=Organization:partof").json
    assert sorted(matched(both)) == ["org-msk-clinic", "org-msk-ip-dental", "org-msk-lab-dept",
                                     "org-spb-clinic"]
    assert matched(both, "include") == []          # the parent is a match already


def test_revinclude_roles_of_practitioners(search):
    bundle = search(f"Practitioner?identifier={SNILS}|16390452773"
                    "&_revinclude=PractitionerRole:practitioner").json
    assert matched(bundle) == ["prac-sokolov"]
    assert matched(bundle, "include") == ["role-sokolov-gp"]
    reports = search("Patient?_id=pat-petrova&_revinclude=DiagnosticReport:patient"
                     "&_revinclude=Observation:subject:Patient").json
    assert sorted(matched(reports, "include")) == [
        "dr-petrova-lab", "dr-petrova-periodic-exam", "obs-petrova-glucose",
        "obs-petrova-hemoglobin", "obs-petrova-leukocytes"]


def test_includes_are_limited_per_page_and_the_bundle_says_so(search, monkeypatch):
    from gateway.search import query
    monkeypatch.setattr(query, "INCLUDE_LIMIT", 2)
    bundle = search("DiagnosticReport?_id=dr-petrova-lab&_include=DiagnosticReport:result"
                    "&_include=DiagnosticReport:patient").json
    assert matched(bundle, "include") == ["obs-petrova-glucose", "obs-petrova-hemoglobin"]
    outcome = bundle["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    assert outcome["resource"]["issue"][0]["code"] == "too-costly"


@pytest.mark.parametrize("query", [
    "PractitionerRole?_include=PractitionerRole:bogus",
    "PractitionerRole?_include=Practitioner:practitioner",
    "PractitionerRole?_include=PractitionerRole:practitioner:Organization",
    "PractitionerRole?_include=*",
    "PractitionerRole?_include:iterate=PractitionerRole:organization",
    "Practitioner?_revinclude=PractitionerRole:organization",
    "Practitioner?_revinclude=Immunization:patient",
])
def test_an_include_that_is_not_offered_is_400(search, query):
    response = search(query)
    assert response.status_code == 400
    assert response.json["issue"][0]["code"] == "not-supported"


# --- strict and lenient handling -------------------------------------------------------

def test_an_unknown_parameter_is_400_naming_every_one(search):
    response = search("Practitioner?bogus=1&name:fuzzy=x&gender=female&_has:Patient=x")
    assert response.status_code == 400
    issues = response.json["issue"]
    assert [i["expression"] for i in issues] == [["bogus"], ["name:fuzzy"], ["_has:Patient"]]
    assert all(i["severity"] == "error" and i["code"] == "not-supported" for i in issues)
    assert all(i["details"]["text"] for i in issues)


def test_with_lenient_handling_unknown_parameters_are_ignored_and_reported(search):
    response = search("Practitioner?bogus=1&gender=female&name:fuzzy=x",
                      Prefer="return=representation, handling=lenient")
    assert response.status_code == 200
    bundle = response.json
    assert matched(bundle) == ["prac-ivanova"]
    assert bundle["total"] == 1
    outcome = bundle["entry"][-1]
    assert outcome["search"] == {"mode": "outcome"}
    assert [i["expression"] for i in outcome["resource"]["issue"]] == [["bogus"],
                                                                       ["name:fuzzy"]]
    assert {i["severity"] for i in outcome["resource"]["issue"]} == {"warning"}
    assert "bogus" not in link(bundle, "self")
    assert "gender=female" in link(bundle, "self")


def test_strict_handling_is_the_default_and_can_be_asked(search):
    assert search("Practitioner?bogus=1", Prefer="handling=strict").status_code == 400


def test_an_empty_parameter_is_ignored(found):
    assert sorted(found("Practitioner?name=&gender=")) == ["prac-ivanova", "prac-sokolov"]


# --- POST _search ----------------------------------------------------------------------

def test_post_search_takes_a_form(client, auth, loaded):
    response = client.post("/fhir/PractitionerRole/_search?_count=1",
                           data={"practitioner.identifier": f"{SNILS}|14831576274",
                                 "_include": "PractitionerRole:organization"},
                           headers={"Authorization": auth["Authorization"]})
    assert response.status_code == 200
    assert matched(response.json) == ["role-ivanova-therapist"]
    assert matched(response.json, "include") == ["org-msk-clinic"]
    xml = client.post("/fhir/Organization/_search", data={"_format": "xml", "_count": "1"},
                      headers={"Authorization": auth["Authorization"]})
    assert xml.content_type.startswith("application/fhir+xml")


def test_post_search_needs_a_form_body(client, auth):
    response = client.post("/fhir/Practitioner/_search", data='{"name": "x"}', headers=auth)
    assert response.status_code == 415


def test_search_needs_a_token_and_a_known_type(client, auth):
    assert client.get("/fhir/Practitioner").status_code == 401
    assert client.get("/fhir/Encounter", headers=auth).status_code == 404


# --- XML -------------------------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "PractitionerRole?_include=PractitionerRole:practitioner&_include=PractitionerRole:"
    "organization&_count=1",
    "DiagnosticReport?_include=DiagnosticReport:result&_summary=true",
    "Immunization?_elements=lotNumber&bogus=1&_count=5000",
    "Observation?_summary=text&_total=none",
    "Organization?_summary=count",
    "Patient?name=нет-такого",
])
def test_searchset_xml_is_valid_against_the_official_schema(search, fhir_schema, query):
    response = search(query, Accept="application/fhir+xml", Prefer="handling=lenient")
    assert response.status_code == 200
    assert response.content_type.startswith("application/fhir+xml")
    document = etree.fromstring(response.data)
    fhir_schema.assertValid(document)
    assert document.xpath("/f:Bundle/f:type/@value",
                          namespaces={"f": "http://hl7.org/fhir"}) == ["searchset"]


def test_a_search_error_in_xml_is_a_valid_operation_outcome(search, fhir_schema):
    response = search("Practitioner?bogus=1&_format=xml")
    assert response.status_code == 400
    fhir_schema.assertValid(etree.fromstring(response.data))


# --- hostile input ---------------------------------------------------------------------

HOSTILE = [
    "' OR '1'='1", "' OR 1=1 --", "\" OR \"\"=\"", "'; DROP TABLE resources; --",
    "%", "_", "%%", "\\", "\\%", "иван%", "%иван", "_ванова", "ив_нова", "' UNION SELECT * "
    "FROM clients --", "1; SELECT pg_sleep(5)", "*", "$", "||", "|", "\\|", "\\,", ",",
    "Иванова'", "😀", "ё", "\u202e", "x" * 5000, "null", "true", "()", "[]", "{}", "<a>&amp;",
]
HOSTILE_PARAMS = ["name", "family:exact", "family:contains", "identifier", "gender:not",
                  "_id", "birthdate", "_lastUpdated", "active:missing", "_sort", "_count",
                  "_total", "_summary", "_elements", "_include", "_revinclude", "_cursor"]


@pytest.mark.parametrize("param", HOSTILE_PARAMS)
def test_injection_strings_are_answered_normally_never_with_more_data(shared, search, param):
    for value in HOSTILE:
        response = search("Practitioner?" + urlencode({param: value}))
        assert response.status_code in (200, 400), (param, value, response.json)
        if response.status_code == 200 and param not in ("gender:not", "_sort", "_elements",
                                                         "_summary", "_total"):
            assert matched(response.json) == [], (param, value)
    with shared.app.extensions["gateway"].engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(resources)).scalar_one() == 17


@pytest.mark.parametrize(("resource_type", "name", "value"), [
    ("PractitionerRole", "practitioner", "' OR 1=1--"),
    ("PractitionerRole", "practitioner", "Practitioner/' OR '1'='1"),
    ("PractitionerRole", "practitioner.name", "%"),
    ("PractitionerRole", "practitioner.identifier", "%|%"),
    ("PractitionerRole", "organization.name:contains", "_"),
    ("Observation", "value-quantity", "1|%|_"),
    ("Observation", "value-quantity", "gt0|' OR 1=1|x"),
    ("Practitioner", "name'--", "x"),
    ("Practitioner", "name\x00", "x"),
    ("Practitioner", "name", "\x00"),
    ("Practitioner", "name", "\x1b[31m"),
    ("Practitioner", "name;DROP TABLE resources", "x"),
])
def test_injection_in_references_chains_quantities_and_names(search, resource_type,
                                                            name, value):
    response = search(f"{resource_type}?{urlencode({name: value})}")
    assert response.status_code in (200, 400), response.json
    if response.status_code == 200:
        assert matched(response.json) == []


@pytest.mark.parametrize("raw", ["name=%C0%AF", "%FF=1", "name=%E2%80", "name=%"])
def test_undecodable_query_strings_are_answered_normally(search, raw):
    response = search(f"Practitioner?{raw}")
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert matched(response.json) == []


# --- the CapabilityStatement -----------------------------------------------------------

SAMPLE_VALUES = {"token": "x", "string": "x", "date": "2020", "reference": "X/1",
                 "quantity": "1"}


def test_metadata_lists_exactly_the_search_that_is_served(shared):
    client, auth = shared.client, shared.headers
    statement = client.get("/fhir/metadata").json
    for entry in statement["rest"][0]["resource"]:
        if entry["type"] == "AuditEvent":       # the audit trail: tests/test_audit.py
            continue
        spec = RESOURCE_TYPES[entry["type"]]
        assert "search-type" in [i["code"] for i in entry["interaction"]]
        assert [p["name"] for p in entry["searchParam"]] == [p.name for p in spec.search]
        for param in entry["searchParam"]:
            value = SAMPLE_VALUES[param["type"]]
            response = client.get(f"/fhir/{entry['type']}?{param['name']}={value}", headers=auth)
            assert response.status_code == 200, (entry["type"], param, response.json)
        for include in entry.get("searchInclude", []):
            assert client.get(f"/fhir/{entry['type']}?_include={include}",
                              headers=auth).status_code == 200
        for include in entry.get("searchRevInclude", []):
            assert client.get(f"/fhir/{entry['type']}?_revinclude={include}",
                              headers=auth).status_code == 200
        listed = {p["name"] for p in entry["searchParam"]}
        for other in {p.name for t in RESOURCE_TYPES.values() for p in t.search} - listed:
            assert client.get(f"/fhir/{entry['type']}?{other}=x",
                              headers=auth).status_code == 400, (entry["type"], other)


def test_every_type_with_search_answers_a_searchset(client, auth, loaded):
    for name in RESOURCE_TYPES:
        assert searchable(name)
        bundle = client.get(f"/fhir/{name}", headers=auth).json
        assert bundle["resourceType"] == "Bundle"
        assert bundle["type"] == "searchset"
    assert client.get("/fhir/Provenance", headers=auth).json["total"] == 0
