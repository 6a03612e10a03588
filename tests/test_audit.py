"""The audit trail: every request that touches data leaves one hash-chained record.

Records carry who, role, organizations, action, operation, resource type and ids,
HTTP status, address and request id, with personal data masked; the admin reads
them as FHIR AuditEvents; `gateway audit verify` finds the first broken link.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select, update

from gateway.cli import main
from gateway.fhir import model_class
from gateway.store import audit as trail
from gateway.store.clients import create_client
from gateway.store.schema import audit_events
from tests.conftest import FHIR_JSON, load_fixture

PRACTITIONER = "valid/practitioner-ivanova.json"
MIS_ORGANIZATION = "1.2.643.5.1.13.13.12.2.77.7777"
SNILS_SYSTEM = "urn:oid:1.2.643.100.3"


@pytest.fixture
def engine(app):
    return app.extensions["gateway"].engine


def records(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            select(audit_events).order_by(audit_events.c.pk)).mappings()]


def last(engine) -> dict:
    return records(engine)[-1]


@pytest.fixture
def practitioner(put) -> dict:
    resource = load_fixture(PRACTITIONER)
    put(resource)
    return resource


@pytest.fixture
def mis_auth(engine) -> dict:
    _, token = create_client(engine, "МИС Поликлиника 1", "mis", [MIS_ORGANIZATION])
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


def audit_events_of(client, auth, query: str = "") -> list[dict]:
    response = client.get(f"/fhir/AuditEvent{query}", headers=auth)
    assert response.status_code == 200, response.json
    return [entry["resource"] for entry in response.json.get("entry", [])]


# --- what a request leaves ---------------------------------------------------------------

def test_a_read_leaves_a_record_with_who_what_and_where(client, auth, engine, practitioner):
    before = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
    response = client.get("/fhir/Practitioner/prac-ivanova",
                          headers={**auth, "X-Request-Id": "req-read-1"})
    assert response.status_code == 200
    row = last(engine)
    assert row["operation"] == "read"
    assert row["action"] == "R"
    assert row["resource_type"] == "Practitioner"
    assert json.loads(row["resource_ids"]) == ["prac-ivanova"]
    assert row["outcome"] == 200
    assert row["client_name"] == "test-admin"
    assert row["role"] == "admin"
    assert row["client_pk"] is not None
    assert json.loads(row["organizations"]) == []
    assert row["method"] == "GET"
    assert row["path"] == "/fhir/Practitioner/prac-ivanova"
    assert row["request_id"] == "req-read-1"
    assert row["address"] == "127.0.0.1"
    assert before <= row["at"] <= datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=1)


def test_a_search_leaves_a_record_with_the_matches(client, auth, engine, practitioner):
    response = client.get("/fhir/Practitioner?active=true", headers=auth)
    assert response.status_code == 200
    row = last(engine)
    assert (row["operation"], row["action"], row["resource_type"]) == ("search", "E",
                                                                       "Practitioner")
    assert json.loads(row["resource_ids"]) == ["prac-ivanova"]
    assert row["path"] == "/fhir/Practitioner?active=true"


def test_a_create_leaves_a_record_with_the_new_id(client, auth, engine, post):
    resource = load_fixture(PRACTITIONER)
    del resource["id"]
    response = post(resource)
    assert response.status_code == 201
    new_id = response.headers["Location"].split("/Practitioner/")[1].split("/")[0]
    row = last(engine)
    assert (row["operation"], row["action"], row["method"]) == ("create", "C", "POST")
    assert json.loads(row["resource_ids"]) == [new_id]
    assert row["outcome"] == 201


def test_update_delete_and_history_are_recorded(client, auth, engine, practitioner, put):
    put({**practitioner, "active": False})
    assert (last(engine)["operation"], last(engine)["action"]) == ("update", "U")
    client.get("/fhir/Practitioner/prac-ivanova/_history", headers=auth)
    row = last(engine)
    assert (row["operation"], row["action"]) == ("history", "R")
    assert json.loads(row["resource_ids"]) == ["prac-ivanova"]
    assert client.delete("/fhir/Practitioner/prac-ivanova", headers=auth).status_code == 204
    row = last(engine)
    assert (row["operation"], row["action"], row["outcome"]) == ("delete", "D", 204)
    assert json.loads(row["resource_ids"]) == ["prac-ivanova"]
    client.get("/fhir/Practitioner/prac-ivanova", headers=auth)
    assert (last(engine)["operation"], last(engine)["outcome"]) == ("read", 410)


def test_a_transaction_lists_every_resource_it_wrote(client, auth, engine):
    resource = load_fixture(PRACTITIONER)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": resource,
        "request": {"method": "PUT", "url": "Practitioner/prac-ivanova"}}]}
    response = client.post("/fhir", data=json.dumps(bundle, ensure_ascii=False), headers=auth)
    assert response.status_code == 200, response.json
    row = last(engine)
    assert (row["operation"], row["action"]) == ("transaction", "E")
    assert row["resource_type"] is None
    assert json.loads(row["resource_ids"]) == ["Practitioner/prac-ivanova"]


def test_a_failed_authentication_leaves_a_record_without_the_token(client, engine):
    response = client.get("/fhir/Practitioner/prac-ivanova",
                          headers={"Authorization": "Bearer gw_not-a-real-token"})
    assert response.status_code == 401
    row = last(engine)
    assert row["client_pk"] is None
    assert row["client_name"] is None
    assert row["role"] is None
    assert (row["operation"], row["action"], row["outcome"]) == ("login-failed", "E", 401)
    assert row["resource_type"] == "Practitioner"
    assert "bearer token not accepted" in row["detail"]
    assert "gw_not-a-real-token" not in json.dumps(row, default=str)
    client.get("/fhir/Practitioner")
    assert "no bearer token" in last(engine)["detail"]


def test_public_endpoints_leave_no_record(client, engine):
    assert client.get("/fhir/metadata").status_code == 200
    assert client.get("/healthz").status_code in (200, 503)
    assert records(engine) == []


def test_a_refused_request_is_recorded_with_its_client(client, engine, mis_auth):
    response = client.get("/fhir/AuditEvent", headers=mis_auth)
    assert response.status_code == 403
    row = last(engine)
    assert row["client_name"] == "МИС Поликлиника 1"
    assert row["role"] == "mis"
    assert json.loads(row["organizations"]) == [MIS_ORGANIZATION]
    assert (row["operation"], row["resource_type"], row["outcome"]) == ("search", "AuditEvent",
                                                                        403)
    assert "forbidden" in row["detail"]
    assert client.get(f"/fhir/AuditEvent/{row['pk']}", headers=mis_auth).status_code == 403


# --- personal data -------------------------------------------------------------------------

def test_personal_data_in_the_query_is_stored_masked(client, auth, engine):
    client.get("/fhir/Practitioner", headers=auth,
               query_string={"identifier": f"{SNILS_SYSTEM}|112-233-445 95"})
    client.get("/fhir/Patient?family=%D0%98%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2%D0%B0"
               "&given=%D0%9C%D0%B0%D1%80%D0%B8%D1%8F+%D0%9F%D0%B5%D1%82%D1%80%D0%BE%D0%B2%D0%BD%D0%B0",
               headers=auth)
    client.post("/fhir/Practitioner/_search", headers={**auth, "Content-Type":
                                                        "application/x-www-form-urlencoded"},
                data={"identifier": f"{SNILS_SYSTEM}|11223344595", "name": "Иванова"})
    client.get("/fhir/Patient", headers=auth,
               query_string={"identifier": "https://fhir.ru/ig/core/systems/passport|4505 318742"})
    snils, names, form, passport = records(engine)
    assert snils["path"] == f"/fhir/Practitioner?identifier={SNILS_SYSTEM}|***-***-445 95"
    assert names["path"] == "/fhir/Patient?family=И***&given=М***"
    assert "***-***-445 95" in form["detail"]
    assert "И***" in form["detail"]
    assert "**** ***742" in passport["path"]
    stored = json.dumps(records(engine), default=str, ensure_ascii=False)
    for clear in ("112-233-445", "11223344595", "Иванова", "Мария", "Петровна", "4505 318742",
                  "%D0%98%D0%B2"):
        assert clear not in stored


def test_control_characters_cannot_hide_a_request(client, auth, engine):
    response = client.get("/fhir/Practitioner?_id=a%00b", headers=auth)
    assert response.status_code in (200, 400)
    assert "\\x00" in last(engine)["path"]


# --- the admin reads AuditEvents ---------------------------------------------------------------

def test_the_admin_reads_records_as_valid_audit_events(client, auth, engine, practitioner,
                                                       fhir_schema):
    client.get("/fhir/Practitioner/prac-ivanova", headers={**auth, "X-Request-Id": "req-42"})
    client.get("/fhir/Practitioner/prac-ivanova", headers={"Authorization": "Bearer wrong"})
    events = audit_events_of(client, auth)
    for event in events:
        model_class("AuditEvent").model_validate(event)
    failed, read = events[0], events[1]          # newest first
    assert failed["type"]["code"] == "110114"
    assert failed["outcome"] == "4"
    assert failed["agent"][0]["who"] == {"display": "unknown client"}
    assert read["action"] == "R"
    assert read["outcome"] == "0"
    assert {"system": "http://hl7.org/fhir/restful-interaction", "code": "read"} \
        in read["subtype"]
    client_agent = read["agent"][0]
    assert client_agent["requestor"] is True
    assert client_agent["who"]["display"] == "test-admin"
    row = next(r for r in records(engine) if str(r["pk"]) == read["id"])
    assert client_agent["who"]["identifier"]["value"] == str(row["client_pk"])
    assert client_agent["role"][0]["coding"][0]["code"] == "admin"
    assert client_agent["network"] == {"address": "127.0.0.1", "type": "2"}
    assert read["source"]["observer"]["display"] == "egisz-fhir-gateway"
    assert read["entity"][0]["what"] == {"reference": "Practitioner/prac-ivanova"}
    request_entity = read["entity"][-1]
    assert request_entity["what"]["identifier"]["value"] == "req-42"
    hashes = {e["url"].rsplit("/", 1)[1]: e["valueString"] for e in read["extension"]}
    assert hashes == {"audit-hash": row["hash"], "audit-previous-hash": row["previous_hash"]}

    one = client.get(f"/fhir/AuditEvent/{read['id']}", headers=auth)
    assert one.status_code == 200
    assert one.json == read
    xml = client.get(f"/fhir/AuditEvent/{read['id']}?_format=xml", headers=auth)
    from lxml import etree
    fhir_schema.assertValid(etree.fromstring(xml.data))
    assert client.get("/fhir/AuditEvent/999999", headers=auth).status_code == 404
    assert client.get("/fhir/AuditEvent/abc", headers=auth).status_code == 404


def test_reading_the_trail_is_itself_recorded(client, auth, engine):
    client.get("/fhir/Practitioner", headers=auth)
    events = audit_events_of(client, auth)
    row = last(engine)
    assert (row["operation"], row["resource_type"]) == ("search", "AuditEvent")
    assert json.loads(row["resource_ids"]) == [e["id"] for e in events]


def test_search_parameters_filter_the_trail(client, auth, engine, practitioner, mis_auth):
    client.get("/fhir/Practitioner/prac-ivanova", headers=auth)
    client.get("/fhir/Organization", headers=mis_auth)
    client.get("/fhir/Practitioner", headers={"Authorization": "Bearer wrong"})
    admin_pk = records(engine)[0]["client_pk"]
    mis_pk = records(engine)[-2]["client_pk"]
    today = datetime.now(UTC).date().isoformat()

    everything = [e["id"] for e in audit_events_of(client, auth)]

    def ids(query: str) -> list[str]:     # leaving out the records of these searches
        return [e["id"] for e in audit_events_of(client, auth, query) if e["id"] in everything]

    assert len(everything) == 4
    assert ids(f"?date=ge{today}&date=le{today}") == everything
    assert ids("?date=lt2020-01-01") == []
    assert ids(f"?date={today}") == everything
    assert ids(f"?agent={mis_pk}") == [everything[1]]
    assert ids(f"?agent={mis_pk},{admin_pk}") == everything[1:]
    assert ids("?agent=nobody") == []
    assert ids("?entity-type=Organization") == [everything[1]]
    assert ids("?entity=Practitioner/prac-ivanova") == everything[2:]
    assert ids("?entity=prac-ivanova&action=C") == [everything[3]]   # PUT that created
    assert ids("?action=R") == everything[2:3]
    assert ids("?outcome=4") == [everything[0]]
    assert ids("?outcome=0&agent=" + str(admin_pk)) == everything[2:]


def test_pages_follow_next_links_without_gaps_or_repeats(client, auth, engine):
    for _ in range(5):
        client.get("/fhir/Practitioner", headers=auth)
    wanted = [str(r["pk"]) for r in reversed(records(engine))]
    seen, url = [], "/fhir/AuditEvent?_count=2&action=E"
    while url:
        response = client.get(url, headers=auth)
        assert response.status_code == 200
        seen += [e["resource"]["id"] for e in response.json.get("entry", [])]
        nexts = [link["url"] for link in response.json["link"] if link["relation"] == "next"]
        url = nexts[0].split("://", 1)[1].split("/", 1)[1] if nexts else None
        url = "/" + url if url else None
    assert seen == wanted


@pytest.mark.parametrize("query", ["?colour=red", "?date=yesterday", "?date=xx2024",
                                   "?_count=-1", "?_cursor=abc"])
def test_bad_search_parameters_are_refused(client, auth, query):
    response = client.get(f"/fhir/AuditEvent{query}", headers=auth)
    assert response.status_code == 400
    assert response.json["resourceType"] == "OperationOutcome"


# --- the chain ------------------------------------------------------------------------------

def make_trail(client, auth, number: int = 5) -> None:
    for index in range(number):
        client.get(f"/fhir/Practitioner/p{index}", headers=auth)


def test_each_record_is_chained_to_the_previous_one(client, auth, engine):
    make_trail(client, auth)
    rows = records(engine)
    assert rows[0]["previous_hash"] == trail.GENESIS
    for before, after in zip(rows, rows[1:], strict=False):
        assert after["previous_hash"] == before["hash"]
    for row in rows:
        assert trail.chain_hash(row, row["previous_hash"]) == row["hash"]


def test_verify_passes_on_an_intact_trail(client, auth, engine):
    make_trail(client, auth)
    found = trail.verify(engine)
    assert found.intact
    assert found.checked == 5


def test_verify_reports_an_altered_record(client, auth, engine):
    make_trail(client, auth)
    altered = records(engine)[2]["pk"]
    with engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.pk == altered)
                     .values(outcome=200, path="/fhir/Practitioner/someone-else"))
    found = trail.verify(engine)
    assert found.broken_at == altered
    assert found.checked == 3
    assert "altered" in found.reason


def test_verify_reports_a_removed_record(client, auth, engine):
    make_trail(client, auth)
    rows = records(engine)
    with engine.begin() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.pk == rows[2]["pk"]))
    found = trail.verify(engine)
    assert found.broken_at == rows[3]["pk"]
    assert f"#{rows[2]['pk']}" in found.reason
    assert "missing" in found.reason


def test_verify_reports_a_removed_first_record(client, auth, engine):
    make_trail(client, auth)
    rows = records(engine)
    with engine.begin() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.pk == rows[0]["pk"]))
    found = trail.verify(engine)
    assert found.broken_at == rows[1]["pk"]
    assert found.checked == 1


def test_verify_reads_a_long_trail_page_by_page(engine):
    for number in range(7):
        trail.append(engine, {"at": datetime(2026, 1, 1, 0, 0, number), "action": "R",
                              "operation": "read", "outcome": 200, "method": "GET",
                              "path": f"/fhir/Patient/{number}"})
    found = trail.verify_rows(trail.rows_in_order(engine, page=3))
    assert found.intact
    assert found.checked == 7


def test_concurrent_requests_keep_the_chain_linear(app, auth, engine):
    errors: list[BaseException] = []

    def work(number: int) -> None:
        try:
            own = app.test_client()
            for index in range(5):
                response = own.get(f"/fhir/Practitioner/t{number}-{index}", headers=auth)
                assert response.status_code == 404
        except BaseException as exc:      # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    found = trail.verify(engine)
    assert found.intact
    assert found.checked == 40
    assert len({r["previous_hash"] for r in records(engine)}) == 40


def test_a_failing_audit_write_never_breaks_the_response(client, auth, engine, monkeypatch,
                                                        caplog):
    def broken(*_args, **_kwargs):
        raise RuntimeError(f"cannot write {SNILS_SYSTEM}|11223344595")

    monkeypatch.setattr(trail, "append", broken)
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        response = client.get("/fhir/Practitioner", headers=auth,
                              query_string={"identifier": f"{SNILS_SYSTEM}|11223344595"})
    assert response.status_code == 200
    assert "Audit record not written (RuntimeError)" in caplog.text
    assert "11223344595" not in caplog.text
    assert records(engine) == []


# --- pure helpers and the command ---------------------------------------------------------------

def test_hashes_cover_every_field_and_the_link():
    fields = {"at": datetime(2026, 11, 23, 10, 0), "action": "R", "operation": "read",
              "outcome": 200, "method": "GET", "path": "/fhir/Patient/1"}
    first = trail.chain_hash(fields, trail.GENESIS)
    assert first == trail.chain_hash(dict(reversed(fields.items())), trail.GENESIS)
    assert len(first) == 64
    assert trail.chain_hash({**fields, "outcome": 404}, trail.GENESIS) != first
    assert trail.chain_hash(fields, "1" * 64) != first
    rows = [{**fields, "pk": 1, "previous_hash": trail.GENESIS, "hash": first},
            {**fields, "pk": 2, "previous_hash": first,
             "hash": trail.chain_hash(fields, first)}]
    assert trail.verify_rows(rows) == trail.Verification(2)
    assert trail.verify_rows(rows[1:]).broken_at == 2
    assert trail.verify_rows([]).intact


def test_the_verify_command(client, auth, engine, database_url, tmp_path, monkeypatch):
    make_trail(client, auth, 3)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", database_url)
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "WARNING")
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "3 records checked" in result.output
    altered = records(engine)[1]["pk"]
    with engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.pk == altered)
                     .values(client_name="someone"))
    result = runner.invoke(main, ["audit", "verify"])
    assert result.exit_code == 1
    assert f"#{altered}" in result.output
    assert "altered" in result.output
