"""Shared fixtures: the app on each database, an authorised client, the sample files.

Tests that take `backend` run twice: on SQLite and on PostgreSQL. PostgreSQL is
the server at GATEWAY_TEST_POSTGRES_URL (default: 127.0.0.1:5432, database
`test`, trust auth); each test session makes a database of its own there and
drops it at the end. Where no server answers, those runs are skipped with the
reason shown — unless GATEWAY_TEST_REQUIRE_POSTGRES=1 (set by .ci/run where a
server is available), which turns the skip into a failure.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gateway.app import create_app
from gateway.store.clients import create_client
from gateway.store.schema import metadata

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
FHIR_JSON = "application/fhir+json"


def load_fixture(relative: str) -> dict:
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh PostgreSQL database for this session, or a skip saying why not."""
    admin_url = make_url(POSTGRES_URL)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # no server, no driver, no permission: all mean "skip"
        reason = f"PostgreSQL not reachable at {admin_url.render_as_string()}: " \
                 f"{type(exc).__name__}"
        if os.environ.get("GATEWAY_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (GATEWAY_TEST_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield admin_url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def fhir_schema():
    """The official FHIR R4 XML schema (fixtures/xsd), to validate XML responses against."""
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(FIXTURES / "xsd" / "fhir-single.xsd"), parser))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, tmp_path, request) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.sqlite3'}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def app(database_url, tmp_path):
    app = create_app({"data_dir": str(tmp_path / "data"), "database_url": database_url,
                      "log_level": "WARNING"})
    yield app
    engine = app.extensions["gateway"].engine
    empty_postgres(engine)
    engine.dispose()


def empty_postgres(engine) -> None:
    """Empty every table, so the next test on the shared PostgreSQL database starts clean."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def token(app) -> str:
    _, token = create_client(app.extensions["gateway"].engine, "test-admin", "admin")
    return token


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth(token) -> dict:
    """Headers of an authorised FHIR JSON request."""
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


@pytest.fixture
def put(client, auth):
    """PUT a resource dict with an id (create or update); the response, checked for 200/201."""
    def _put(resource: dict):
        response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                              data=json.dumps(resource, ensure_ascii=False), headers=auth)
        assert response.status_code in (200, 201), response.get_json()
        return response
    return _put


@pytest.fixture
def post(client, auth):
    """POST a resource dict as FHIR JSON: post(resource, **headers)."""
    def _post(resource: dict, path: str | None = None, **headers):
        return client.post(path or f"/fhir/{resource['resourceType']}",
                           data=json.dumps(resource, ensure_ascii=False),
                           headers={**auth, **headers})
    return _post


# --- encryption at rest: GATEWAY_TEST_ENCRYPTION=1 runs any suite with bodies encrypted ---
@pytest.fixture(scope="session", autouse=True)
def _encryption_at_rest_for_the_session():
    """With GATEWAY_TEST_ENCRYPTION=1 every app and CLI call of the session seals stored
    bodies with a key made for the session (through GATEWAY_ENCRYPTION_KEYS; overrides
    given to create_app still win)."""
    if os.environ.get("GATEWAY_TEST_ENCRYPTION") != "1":
        yield
        return
    from gateway.store.encryption import new_key_line
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATEWAY_ENCRYPTION_KEYS", new_key_line("test-session"))
        yield
# --- end encryption at rest -------------------------------------------------------------
