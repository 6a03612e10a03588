"""Delivery to ЕГИСЗ: outbox, signed Bundles, order, retries, statuses, webhooks.

The gateway runs as a Flask test client; the upstream is the bundled mock on a
real port, reached over real HTTP; the worker is driven round by round, so each
test decides exactly when things move.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from sqlalchemy import func, select

from gateway import signing, workdays
from gateway.delivery import upstream
from gateway.delivery.webhooks import signature
from gateway.delivery.worker import Worker
from gateway.mock_upstream.config import MockConfig
from gateway.mock_upstream.server import serve_mock
from gateway.store import submissions
from gateway.store.clients import create_client
from gateway.store.schema import outbox_bundles
from gateway.store.schema import submissions as submissions_table
from tests import delivery_data as data
from tests.conftest import load_fixture

FAST = {"delivery_poll_interval": 0.02, "delivery_backoff_base": 0.01,
        "delivery_backoff_max": 0.05, "delivery_timeout": 2.0, "delivery_idle": 0.01,
        "delivery_max_attempts": 4, "circuit_failures": 100, "circuit_open_seconds": 0.2}


@pytest.fixture
def gateway(app):
    return app.extensions["gateway"]


@pytest.fixture
def keys(gateway):
    return signing.ensure_signer(gateway.settings.keys_path, "ES256")


def start_mock(gateway, tmp_path, **config):
    settings = dict(processing_delay_seconds=0.02, seed=7)
    settings.update(config)
    return serve_mock(MockConfig(database_url=f"sqlite:///{tmp_path / 'mock.sqlite3'}",
                                 jwks=signing.jwks(gateway.settings.keys_path), **settings))


@pytest.fixture
def mock(gateway, keys, tmp_path):
    server = start_mock(gateway, tmp_path)
    yield server
    server.stop()


def make_worker(gateway, url: str, **overrides) -> Worker:
    settings = gateway.settings.__class__(**{**gateway.settings.__dict__, **FAST, **overrides})
    return Worker(gateway.engine, settings, upstream_url=url)


def deliver(worker: Worker, seconds: float = 30.0) -> None:
    """Rounds until nothing is on its way upstream (what waits for a dependency stays)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        worker.drain()
        with worker.engine.connect() as conn:
            moving = conn.execute(select(func.count()).select_from(submissions_table).where(
                submissions_table.c.status.in_(
                    (submissions.SENT, submissions.ACCEPTED, submissions.PROCESSING))
                | ((submissions_table.c.status == submissions.QUEUED)
                   & submissions_table.c.bundle_pk.is_not(None)))).scalar_one()
        if not moving:
            return
        time.sleep(0.02)
    raise AssertionError("delivery did not settle in time")


def put(client, auth, resource: dict):
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                          data=json.dumps(resource, ensure_ascii=False), headers=auth)
    assert response.status_code in (200, 201), response.get_json()
    return response


def status_of(client, auth, submission_id: str) -> dict:
    response = client.get(f"/api/v1/submissions/{submission_id}", headers=auth)
    assert response.status_code == 200
    return response.get_json()


def statuses(client, auth, resource: str) -> list[str]:
    body = client.get(f"/api/v1/submissions?resource={resource}", headers=auth).get_json()
    return [s["status"] for s in body["submissions"]]


def mock_stats(mock) -> dict:
    return requests.get(f"{mock.root}/_mock/stats", timeout=5).json()


# --- the outbox is written with the change --------------------------------------------

def test_an_accepted_resource_is_queued_in_the_same_transaction(client, auth):
    response = put(client, auth, data.organization(1))
    found = status_of(client, auth, response.headers["X-Submission-Id"])
    assert found["status"] == "queued"
    assert found["resource"] == "Organization/org-1"
    assert found["destination"] == "frmo"
    assert [event["status"] for event in found["history"]] == ["queued"]


def test_a_refused_resource_queues_nothing(client, auth, gateway):
    broken = data.organization(1)
    broken["identifier"][1]["value"] = "7700000000"          # wrong ИНН check digit
    response = client.put("/fhir/Organization/org-1", data=json.dumps(broken), headers=auth)
    assert response.status_code == 422
    with gateway.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(submissions_table)).scalar_one() == 0


def test_a_failed_transaction_bundle_queues_nothing_of_it(client, auth, gateway):
    put(client, auth, data.organization(1))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": data.organization(2), "request": {"method": "PUT",
                                                       "url": "Organization/org-2"}},
        {"resource": data.organization(1), "request": {"method": "PUT",
                                                       "url": "Organization/org-1",
                                                       "ifMatch": 'W/"7"'}}]}
    response = client.post("/fhir", data=json.dumps(bundle), headers=auth)
    assert response.status_code == 412
    with gateway.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(submissions_table)).scalar_one() == 1


def test_an_unchanged_resource_points_to_its_last_submission(client, auth, gateway):
    first = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
    again = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
    assert again == first
    with gateway.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(submissions_table)).scalar_one() == 1


def test_ingest_answers_carry_the_submission_ids(client, auth):
    bearer = {"Authorization": auth["Authorization"]}
    clinic = client.post("/api/v1/ingest/frmo-organization", headers=bearer,
                         json=load_fixture("mappings/frmo-organization/valid-full.json"))
    clinic_id = clinic.get_json()["records"][0]["resources"][0]["reference"].split("/")[1]
    body = client.post("/api/v1/ingest/frmr-person", headers=bearer,
                       json=load_fixture("mappings/frmr-person/valid-full.json")).get_json()
    written = body["records"][0]["resources"]
    assert written
    assert all(r["submission"] for r in written)
    found = [status_of(client, auth, r["submission"]) for r in written]
    assert [f["resource"] for f in found] == [r["reference"] for r in written]
    # The role names its clinic by ФРМО OID: it waits for that clinic, and the
    # Practitioner travels with the clinic of his roles (its Bundle is signed for it).
    practitioner, first_role = found[0], found[1]
    assert first_role["organization"] == practitioner["organization"] == clinic_id
    assert any(d.startswith("Organization?identifier=") for d in first_role["depends_on"])


# --- the whole way to approved ------------------------------------------------------------

def test_records_reach_approved_through_signed_bundles(client, auth, gateway, mock):
    for resource in data.register(organizations=2, per_organization=3):
        put(client, auth, resource)
    deliver(make_worker(gateway, mock.url))
    body = client.get("/api/v1/submissions?_count=100", headers=auth).get_json()
    assert {s["status"] for s in body["submissions"]} == {"approved"}
    stats = mock_stats(mock)
    assert stats["records_applied"] == 14
    assert stats["signature_failures"] == 0
    one = body["submissions"][0]
    history = status_of(client, auth, one["id"])["history"]
    assert [e["status"] for e in history] == \
        ["queued", "sent", "accepted", "processing", "approved"] or \
        [e["status"] for e in history] == ["queued", "sent", "accepted", "approved"]


def test_every_bundle_verifies_with_the_published_keys_alone(client, auth, gateway, mock):
    for resource in data.register(organizations=1, per_organization=2):
        put(client, auth, resource)
    deliver(make_worker(gateway, mock.url))
    published = client.get("/.well-known/jwks.json").get_json()      # no token needed
    assert published["keys"]
    assert all("d" not in k for k in published["keys"])
    with gateway.engine.connect() as conn:
        bodies = conn.execute(select(outbox_bundles.c.body)).scalars().all()
    for body in bodies:
        bundle = json.loads(body)
        header = signing.verify_bundle(bundle, published)
        assert header["b64"] is False
        assert bundle["signature"]["who"]["reference"].startswith("Organization/")
        assert bundle["identifier"]["value"].startswith("urn:uuid:")


def test_organization_goes_before_roles_and_practitioner_before_role(client, auth, gateway,
                                                                      mock):
    # The role and its practitioner come first; the clinic only later.
    put(client, auth, data.practitioner(1))
    role_sid = put(client, auth, data.role(1, 1, 1)).headers["X-Submission-Id"]
    worker = make_worker(gateway, mock.url)
    deliver(worker)
    waiting = status_of(client, auth, role_sid)
    assert waiting["status"] == "queued"
    assert waiting["detail"]["waiting_for"] == ["Organization/org-1"]
    assert "Organization/org-1" in waiting["detail"]["reason_ru"]
    put(client, auth, data.organization(1))
    deliver(worker)
    assert status_of(client, auth, role_sid)["status"] == "approved"
    applied = requests.get(f"{mock.root}/_mock/records", timeout=5).json()
    order = [r["reference"] for r in applied["records"]]
    assert order.index("Organization/org-1") < order.index("PractitionerRole/role-1")
    assert order.index("Practitioner/prac-1") < order.index("PractitionerRole/role-1")


def test_a_role_of_a_rejected_clinic_waits_and_says_why(client, auth, gateway, mock):
    put(client, auth, data.organization(1, ogrn_region="50"))      # ЕГИСЗ refuses it
    put(client, auth, data.practitioner(1))
    role_sid = put(client, auth, data.role(1, 1, 1)).headers["X-Submission-Id"]
    deliver(make_worker(gateway, mock.url))
    assert statuses(client, auth, "Organization/org-1") == ["rejected"]
    rejected = client.get("/api/v1/submissions?status=rejected", headers=auth).get_json()
    outcome = rejected["submissions"][0]["detail"]["outcome"]
    assert outcome["issue"][0]["expression"]
    waiting = status_of(client, auth, role_sid)
    assert waiting["status"] == "queued"
    assert "rejected" in waiting["detail"]["reason_en"]


def test_a_second_registration_at_the_same_post_is_rejected_with_the_field(
        client, auth, gateway, mock):
    for resource in (data.organization(1), data.practitioner(1), data.role(1, 1, 1),
                     data.role(2, 1, 1)):
        put(client, auth, resource)
    deliver(make_worker(gateway, mock.url))
    assert statuses(client, auth, "PractitionerRole/role-1") == ["approved"]
    assert statuses(client, auth, "PractitionerRole/role-2") == ["rejected"]


def test_a_newer_version_follows_the_older_one(client, auth, gateway, mock):
    org = data.organization(1)
    put(client, auth, org)
    org["name"] = "Клиника № 1 (новое название)"
    put(client, auth, org)
    deliver(make_worker(gateway, mock.url))
    assert statuses(client, auth, "Organization/org-1") == ["approved", "approved"]
    versions = [r["version"] for r in requests.get(
        f"{mock.root}/_mock/records", timeout=5).json()["records"]]
    assert versions == ["1", "2"] or versions == [1, 2]


def test_clarification_has_the_regulated_deadlines(client, auth, gateway, keys, tmp_path):
    mock = start_mock(gateway, tmp_path, clarification_rate=1.0)
    try:
        sid = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
        deliver(make_worker(gateway, mock.url))
    finally:
        mock.stop()
    found = status_of(client, auth, sid)
    assert found["status"] == "clarification_required"
    assert found["status_ru"] == "требуется уточнение"
    accepted = found["accepted"]
    from datetime import datetime
    accepted_at = datetime.fromisoformat(accepted).replace(tzinfo=None)
    assert found["processing_due"] == \
        workdays.processing_due(accepted_at, clarification=True).isoformat()
    asked = next(e for e in found["history"] if e["status"] == "clarification_required")
    assert found["answer_due"] == workdays.clarification_answer_due(
        datetime.fromisoformat(asked["at"]).replace(tzinfo=None)).isoformat()
    assert found["detail"]["outcome"]["issue"]


def test_overdue_submissions_are_flagged_in_the_list(client, auth, gateway):
    sid = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
    from datetime import date
    with gateway.engine.begin() as conn:
        conn.execute(submissions_table.update().where(submissions_table.c.id == sid).values(
            status="processing", processing_due=date(2026, 1, 12)))
    body = client.get("/api/v1/submissions?overdue=true", headers=auth).get_json()
    assert [s["id"] for s in body["submissions"]] == [sid]
    assert body["submissions"][0]["overdue"] is True


# --- failures, retries, dead letters ------------------------------------------------

def test_an_unreachable_upstream_ends_dead_and_requeue_brings_it_back(
        client, auth, gateway, mock):
    sid = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
    nowhere = make_worker(gateway, "http://127.0.0.1:9/fhir", delivery_max_attempts=3)
    for _ in range(50):
        nowhere.drain()
        if status_of(client, auth, sid)["status"] == "dead":
            break
        time.sleep(0.02)
    dead = status_of(client, auth, sid)
    assert dead["status"] == "dead"
    assert "3" in dead["detail"]["reason_en"]
    listed = client.get("/api/v1/admin/outbox?state=dead", headers=auth).get_json()
    assert listed["bundles"][0]["attempts"] == 3
    assert client.post("/api/v1/admin/outbox/requeue-dead",
                       headers=auth).get_json()["requeued"] == 1
    deliver(make_worker(gateway, mock.url))
    history = [e["status"] for e in status_of(client, auth, sid)["history"]]
    assert history[:3] == ["queued", "sent", "dead"]
    assert history[-1] == "approved"


def test_a_dropped_answer_is_resent_under_the_same_identifier(client, auth, gateway, keys,
                                                             tmp_path):
    mock = start_mock(gateway, tmp_path, drop_after_receive=1.0)
    try:
        for resource in data.register(organizations=1, per_organization=1):
            put(client, auth, resource)
        worker = make_worker(gateway, mock.url)
        worker.run_once()                         # sent, applied, but no answer came
        time.sleep(0.1)
        mock.mock.config.drop_after_receive = 0.0
        deliver(worker)
        stats = mock_stats(mock)
    finally:
        mock.stop()
    assert stats["duplicates_ignored"] >= 1
    assert stats["records_applied"] == 3
    assert set(statuses(client, auth, "Organization/org-0")) == {"approved"}


def test_backoff_grows_honours_retry_after_and_is_capped():
    rng = __import__("random").Random(1)
    delays = [upstream.backoff(n, 1.0, 30.0, rng=rng) for n in range(1, 8)]
    assert all(0.5 * min(30, 2 ** (n - 1)) <= d <= min(30, 2 ** (n - 1))
               for n, d in zip(range(1, 8), delays, strict=True))
    assert upstream.backoff(1, 1.0, 30.0, retry_after=12.0, rng=rng) == 12.0


def test_the_circuit_opens_after_failures_and_lets_one_probe_through_later():
    now = [0.0]
    breaker = upstream.CircuitBreaker(failures=3, open_seconds=10, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allows("frmr")
        breaker.failed("frmr")
    assert not breaker.allows("frmr")
    assert breaker.allows("frmo")
    now[0] = 11
    assert breaker.allows("frmr")                 # the probe
    assert not breaker.allows("frmr")             # only one
    breaker.succeeded("frmr")
    assert breaker.allows("frmr")


def test_an_open_circuit_stops_the_worker_hammering(client, auth, gateway):
    hits = []

    class Failing(BaseHTTPRequestHandler):
        def do_POST(self):                        # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for n in range(6):
            put(client, auth, data.organization(n))
        worker = make_worker(gateway, f"http://127.0.0.1:{server.server_port}/fhir",
                             circuit_failures=2, circuit_open_seconds=60,
                             delivery_max_attempts=100, delivery_batch_size=1)
        for _ in range(20):
            worker.run_once()
            time.sleep(0.01)
    finally:
        server.shutdown()
        server.server_close()
    assert len(hits) == 2


# --- statuses API, webhooks, operators ---------------------------------------------------

def test_the_list_filters_by_status_organization_oid_and_pages_by_cursor(client, auth,
                                                                          gateway):
    for resource in data.register(organizations=2, per_organization=2):
        put(client, auth, resource)
    make_worker(gateway, "http://127.0.0.1:9/fhir").run_once()   # practitioners join clinics
    by_oid = client.get(f"/api/v1/submissions?organization={data.frmo_oid(1)}",
                        headers=auth).get_json()
    assert by_oid["count"] == 5
    assert {s["organization"] for s in by_oid["submissions"]} == {"org-1"}
    seen, url = [], "/api/v1/submissions?status=queued,sent&_count=4"
    while url:
        page = client.get(url, headers=auth).get_json()
        seen += [s["id"] for s in page["submissions"]]
        url = page.get("next", "").replace("http://localhost", "") or None
    assert len(seen) == len(set(seen)) == 10
    wrong = client.get("/api/v1/submissions?status=lost", headers=auth)
    assert wrong.status_code == 400
    assert wrong.get_json()["resourceType"] == "OperationOutcome"


def test_an_unknown_submission_is_404(client, auth):
    assert client.get("/api/v1/submissions/nope", headers=auth).status_code == 404


def test_operator_endpoints_need_the_admin_role(client, gateway):
    _, token = create_client(gateway.engine, "clinic", "mis", "1.2.643.5.1.13.13.12.2.77.1")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/admin/outbox", headers=headers).status_code == 403
    assert client.post("/api/v1/admin/outbox/requeue-dead", headers=headers).status_code == 403


class Receiver(BaseHTTPRequestHandler):
    """A webhook endpoint that fails its first call, then records what it gets."""

    received: list = []
    fail_first = True

    def do_POST(self):                            # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.fail_first:
            Receiver.fail_first = False
            self.send_response(500)
        else:
            Receiver.received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_status_changes_are_posted_to_the_webhook_signed_and_retried(
        client, auth, gateway, mock):
    Receiver.received, Receiver.fail_first = [], True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        created = client.post("/api/v1/webhooks", headers=auth, json={
            "url": f"http://127.0.0.1:{server.server_port}/hook"}).get_json()
        sid = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
        worker = make_worker(gateway, mock.url)
        deliver(worker)
        for _ in range(100):
            worker.drain()
            if any(json.loads(b)["status"] == "approved" for _, b in Receiver.received):
                break
            time.sleep(0.02)
    finally:
        server.shutdown()
        server.server_close()
    events = [json.loads(body) for _, body in Receiver.received]
    assert {e["submission"] for e in events} == {sid}
    assert "approved" in [e["status"] for e in events]
    headers, body = Receiver.received[0]
    assert headers["X-Gateway-Signature"] == signature(
        created["secret"], headers["X-Gateway-Timestamp"], body)
    deliveries = client.get("/api/v1/webhooks/deliveries", headers=auth).get_json()
    assert any(d["attempts"] >= 2 and d["state"] == "delivered"
               for d in deliveries["deliveries"])


def test_a_webhook_url_must_be_http(client, auth):
    response = client.post("/api/v1/webhooks", headers=auth, json={"url": "file:///etc/passwd"})
    assert response.status_code == 400


def test_a_deletion_reaches_the_upstream_and_is_approved(client, auth, gateway, mock):
    put(client, auth, data.organization(1))
    worker = make_worker(gateway, mock.url)
    deliver(worker)
    deleted = client.delete("/fhir/Organization/org-1", headers=auth)
    assert deleted.status_code == 204
    assert status_of(client, auth, deleted.headers["X-Submission-Id"])["method"] == "DELETE"
    deliver(worker)
    body = client.get("/api/v1/submissions?resource=Organization/org-1", headers=auth).get_json()
    assert [(s["method"], s["status"]) for s in body["submissions"]] == \
        [("PUT", "approved"), ("DELETE", "approved")]
    registry = requests.get(f"{mock.root}/_mock/registry/frmo", timeout=5).json()
    assert "Organization/org-1" not in json.dumps(registry)


def test_intake_records_naming_their_clinic_by_oid_reach_approved(client, auth, gateway, mock):
    bearer = {"Authorization": auth["Authorization"]}
    person = load_fixture("mappings/frmr-person/valid-full.json")
    body = client.post("/api/v1/ingest/frmr-person", headers=bearer, json=person).get_json()
    clinic_oid = "1.2.643.5.1.13.13.12.2.77.9231"          # frmo-organization/valid-full
    role_sid = next(r["submission"] for r in body["records"][0]["resources"]
                    if any(clinic_oid in d for d in status_of(client, auth, r["submission"])
                           ["depends_on"]))
    worker = make_worker(gateway, mock.url)
    deliver(worker)
    waiting = status_of(client, auth, role_sid)
    assert waiting["status"] == "queued"
    assert "Organization?identifier=" in waiting["detail"]["reason_en"]
    client.post("/api/v1/ingest/frmo-organization", headers=bearer,
                json=load_fixture("mappings/frmo-organization/valid-full.json"))
    deliver(worker)
    assert status_of(client, auth, role_sid)["status"] == "approved"


class Refusing(BaseHTTPRequestHandler):
    """An upstream that refuses every Bundle as malformed (400 + OperationOutcome)."""

    def do_POST(self):                            # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "structure", "expression": ["Bundle.type"],
            "diagnostics": "Bundle.type must be transaction"}]}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_bundle_refused_as_a_whole_rejects_its_records_with_the_outcome(client, auth,
                                                                          gateway):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sid = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
        make_worker(gateway, f"http://127.0.0.1:{server.server_port}/fhir").drain()
    finally:
        server.shutdown()
        server.server_close()
    found = status_of(client, auth, sid)
    assert found["status"] == "rejected"
    assert found["detail"]["outcome"]["issue"][0]["expression"] == ["Bundle.type"]
    assert [e["status"] for e in found["history"]] == ["queued", "sent", "rejected"]


def test_an_upstream_that_does_not_trust_the_key_gets_retries_then_dead(
        client, auth, gateway, keys, tmp_path):
    stranger = signing.generate_key(tmp_path / "other-keys", "ES256")
    mock = serve_mock(MockConfig(database_url=f"sqlite:///{tmp_path / 'mock.sqlite3'}",
                                 jwks=signing.jwks(tmp_path / "other-keys"),
                                 processing_delay_seconds=0.02))
    try:
        sid = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
        worker = make_worker(gateway, mock.url, delivery_max_attempts=3)
        for _ in range(100):
            worker.drain()
            if status_of(client, auth, sid)["status"] == "dead":
                break
            time.sleep(0.02)
        stats = mock_stats(mock)
    finally:
        mock.stop()
    assert stranger.kid != keys.kid
    assert status_of(client, auth, sid)["status"] == "dead"
    assert stats["signature_failures"] == 3
    assert stats["records_applied"] == 0


def test_retry_of_a_dead_bundle_by_submission_id(client, auth, gateway, mock):
    sid = put(client, auth, data.organization(1)).headers["X-Submission-Id"]
    nowhere = make_worker(gateway, "http://127.0.0.1:9/fhir", delivery_max_attempts=1)
    nowhere.drain()
    assert status_of(client, auth, sid)["status"] == "dead"
    retried = client.post(f"/api/v1/admin/outbox/{sid}/retry", headers=auth).get_json()
    assert retried["changed"] is True
    deliver(make_worker(gateway, mock.url))
    assert status_of(client, auth, sid)["status"] == "approved"
    again = client.post(f"/api/v1/admin/outbox/{sid}/retry", headers=auth).get_json()
    assert again["changed"] is False
    assert client.post("/api/v1/admin/outbox/nope/retry", headers=auth).status_code == 404


def test_a_worker_name_fits_its_lease_column_whatever_the_host(gateway, keys, monkeypatch):
    import socket
    monkeypatch.setattr(socket, "gethostname", lambda: "pod-" + "x" * 59)
    name = make_worker(gateway, "http://127.0.0.1:9/fhir").name
    assert len(name) <= outbox_bundles.c.lease_owner.type.length


def test_a_clarification_is_answered_by_a_newer_version_and_is_no_longer_overdue(
        client, auth, gateway, keys, tmp_path):
    mock = start_mock(gateway, tmp_path, clarification_rate=1.0)
    try:
        org = data.organization(1)
        asked = put(client, auth, org).headers["X-Submission-Id"]
        worker = make_worker(gateway, mock.url)
        deliver(worker)
        from datetime import date
        with gateway.engine.begin() as conn:
            conn.execute(submissions_table.update().where(submissions_table.c.id == asked)
                         .values(answer_due=date(2026, 1, 12)))
        assert status_of(client, auth, asked)["overdue"] is True
        org["name"] = "Клиника № 1 (уточнено)"
        answer = put(client, auth, org).headers["X-Submission-Id"]
        deliver(worker)
    finally:
        mock.stop()
    found = status_of(client, auth, asked)
    assert found["answered_by"] == answer
    assert found["overdue"] is False
    assert client.get("/api/v1/submissions?overdue=true", headers=auth).get_json()["count"] == 0
    assert status_of(client, auth, answer)["status"] == "approved"
