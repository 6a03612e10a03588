"""Limits and protection: request ids, masked JSON logs, body and search limits, rate
limits per client and failed-login throttling per address (in memory and in Redis),
PostgreSQL's statement timeout."""
from __future__ import annotations

import io
import json
import logging
import uuid

import pytest
from sqlalchemy import text

from gateway import fhir, logs
from gateway.app import create_app
from gateway.ratelimit import MemoryFailureThrottle, MemoryRateLimiter
from gateway.store.clients import create_client
from tests.conftest import FHIR_JSON, empty_postgres, load_fixture

REDIS_URL = "redis://127.0.0.1:6379/0"
FHIR_XML = "application/fhir+xml"


class Gateway:
    """One app with its own settings, a test client and a token of an admin client."""

    def __init__(self, tmp_path, database_url: str, token: str | None = None, **overrides):
        settings = {"data_dir": str(tmp_path / "data"), "database_url": database_url,
                    "log_level": "WARNING", **overrides}
        self.app = create_app(settings)
        self.engine = self.app.extensions["gateway"].engine
        self.token = token or create_client(self.engine, f"c-{uuid.uuid4().hex[:6]}",
                                            "admin")[1]
        self.client = self.app.test_client()

    def headers(self, **extra) -> dict:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": FHIR_JSON, **extra}

    def close_redis(self) -> None:
        limiters = self.app.extensions["gateway.protection"]
        for limiter in (limiters.rate, limiters.auth_failures):
            if hasattr(limiter, "client"):
                limiter.client.close()

    def get(self, path: str, address: str = "127.0.0.1", **headers):
        return self.client.get(path, headers=self.headers(**headers),
                               environ_base={"REMOTE_ADDR": address})


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.sqlite3'}"


@pytest.fixture
def make(tmp_path, sqlite_url):
    """make(**settings) -> Gateway on a SQLite file of this test."""
    def _make(**overrides) -> Gateway:
        return Gateway(tmp_path, sqlite_url, **overrides)
    return _make


@pytest.fixture
def log_lines():
    """Lines the gateway's JSON formatter writes while the test runs, parsed."""
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    root = logging.getLogger()
    root.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)


def _issue(response) -> dict:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["details"]["text"]            # Russian
    assert issue["diagnostics"]                # English
    return issue


# --- request id --------------------------------------------------------------------------

@pytest.mark.parametrize(("sent", "kept"), [
    ("abc-123_X.9", True),
    ("a" * 64, True),
    ("a" * 65, False),
    ("has space", False),
    ("<script>", False),
    ("иван", False),
    (None, False),
])
def test_every_reply_carries_a_request_id(make, sent, kept):
    gateway = make()
    headers = {"X-Request-Id": sent} if sent is not None else {}
    for response in (gateway.get("/fhir/Patient", **headers),                 # 200
                     gateway.client.get("/fhir/Patient", headers=headers),    # 401
                     gateway.client.get("/healthz", headers=headers)):        # public
        echoed = response.headers["X-Request-Id"]
        if kept:
            assert echoed == sent
        else:
            assert str(uuid.UUID(echoed, version=4)) == echoed


def test_the_request_id_is_in_g_before_authentication_runs(make):
    """The request-id hook is registered before require_token: a 401 has one too."""
    gateway = make()
    response = gateway.client.get("/fhir/Patient", headers={"X-Request-Id": "early-1"})
    assert response.status_code == 401
    assert response.headers["X-Request-Id"] == "early-1"


# --- logs ---------------------------------------------------------------------------------

def test_one_json_access_line_per_request_with_the_path_masked(make, log_lines):
    gateway = make(log_level="INFO")
    response = gateway.get("/fhir/Patient?family=Иванова&identifier="
                           "urn:oid:1.2.643.100.3%7C11223344595", **{"X-Request-Id": "req-42"})
    assert response.status_code == 200
    lines = [line for line in log_lines() if line["logger"] == "gateway.access"]
    assert len(lines) == 1
    line = lines[0]
    assert {"time", "level", "logger", "message", "request_id", "client", "method", "path",
            "status", "duration_ms"} <= set(line)
    assert line["request_id"] == "req-42"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert isinstance(line["client"], int)
    assert isinstance(line["duration_ms"], float)
    assert line["path"] == "/fhir/Patient?family=И***&identifier=" \
                           "urn:oid:1.2.643.100.3|***-***-445 95"
    everything = json.dumps(log_lines(), ensure_ascii=False)
    assert "Иванова" not in everything
    assert "11223344595" not in everything


def test_an_unhandled_exception_is_logged_masked(make, log_lines):
    gateway = make(log_level="INFO")

    @gateway.app.get("/boom")
    def boom():
        raise RuntimeError("СНИЛС 112-233-445 95, паспорт 4509 123456, "
                           "{'family': 'Иванова'} did not fit")

    response = gateway.get("/boom", **{"X-Request-Id": "boom-1"})
    assert response.status_code == 500
    assert "112-233-445" not in response.get_data(as_text=True)
    errors = [line for line in log_lines() if line["level"] == "ERROR"]
    assert len(errors) == 1
    error = errors[0]
    assert error["request_id"] == "boom-1"
    assert "RuntimeError" in error["exception"]
    assert "***-***-445 95" in error["exception"]
    assert "**** ***456" in error["exception"]
    for secret in ("112-233-445 95", "4509 123456", "Иванова"):
        assert secret not in json.dumps(error, ensure_ascii=False)


def test_text_format_is_masked_too():
    stream = io.StringIO()
    handler = logs.make_handler("text", stream)
    record = logging.LogRecord("gateway", logging.ERROR, __file__, 1,
                               "lookup of %s failed", ("11223344595",), None)
    handler.handle(record)
    assert "***-***-445 95" in stream.getvalue()
    assert "11223344595" not in stream.getvalue()
    with pytest.raises(ValueError, match="json or text"):
        logs.make_handler("xml")


def test_create_app_installs_one_handler_however_many_apps(make):
    make(log_format="text")
    make()
    ours = [h for h in logging.getLogger().handlers if h.get_name() == logs.HANDLER_NAME]
    assert len(ours) == 1
    assert isinstance(ours[0].formatter, logs.JsonFormatter)


# --- body limits --------------------------------------------------------------------------

def test_a_chunked_body_over_the_limit_is_413(make):
    gateway = make(max_body_bytes=1000)
    body = json.dumps(load_fixture("valid/practitioner-ivanova.json")).encode()
    assert len(body) > 1000
    response = gateway.client.post(
        "/fhir/Practitioner", input_stream=io.BytesIO(body),
        headers={**gateway.headers(), "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413
    assert _issue(response)["code"] == "too-long"


def test_a_chunked_body_within_the_limit_is_read_whole(make):
    gateway = make()
    body = json.dumps(load_fixture("valid/practitioner-ivanova.json")).encode()
    response = gateway.client.post(
        "/fhir/Practitioner", input_stream=io.BytesIO(body),
        headers={**gateway.headers(), "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 201


def test_too_many_json_values_is_413(make):
    gateway = make(max_json_elements=30)
    resource = load_fixture("valid/practitioner-ivanova.json")
    response = gateway.client.post("/fhir/Practitioner", data=json.dumps(resource),
                                   headers=gateway.headers())
    assert response.status_code == 413
    issue = _issue(response)
    assert issue["code"] == "too-long"
    assert "JSON values" in issue["diagnostics"]
    assert make(max_json_elements=1000).client.post(
        "/fhir/Practitioner", data=json.dumps(resource),
        headers=gateway.headers()).status_code == 201


def test_json_values_are_counted_outside_strings():
    assert fhir._json_shape('{"a": [1, 2]}') == (2, 4)
    assert fhir._json_shape('{"a": "[[{,,,]]"}') == (1, 2)
    assert fhir._json_shape("[[[[1]]]]") == (4, 5)
    assert fhir._json_shape("[1,[2,3],{}]") == (2, 6)
    assert fhir._json_shape('"text"') == (0, 1)


def test_xml_deeper_than_the_limit_is_400(make):
    gateway = make(max_xml_depth=3)
    body = fhir.to_xml_bytes(load_fixture("valid/practitioner-ivanova.json"))
    response = gateway.client.post("/fhir/Practitioner", data=body,
                                   headers=gateway.headers(**{"Content-Type": FHIR_XML}))
    assert response.status_code == 400
    assert "XML nesting too deep" in _issue(response)["diagnostics"]
    gateway = make()
    response = gateway.client.post("/fhir/Practitioner", data=body,
                                   headers=gateway.headers(**{"Content-Type": FHIR_XML}))
    assert response.status_code == 201


def test_a_bundle_with_too_many_entries_is_413_naming_bundle_entry(make):
    bundle = load_fixture("bundles/elmk-transaction.json")
    gateway = make(max_bundle_entries=len(bundle["entry"]) - 1)
    response = gateway.client.post("/fhir", data=json.dumps(bundle, ensure_ascii=False),
                                   headers=gateway.headers())
    assert response.status_code == 413
    issue = _issue(response)
    assert issue["expression"] == ["Bundle.entry"]
    assert str(len(bundle["entry"])) in issue["details"]["text"]
    assert make(max_bundle_entries=len(bundle["entry"])).client.post(
        "/fhir", data=json.dumps(bundle, ensure_ascii=False),
        headers=gateway.headers()).status_code == 200


def test_the_page_size_cap_is_a_setting(make):
    gateway = make(max_page_size=5)
    bundle = gateway.get("/fhir/Practitioner?_count=50").get_json()
    assert "_count=5" in next(link["url"] for link in bundle["link"]
                              if link["relation"] == "self")
    warnings = [entry for entry in bundle.get("entry", [])
                if entry.get("search", {}).get("mode") == "outcome"]
    assert "_count is limited to 5" in json.dumps(warnings)


def test_too_many_includes_is_400(make):
    gateway = make(max_includes=2)
    include = "_include=PractitionerRole:practitioner"
    response = gateway.get("/fhir/PractitionerRole?" + "&".join(
        [include, "_include=PractitionerRole:organization",
         "_revinclude=PractitionerRole:practitioner"]))
    assert response.status_code == 400
    issue = _issue(response)
    assert issue["expression"] == ["_include"]
    assert "limit 2" in issue["diagnostics"]
    assert gateway.get("/fhir/PractitionerRole?" + include).status_code == 200


def test_the_attachment_limit_is_a_setting(make):
    report = load_fixture("valid/diagnosticreport-petrova-periodic-exam.json")
    gateway = make(max_attachment_bytes=100)
    response = gateway.client.post("/fhir/DiagnosticReport",
                                   data=json.dumps(report, ensure_ascii=False),
                                   headers=gateway.headers())
    assert response.status_code == 422
    assert any("presentedForm" in expression for issue in response.get_json()["issue"]
               for expression in issue.get("expression", []))


# --- rate limit per client ----------------------------------------------------------------

def test_a_client_over_its_rate_gets_429_with_retry_after(make):
    gateway = make(rate_limit_per_minute=60, rate_limit_burst=3)
    assert [gateway.get("/fhir/Patient").status_code for _ in range(3)] == [200] * 3
    response = gateway.get("/fhir/Patient")
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    issue = _issue(response)
    assert issue["code"] == "throttled"
    assert "60" in issue["details"]["text"]
    assert response.headers["X-Request-Id"]
    # another client is not affected, nor the public endpoints
    _, other = create_client(gateway.engine, "other", "admin")
    assert gateway.client.get("/fhir/Patient",
                              headers={"Authorization": f"Bearer {other}"}).status_code == 200
    assert all(gateway.get("/fhir/metadata").status_code == 200 for _ in range(5))


def test_a_zero_rate_means_no_limit(make):
    gateway = make(rate_limit_per_minute=0, rate_limit_burst=1)
    assert {gateway.get("/fhir/Patient").status_code for _ in range(5)} == {200}


def test_memory_bucket_refills_with_time():
    now = [1000.0]
    bucket = MemoryRateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [bucket.take("c") for _ in range(2)] == [0, 0]
    assert bucket.take("c") == pytest.approx(1.0)
    assert bucket.take("other") == 0
    now[0] += 0.5
    assert bucket.take("c") == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take("c") == 0
    now[0] += 3600
    assert [bucket.take("c") for _ in range(3)][:2] == [0, 0]     # never more than the burst


# --- failed authentications per address ---------------------------------------------------

def test_an_address_with_too_many_failed_logins_gets_429_before_its_token_is_checked(make):
    gateway = make(auth_failures_limit=3, auth_failures_window_seconds=300)
    attacker, neighbour = "10.0.0.66", "10.0.0.7"
    bad = {"Authorization": "Bearer wrong"}
    for _ in range(3):
        assert gateway.client.get("/fhir/Patient", headers=bad,
                                  environ_base={"REMOTE_ADDR": attacker}).status_code == 401
    blocked = gateway.get("/fhir/Patient", address=attacker)        # even with a good token
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["Retry-After"]) <= 300
    assert _issue(blocked)["code"] == "throttled"
    assert gateway.client.get("/fhir/metadata",
                              environ_base={"REMOTE_ADDR": attacker}).status_code == 429
    # another address is not affected, and its successes do not free the first
    assert gateway.get("/fhir/Patient", address=neighbour).status_code == 200
    assert gateway.get("/fhir/Patient", address=attacker).status_code == 429


def test_public_endpoints_do_not_count_as_failures(make):
    gateway = make(auth_failures_limit=2)
    for _ in range(5):
        assert gateway.client.get("/fhir/metadata").status_code == 200
    assert gateway.get("/fhir/Patient").status_code == 200


def test_memory_failure_window_passes():
    now = [0.0]
    throttle = MemoryFailureThrottle(limit=2, window_seconds=60, clock=lambda: now[0])
    throttle.failed("a")
    now[0] = 10
    throttle.failed("a")
    assert throttle.blocked("a") == pytest.approx(50)      # the window began at 0
    assert throttle.blocked("b") == 0
    now[0] = 60
    assert throttle.blocked("a") == 0
    throttle.failed("a")
    assert throttle.blocked("a") == 0                        # a new window, one failure


# --- Redis: shared by processes -----------------------------------------------------------

@pytest.fixture
def redis_prefix():
    redis = pytest.importorskip("redis")
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        connection.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    prefix = f"gw-test:{uuid.uuid4().hex}:"
    yield prefix
    for key in connection.scan_iter(prefix + "*"):
        connection.delete(key)
    connection.close()


def test_the_rate_limit_is_shared_through_redis(tmp_path, sqlite_url, redis_prefix):
    settings = {"redis_url": REDIS_URL, "redis_key_prefix": redis_prefix,
                "rate_limit_per_minute": 1, "rate_limit_burst": 4}
    first = Gateway(tmp_path, sqlite_url, **settings)
    second = Gateway(tmp_path, sqlite_url, token=first.token, **settings)   # one database
    try:
        codes = [gateway.get("/fhir/Patient").status_code
                 for gateway in (first, second, first, second)]
        assert codes == [200] * 4
        for gateway in (first, second):
            response = gateway.get("/fhir/Patient")
            assert response.status_code == 429
            assert int(response.headers["Retry-After"]) >= 1
    finally:
        first.close_redis()
        second.close_redis()


def test_failed_logins_are_counted_across_processes_in_redis(tmp_path, sqlite_url,
                                                             redis_prefix):
    settings = {"redis_url": REDIS_URL, "redis_key_prefix": redis_prefix,
                "auth_failures_limit": 2, "auth_failures_window_seconds": 60}
    first = Gateway(tmp_path, sqlite_url, **settings)
    second = Gateway(tmp_path, sqlite_url, token=first.token, **settings)
    bad = {"Authorization": "Bearer wrong"}
    try:
        for gateway in (first, second):
            assert gateway.client.get("/fhir/Patient", headers=bad).status_code == 401
        response = first.get("/fhir/Patient")
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert second.get("/fhir/Patient", address="10.1.1.1").status_code == 200
    finally:
        first.close_redis()
        second.close_redis()


def test_an_unreachable_redis_fails_open_with_a_warning(make, caplog):
    gateway = make(redis_url="redis://127.0.0.1:1/0", rate_limit_burst=1,
                   auth_failures_limit=1)
    with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
        assert [gateway.get("/fhir/Patient").status_code for _ in range(3)] == [200] * 3
    assert "Redis unreachable" in caplog.text


# --- PostgreSQL statement timeout ---------------------------------------------------------

def test_a_statement_over_the_timeout_is_503_not_500(tmp_path, postgres_database):
    gateway = Gateway(tmp_path, postgres_database, request_timeout_seconds=1)
    try:
        with gateway.engine.connect() as conn:       # after the migrations too
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "1s"

        @gateway.app.get("/slow")
        def slow():
            with gateway.engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(3)"))
            return "done"

        response = gateway.get("/slow")
        assert response.status_code == 503
        issue = _issue(response)
        assert issue["code"] == "transient"
        assert "1 s" in issue["diagnostics"]
    finally:
        empty_postgres(gateway.engine)
        gateway.engine.dispose()
