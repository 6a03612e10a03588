"""The mock upstream, over real HTTP: what the gateway's delivery worker will meet.

Each test starts the mock with `serve_mock` on a free port, signs Bundles with keys
made by gateway.signing in a temporary directory, and talks to it with `requests`,
the way the delivery worker does. The protocol is docs/upstream-protocol.md.
"""
from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine
from werkzeug.serving import make_server

from gateway import signing
from gateway.mock_upstream import MockConfig, serve_mock
from gateway.mock_upstream.processing import MOSCOW
from gateway.mock_upstream.rules import add_working_days
from gateway.mock_upstream.store import metadata as mock_metadata

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "valid"
TIMEOUT = 5.0


# --- keys, resources, Bundles ---------------------------------------------------------

@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mock-keys")


@pytest.fixture(scope="module")
def signer(keys_dir) -> signing.Signer:
    return signing.generate_key(keys_dir)


@pytest.fixture
def start(tmp_path, keys_dir, signer):
    """start(**config) → a running mock on a free port; all are stopped afterwards."""
    servers = []

    def _start(database_url: str | None = None, **overrides):
        settings = {"database_url": database_url or
                    f"sqlite:///{tmp_path / f'mock-{len(servers)}.sqlite3'}",
                    "jwks": signing.jwks(keys_dir), "processing_delay_seconds": 0.05}
        settings.update(overrides)
        server = serve_mock(MockConfig(**settings))
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


def resource(name: str, version: str = "1", **changes) -> dict:
    content = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    content["meta"] = {"versionId": version}
    content.update(changes)
    return content


def put(content: dict) -> dict:
    reference = f"{content['resourceType']}/{content['id']}"
    return {"fullUrl": reference, "resource": content,
            "request": {"method": "PUT", "url": reference}}


def delete(reference: str) -> dict:
    return {"fullUrl": reference, "request": {"method": "DELETE", "url": reference}}


def bundle(*entries: dict, identifier: str | None = None) -> dict:
    return {"resourceType": "Bundle", "type": "transaction",
            "identifier": {"system": "urn:ietf:rfc:3986",
                           "value": identifier or f"urn:uuid:{uuid.uuid4()}"},
            "entry": list(entries)}


def signed(content: dict, signer: signing.Signer) -> dict:
    return signing.sign_bundle(content, signer, {"reference": "Organization/org-msk-clinic"},
                               datetime.now(UTC))


def post(server, destination: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(f"{server.url}/{destination}", data=json.dumps(body).encode(),
                         headers={"Content-Type": "application/fhir+json"},
                         timeout=kwargs.pop("timeout", TIMEOUT), **kwargs)


def completed(server, ticket: str) -> dict:
    """Poll the ticket until the mock has processed it."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        answer = requests.get(f"{server.url}/_tickets/{ticket}", timeout=TIMEOUT)
        assert answer.status_code == 200
        if answer.json()["status"] == "completed":
            return answer.json()
        time.sleep(0.02)
    raise AssertionError(f"ticket {ticket} still processing")


def submit(server, destination: str, content: dict, signer) -> dict:
    """Send a signed Bundle and return the completed ticket."""
    response = post(server, destination, signed(content, signer))
    assert response.status_code == 202, response.text
    return completed(server, response.json()["ticket"])


def stats(server) -> dict:
    return requests.get(f"{server.root}/_mock/stats", timeout=TIMEOUT).json()


def only_issue(entry: dict) -> dict:
    issues = entry["outcome"]["issue"]
    assert len(issues) == 1, issues
    return issues[0]


def register_org_and_ivanova(server, signer) -> None:
    assert submit(server, "frmo", bundle(put(resource("organization-msk-clinic"))),
                  signer)["entries"][0]["status"] == "approved"
    assert submit(server, "frmr", bundle(put(resource("practitioner-ivanova"))),
                  signer)["entries"][0]["status"] == "approved"


# --- receiving and processing ---------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def mock_database(request, tmp_path) -> str:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mock.sqlite3'}"
        return
    url = request.getfixturevalue("postgres_database")
    yield url
    engine = create_engine(url)
    mock_metadata.drop_all(engine)  # the session's database is shared with other tests
    engine.dispose()


def test_signed_bundle_is_accepted_then_approved(start, signer, mock_database):
    server = start(database_url=mock_database, processing_delay_seconds=0.3)
    org = resource("organization-msk-clinic")
    response = post(server, "frmo", signed(bundle(put(org)), signer))

    assert response.status_code == 202
    ticket = response.json()["ticket"]
    assert response.json() == {"ticket": ticket, "status": "processing"}
    assert response.headers["Content-Location"] == f"{server.url}/_tickets/{ticket}"
    waiting = requests.get(response.headers["Content-Location"], timeout=TIMEOUT)
    assert waiting.json()["status"] == "processing"
    assert int(waiting.headers["Retry-After"]) >= 1

    answer = completed(server, ticket)
    assert answer["entries"] == [{"reference": "Organization/org-msk-clinic", "version": "1",
                                  "status": "approved"}]
    registry = requests.get(f"{server.root}/_mock/registry/frmo", timeout=TIMEOUT).json()
    assert [r["reference"] for r in registry["resources"]] == ["Organization/org-msk-clinic"]
    records = requests.get(f"{server.root}/_mock/records", timeout=TIMEOUT).json()["records"]
    assert [(r["reference"], r["version"], r["count"]) for r in records] == [
        ("Organization/org-msk-clinic", "1", 1)]
    counts = stats(server)
    assert (counts["bundles_received"], counts["bundles_unique"], counts["records_applied"],
            counts["approved"], counts["tickets_processing"]) == (1, 1, 1, 1, 0)


def test_unknown_ticket_is_404(start):
    server = start()
    response = requests.get(f"{server.url}/_tickets/no-such-ticket", timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_unsigned_tampered_and_unknown_key_are_401(start, signer, tmp_path):
    server = start()
    org = resource("organization-msk-clinic")
    tampered = signed(bundle(put(org)), signer)
    tampered["entry"][0]["resource"]["name"] = "Другая организация"
    stranger = signing.generate_key(tmp_path / "stranger")

    for body in (bundle(put(org)), tampered, signed(bundle(put(org)), stranger)):
        response = post(server, "frmo", body)
        assert response.status_code == 401
        issue = response.json()["issue"][0]
        assert issue["code"] == "security"
        assert issue["expression"] == ["Bundle.signature"]
        assert issue["details"]["text"]
        assert issue["diagnostics"]

    counts = stats(server)
    assert counts["signature_failures"] == 3
    assert counts["bundles_unique"] == 0


def test_a_rotated_key_is_fetched_from_the_jwks_url(start, tmp_path):
    """The mock rereads the gateway's JWKS when a Bundle names a kid it does not know."""
    keys = tmp_path / "rotating"
    first = signing.generate_key(keys)
    fetches = []

    def jwks_app(environ, start_response):
        fetches.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(signing.jwks(keys)).encode()]

    jwks_server = make_server("127.0.0.1", 0, jwks_app, threaded=True)
    thread = threading.Thread(target=jwks_server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{jwks_server.server_port}/.well-known/jwks.json"
        server = start(jwks=url)
        org = resource("organization-msk-clinic")
        assert post(server, "frmo", signed(bundle(put(org)), first)).status_code == 202
        assert len(fetches) == 1

        second = signing.generate_key(keys)
        assert post(server, "frmo", signed(bundle(put(org)), second)).status_code == 202
        assert post(server, "frmo", signed(bundle(put(org)), first)).status_code == 202
        assert fetches == ["/.well-known/jwks.json"] * 2
    finally:
        jwks_server.shutdown()
        jwks_server.server_close()
        thread.join(TIMEOUT)


def test_a_repeated_identifier_gets_the_original_answer_and_nothing_twice(start, signer):
    server = start()
    body = signed(bundle(put(resource("organization-msk-clinic"))), signer)
    first = post(server, "frmo", body)
    completed(server, first.json()["ticket"])

    again = post(server, "frmo", body)

    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Content-Location"] == first.headers["Content-Location"]
    time.sleep(0.2)  # time enough to (wrongly) apply it again
    counts = stats(server)
    assert (counts["duplicates_ignored"], counts["records_applied"],
            counts["applications_total"], counts["bundles_unique"]) == (1, 1, 1, 1)


def test_parallel_resends_of_one_bundle_make_one_ticket(start, signer):
    server = start()
    body = signed(bundle(put(resource("organization-msk-clinic"))), signer)
    answers: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: answers.append(post(server, "frmo", body)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)

    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["ticket"] for a in answers}) == 1
    completed(server, answers[0].json()["ticket"])
    counts = stats(server)
    assert (counts["bundles_unique"], counts["duplicates_ignored"],
            counts["records_applied"]) == (1, 7, 1)


@pytest.mark.parametrize(("change", "expression"), [
    ({"type": "batch"}, "Bundle.type"),
    ({"identifier": None}, "Bundle.identifier"),
    ({"entry": []}, "Bundle.entry"),
    ({"entry": [{"request": {"method": "POST", "url": "Organization"}}]},
     "Bundle.entry[0].request.method"),
    ({"entry": [{"request": {"method": "PUT", "url": "Organization/x"}}]},
     "Bundle.entry[0].resource"),
])
def test_an_unacceptable_bundle_is_400(start, signer, change, expression):
    server = start()
    body = bundle(put(resource("organization-msk-clinic")))
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}

    response = post(server, "frmo", signed(body, signer))

    assert response.status_code == 400
    assert expression in [e for i in response.json()["issue"] for e in i["expression"]]
    assert stats(server)["bundles_unique"] == 0


# --- business rules ---------------------------------------------------------------------------

def test_role_for_an_unregistered_organization_is_rejected(start, signer):
    server = start()
    answer = submit(server, "frmr", bundle(put(resource("practitioner-ivanova")),
                                           put(resource("practitionerrole-ivanova-therapist"))),
                    signer)

    practitioner, role = answer["entries"]
    assert practitioner["status"] == "approved"
    assert role["status"] == "rejected"
    issue = only_issue(role)
    assert issue["expression"] == ["PractitionerRole.organization"]
    assert "ФРМО" in issue["details"]["text"]
    assert "not registered in frmo" in issue["diagnostics"]


def test_role_for_an_unregistered_practitioner_is_rejected(start, signer):
    server = start()
    submit(server, "frmo", bundle(put(resource("organization-msk-clinic"))), signer)
    answer = submit(server, "frmr", bundle(put(resource("practitionerrole-ivanova-therapist"))),
                    signer)
    assert answer["entries"][0]["status"] == "rejected"
    assert only_issue(answer["entries"][0])["expression"] == ["PractitionerRole.practitioner"]


def test_role_after_its_organization_and_practitioner_is_approved(start, signer):
    server = start()
    register_org_and_ivanova(server, signer)
    answer = submit(server, "frmr", bundle(put(resource("practitionerrole-ivanova-therapist"))),
                    signer)
    assert answer["entries"] == [{"reference": "PractitionerRole/role-ivanova-therapist",
                                  "version": "1", "status": "approved"}]


def test_the_same_person_post_and_organization_under_another_role_id_is_rejected(start, signer):
    server = start()
    register_org_and_ivanova(server, signer)
    submit(server, "frmr", bundle(put(resource("practitionerrole-ivanova-therapist"))), signer)

    copy_role = resource("practitionerrole-ivanova-therapist", id="role-ivanova-again")
    updated = resource("practitionerrole-ivanova-therapist", version="2",
                       period={"start": "2019-09-03"})
    answer = submit(server, "frmr", bundle(put(copy_role), put(updated)), signer)

    duplicate, update = answer["entries"]
    assert duplicate["status"] == "rejected"
    issue = only_issue(duplicate)
    assert issue["expression"] == ["PractitionerRole.code[0].coding[0].code"]
    assert "role-ivanova-therapist" in issue["details"]["text"]
    assert update == {"reference": "PractitionerRole/role-ivanova-therapist", "version": "2",
                      "status": "approved"}


def test_a_deleted_organization_no_longer_carries_roles(start, signer):
    server = start()
    register_org_and_ivanova(server, signer)
    answer = submit(server, "frmo", bundle(delete("Organization/org-msk-clinic")), signer)
    assert answer["entries"][0]["status"] == "approved"
    registry = requests.get(f"{server.root}/_mock/registry/frmo", timeout=TIMEOUT).json()
    assert registry["resources"] == []

    answer = submit(server, "frmr", bundle(put(resource("practitionerrole-ivanova-therapist"))),
                    signer)
    assert only_issue(answer["entries"][0])["expression"] == ["PractitionerRole.organization"]


def test_a_delete_names_its_version_in_if_match(start, signer):
    """The protocol's DELETE carries no resource; W/"n" in request.ifMatch gives the version."""
    server = start()
    submit(server, "frmo", bundle(put(resource("organization-msk-clinic"))), signer)
    removal = delete("Organization/org-msk-clinic")
    removal["request"]["ifMatch"] = 'W/"2"'

    answer = submit(server, "frmo", bundle(removal), signer)

    assert answer["entries"] == [{"reference": "Organization/org-msk-clinic", "version": "2",
                                  "status": "approved"}]
    records = requests.get(f"{server.root}/_mock/records", timeout=TIMEOUT).json()["records"]
    assert [(r["version"], r["method"], r["count"]) for r in records] == [
        ("1", "PUT", 1), ("2", "DELETE", 1)]


def test_inn_and_ogrn_of_different_regions_are_rejected(start, signer):
    """The mock's own cross-check: a Moscow ОГРН with a Saint Petersburg ИНН."""
    server = start()
    org = resource("organization-msk-clinic")
    spb_inn = resource("organization-spb-clinic")["identifier"][1]["value"]
    org["identifier"][1]["value"] = spb_inn

    answer = submit(server, "frmo", bundle(put(org)), signer)

    issue = only_issue(answer["entries"][0])
    assert answer["entries"][0]["status"] == "rejected"
    assert issue["expression"] == ["Organization.identifier[2].value"]
    assert "78" in issue["details"]["text"]
    assert "77" in issue["details"]["text"]


def test_check_digits_are_verified_again(start, signer):
    server = start()
    practitioner = resource("practitioner-ivanova")
    practitioner["identifier"][0]["value"] = "14831576275"   # СНИЛС, last digit changed

    answer = submit(server, "frmr", bundle(put(practitioner)), signer)

    issue = only_issue(answer["entries"][0])
    assert issue["expression"] == ["Practitioner.identifier[0].value"]
    assert "СНИЛС" in issue["details"]["text"]
    assert "14831576275" not in json.dumps(answer, ensure_ascii=False)


def test_clarification_is_asked_once_per_resource(start, signer):
    server = start(clarification_rate=1.0)
    first = submit(server, "frmo", bundle(put(resource("organization-msk-clinic"))), signer)

    entry = first["entries"][0]
    assert entry["status"] == "clarification_required"
    assert entry["clarification_due"] == _three_working_days_after(datetime.now(MOSCOW).date())
    assert only_issue(entry)["expression"] == ["Organization.address[0]"]

    second = submit(server, "frmo", bundle(put(resource("organization-msk-clinic",
                                                        version="2"))), signer)
    assert second["entries"][0]["status"] == "approved"
    assert stats(server)["clarification_required"] == 1


def _three_working_days_after(day: date) -> str:
    left = 3
    while left:
        day += timedelta(days=1)
        left -= day.weekday() < 5
    return day.isoformat()


def test_working_days_skip_the_weekend():
    assert add_working_days(date(2026, 11, 20), 3) == date(2026, 11, 25)  # Fri → Wed
    assert add_working_days(date(2026, 11, 23), 3) == date(2026, 11, 26)  # Mon → Thu


# --- misbehaviour -------------------------------------------------------------------------------

def _statuses(server, body: dict, tries: int) -> list[int]:
    """POST the same Bundle and poll its ticket, `tries` times each; the status codes."""
    ticket = uuid.uuid4().hex
    seen = []
    for _ in range(tries):
        response = post(server, "frmo", body)
        seen.append(response.status_code)
        if response.status_code == 202:
            ticket = response.json()["ticket"]
    for _ in range(tries):
        seen.append(requests.get(f"{server.url}/_tickets/{ticket}",
                                 timeout=TIMEOUT).status_code)
    return seen


def test_faults_are_the_same_for_the_same_seed(start, signer):
    body = signed(bundle(put(resource("organization-msk-clinic"))), signer)
    settings = {"fault_rate": 0.6, "timeout_seconds": 0.05}

    first = _statuses(start(seed=7, **settings), body, 12)
    again = _statuses(start(seed=7, **settings), body, 12)
    other = _statuses(start(seed=8, **settings), body, 12)

    assert first == again
    assert first != other
    assert {500, 503, 429, 504} & set(first)
    assert 202 in first


def test_429_and_503_say_when_to_retry(start, signer):
    server = start(fault_rate=1.0, timeout_share=0.0)
    seen: dict[int, requests.Response] = {}
    for _ in range(40):
        response = post(server, "frmo", bundle(put(resource("organization-msk-clinic"))))
        seen.setdefault(response.status_code, response)
    assert {429, 503} <= set(seen)
    assert seen[429].headers["Retry-After"] == "1"
    assert seen[503].headers["Retry-After"] == "1"
    assert seen[503].json()["resourceType"] == "OperationOutcome"
    faults = stats(server)["faults_injected"]
    assert faults["timeout"] == 0
    assert faults["429"] >= 1
    assert faults["503"] >= 1


def test_a_timeout_fault_outlasts_the_client(start, signer):
    server = start(fault_rate=1.0, timeout_share=1.0, timeout_seconds=0.5)
    body = signed(bundle(put(resource("organization-msk-clinic"))), signer)
    with pytest.raises(requests.Timeout):
        post(server, "frmo", body, timeout=0.2)
    assert post(server, "frmo", body).status_code == 504
    assert stats(server)["bundles_unique"] == 0


def test_a_dropped_connection_still_applies_the_bundle_once(start, signer):
    server = start(drop_after_receive=1.0)
    body = signed(bundle(put(resource("organization-msk-clinic"))), signer)

    with pytest.raises(requests.ConnectionError):
        post(server, "frmo", body)

    records = []
    deadline = time.monotonic() + TIMEOUT
    while not records and time.monotonic() < deadline:
        records = requests.get(f"{server.root}/_mock/records", timeout=TIMEOUT).json()["records"]
        time.sleep(0.02)
    assert [(r["reference"], r["count"], r["status"]) for r in records] == [
        ("Organization/org-msk-clinic", 1, "approved")]

    resent = post(server, "frmo", copy.deepcopy(body))
    assert resent.status_code == 202
    assert resent.json()["ticket"] == records[0]["ticket"]
    assert completed(server, records[0]["ticket"])["entries"][0]["status"] == "approved"
    counts = stats(server)
    assert (counts["connections_dropped"], counts["duplicates_ignored"],
            counts["records_applied"]) == (1, 1, 1)
