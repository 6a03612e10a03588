"""Bad and hostile input gets a clear OperationOutcome, never a 500, and loses nothing
that was already accepted."""
from __future__ import annotations

import json
import socket

import pytest
from lxml import etree

from gateway import fhir
from tests.conftest import load_fixture

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Practitioner xmlns="http://hl7.org/fhir"><name><family value="&lol3;"/></name></Practitioner>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Practitioner xmlns="http://hl7.org/fhir"><name><family value="&xxe;"/></name></Practitioner>"""

NETWORK_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Practitioner SYSTEM "http://127.0.0.1:9/evil.dtd">
<Practitioner xmlns="http://hl7.org/fhir"><active value="true"/></Practitioner>"""


@pytest.fixture
def accepted(post) -> dict:
    """A resource stored before the hostile requests arrive."""
    resource = load_fixture("valid/organization-msk-clinic.json")
    response = post(resource)
    assert response.status_code == 201
    return response.json


def _outcome(response) -> dict:
    assert response.json["resourceType"] == "OperationOutcome"
    issue = response.json["issue"][0]
    assert issue["details"]["text"]
    assert issue["diagnostics"]
    return issue


def _send(client, auth, body: bytes, content_type: str, path: str = "/fhir/Practitioner"):
    return client.post(path, data=body, headers={**auth, "Content-Type": content_type})


@pytest.mark.parametrize("body", [
    b"{", b'{"resourceType": "Practitioner",}', b"not json at all", b"\xff\xfe\x00garbage",
    b"[1, 2, 3]", b'"just a string"', b"   ",
])
def test_malformed_json_is_400(client, auth, body):
    response = _send(client, auth, body, "application/fhir+json")
    assert response.status_code == 400
    assert _outcome(response)["code"] == "structure"


@pytest.mark.parametrize("body", [
    b"<Practitioner xmlns='http://hl7.org/fhir'><name>",
    b"<not-closed",
    b"<Practitioner><active value='true'/></Practitioner>",          # no FHIR namespace
    b"<Unknown xmlns='http://hl7.org/fhir'/>",
])
def test_malformed_xml_is_400(client, auth, body):
    response = _send(client, auth, body, "application/fhir+xml")
    assert response.status_code == 400
    _outcome(response)


NETWORK_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE p [<!ENTITY net SYSTEM "http://127.0.0.1:9/">]>
<Practitioner xmlns="http://hl7.org/fhir"><name><family value="&net;"/></name></Practitioner>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, NETWORK_DTD, NETWORK_ENTITY],
                         ids=["billion-laughs", "external-entity", "network-dtd",
                              "network-entity"])
def test_xml_with_doctype_or_entities_is_refused_without_resolving(client, auth, body):
    response = _send(client, auth, body, "application/fhir+xml")
    assert response.status_code == 400
    issue = _outcome(response)
    assert "DOCTYPE" in issue["diagnostics"]
    assert "root:" not in response.get_data(as_text=True)


@pytest.fixture
def listener():
    """A local port that records whether anything connected to it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)

    def connected() -> bool:
        try:
            server.accept()[0].close()
        except BlockingIOError:
            return False
        return True

    yield server.getsockname()[1], connected
    server.close()


def _entities(port: int, encoding: str) -> bytes:
    """An internal, a file and a network entity plus an external DTD, in `encoding`
    (UTF-16 hides the declarations from a byte search: the parser itself must hold)."""
    text = (f'<?xml version="1.0" encoding="{encoding}"?>\n'
            f'<!DOCTYPE Practitioner SYSTEM "http://127.0.0.1:{port}/evil.dtd" [\n'
            f' <!ENTITY file SYSTEM "file:///etc/passwd">\n'
            f' <!ENTITY net SYSTEM "http://127.0.0.1:{port}/x">\n'
            f' <!ENTITY lol "lol">\n]>\n'
            '<Practitioner xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
            '<div xmlns="http://www.w3.org/1999/xhtml">&file;&net;&lol;&lol;</div></text>'
            '</Practitioner>')
    return text.encode(encoding)


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16"])
def test_xml_entities_are_never_resolved_nor_fetched(client, auth, listener, encoding):
    port, connected = listener
    body = _entities(port, encoding)
    response = _send(client, auth, body, "application/fhir+xml")
    assert response.status_code == 400
    assert "DOCTYPE" in _outcome(response)["diagnostics"]
    assert "root:" not in response.get_data(as_text=True)
    # the parser alone, without the gateway's refusal of DOCTYPEs, resolves nothing either
    root = etree.fromstring(body, fhir.safe_xml_parser())
    assert b"root:" not in etree.tostring(root)
    assert b"lollol" not in etree.tostring(root)
    assert not connected()


def test_xml_with_wrong_structure_is_422_with_paths(client, auth):
    body = (b"<Practitioner xmlns='http://hl7.org/fhir'><birthDate value='yesterday'/>"
            b"</Practitioner>")
    response = _send(client, auth, body, "application/fhir+xml")
    assert response.status_code == 422
    assert _outcome(response)["expression"] == ["Practitioner.birthDate"]


def test_deeply_nested_json_is_400_not_a_crash(client, auth):
    body = b'{"resourceType": "Practitioner", "extension": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = _send(client, auth, body, "application/fhir+json")
    assert response.status_code == 400
    assert "nesting" in _outcome(response)["diagnostics"]


def test_a_body_over_the_limit_is_413(client, auth):
    body = b'{"resourceType": "Practitioner", "id": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    response = _send(client, auth, body, "application/fhir+json")
    assert response.status_code == 413
    assert _outcome(response)["code"] == "too-long"


def test_the_body_limit_is_configurable(tmp_path, database_url):
    from gateway.app import create_app
    from gateway.store.clients import create_client
    app = create_app({"data_dir": str(tmp_path), "database_url": database_url,
                      "max_body_bytes": 1000})
    _, token = create_client(app.extensions["gateway"].engine, "t", "admin")
    resource = load_fixture("valid/practitioner-ivanova.json")
    response = app.test_client().post(
        "/fhir/Practitioner", data=json.dumps(resource),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    assert response.status_code == 413


@pytest.mark.parametrize(("field", "value", "expression"), [
    ("active", "yes", "Practitioner.active"),
    ("birthDate", 19850314, "Practitioner.birthDate"),
    ("name", {"family": "Иванова"}, "Practitioner.name"),
    ("identifier", [{"system": "urn:x", "value": 5}], "Practitioner.identifier[0].value"),
])
def test_wrong_json_types_are_422_naming_the_element(post, field, value, expression):
    resource = load_fixture("valid/practitioner-ivanova.json")
    resource[field] = value
    response = post(resource)
    assert response.status_code == 422
    assert [expression] in [i.get("expression") for i in response.json["issue"]]


def test_an_unknown_resource_type_in_the_body_is_refused(post):
    response = post({"resourceType": "Spaceship"}, path="/fhir/Practitioner")
    assert response.status_code == 422


def test_bad_requests_leave_accepted_data_intact(client, auth, accepted):
    for body, content_type in [(b"{", "application/fhir+json"),
                               (BILLION_LAUGHS, "application/fhir+xml"),
                               (b"[" * 10000, "application/fhir+json")]:
        client.put(f"/fhir/Organization/{accepted['id']}", data=body,
                   headers={**auth, "Content-Type": content_type})
    still = client.get(f"/fhir/Organization/{accepted['id']}", headers=auth)
    assert still.status_code == 200
    assert still.json == accepted


def test_an_invalid_update_does_not_replace_the_stored_version(client, auth, accepted):
    broken = {**accepted, "identifier": [{"system": "urn:oid:1.2.643.100.1",
                                          "value": "1027700132196"}]}
    response = client.put(f"/fhir/Organization/{accepted['id']}", data=json.dumps(broken),
                          headers=auth)
    assert response.status_code == 422
    assert client.get(f"/fhir/Organization/{accepted['id']}", headers=auth).json == accepted


def test_an_invalid_resource_id_in_the_url_is_400(client, auth, accepted):
    resource = {**accepted, "id": "bad id!"}
    response = client.put("/fhir/Organization/bad%20id!", data=json.dumps(resource),
                          headers=auth)
    assert response.status_code == 400


def test_a_malformed_if_match_is_400(client, auth, accepted):
    response = client.put(f"/fhir/Organization/{accepted['id']}", data=json.dumps(accepted),
                          headers={**auth, "If-Match": "yesterday"})
    assert response.status_code == 400
