"""Streaming responses: NDJSON search and Bundles written entry by entry.

A regional system may ask a whole register as `GET /fhir/{type}?_format=ndjson`:
it gets every match (page after page, in one snapshot) one resource per line,
and the gateway never holds more than a page. Search and history Bundles are
streamed too, and must be byte for byte what rendering them at once gives.
"""
from __future__ import annotations

import json

import pytest
from lxml import etree

from gateway import fhir, search
from tests.delivery_data import organization, practitioner, role

NDJSON = "application/fhir+ndjson"


@pytest.fixture
def register(client, auth):
    """Seven practitioners, two organizations, one role at each for the first two."""
    for resource in [organization(1), organization(2), *(practitioner(n) for n in range(7)),
                     role(1, 0, 1), role(2, 1, 2)]:
        response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                              json=resource, headers=auth)
        assert response.status_code == 201, response.json


@pytest.fixture
def small_pages(monkeypatch):
    """Pages of three rows, so a short register already takes several pages."""
    monkeypatch.setattr(search, "STREAM_PAGE", 3)


def lines(response) -> list[dict]:
    assert response.status_code == 200, response.data
    return [json.loads(line) for line in response.data.decode("utf-8").splitlines()]


def test_ndjson_search_streams_every_match_across_pages(client, auth, register, small_pages):
    response = client.get("/fhir/Practitioner?_format=ndjson", headers=auth)
    assert response.is_streamed
    assert response.mimetype == NDJSON
    assert [r["id"] for r in lines(response)] == [f"prac-{n}" for n in range(7)]


def test_ndjson_is_also_chosen_by_accept(client, auth, register):
    response = client.get("/fhir/Organization", headers={**auth, "Accept": "application/ndjson"})
    assert response.mimetype == "application/ndjson"
    assert {r["id"] for r in lines(response)} == {"org-1", "org-2"}


def test_ndjson_search_keeps_the_criteria_sort_and_count(client, auth, register, small_pages):
    sorted_ = lines(client.get("/fhir/Practitioner?_format=ndjson&_sort=-_id", headers=auth))
    assert [r["id"] for r in sorted_] == [f"prac-{n}" for n in reversed(range(7))]
    capped = lines(client.get("/fhir/Practitioner?_format=ndjson&_count=4", headers=auth))
    assert len(capped) == 4
    one = lines(client.get("/fhir/Practitioner?_format=ndjson&_id=prac-3", headers=auth))
    assert [r["id"] for r in one] == ["prac-3"]


def test_ndjson_search_adds_each_included_resource_once(client, auth, register, small_pages):
    found = lines(client.get("/fhir/PractitionerRole?_format=ndjson"
                             "&_include=PractitionerRole:organization", headers=auth))
    assert [f"{r['resourceType']}/{r['id']}" for r in found] == [
        "PractitionerRole/role-1", "PractitionerRole/role-2",
        "Organization/org-1", "Organization/org-2"]


def test_a_wrong_ndjson_search_is_refused_before_streaming(client, auth):
    response = client.get("/fhir/Practitioner?_format=ndjson&colour=red", headers=auth)
    assert response.status_code == 400
    assert response.json["resourceType"] == "OperationOutcome"
    counted = client.get("/fhir/Practitioner?_format=ndjson&_summary=count", headers=auth)
    assert counted.status_code == 400


def test_ndjson_is_offered_only_where_it_makes_sense(client, auth, register):
    assert client.get("/fhir/Practitioner/prac-1?_format=ndjson",
                      headers=auth).status_code == 406
    assert client.get("/fhir/_history?_format=ndjson", headers=auth).status_code == 406


@pytest.mark.parametrize("url", ["/fhir/Practitioner?_count=3",
                                 "/fhir/PractitionerRole?_include=PractitionerRole:organization",
                                 "/fhir/_history?_count=4"])
@pytest.mark.parametrize("media_type", ["application/fhir+json", "application/fhir+xml"])
def test_streamed_bundles_are_what_rendering_at_once_gives(client, auth, register, url,
                                                           media_type, fhir_schema):
    response = client.get(url, headers={**auth, "Accept": media_type})
    assert response.status_code == 200
    assert response.is_streamed
    if media_type.endswith("xml"):
        document = etree.fromstring(response.data)
        fhir_schema.assertValid(document)
        whole = fhir.to_xml_bytes(fhir.parse_xml(response.data))
    else:
        whole = fhir.to_json_bytes(json.loads(response.data))
    assert response.data == whole
