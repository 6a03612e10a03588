"""The `gateway` command and the settings it reads."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.settings import load_settings
from tests.conftest import FIXTURES


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    """A data directory of its own for each CLI test, through GATEWAY_* variables."""
    values = {"GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_LOG_LEVEL": "WARNING"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


# --- settings --------------------------------------------------------------------------

def test_settings_come_from_the_defaults_file():
    settings = load_settings(environ={})
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith("var/gateway.sqlite3")


def test_environment_variables_override_the_file():
    settings = load_settings(environ={
        "GATEWAY_DATABASE_URL": "postgresql+psycopg://u@h/db",
        "GATEWAY_UPSTREAM_URL": "http://upstream/fhir", "GATEWAY_DATA_DIR": "/srv/gw",
        "GATEWAY_AUTO_MIGRATE": "false", "GATEWAY_MAX_BODY_BYTES": "2048"})
    assert settings.effective_database_url == "postgresql+psycopg://u@h/db"
    assert settings.upstream_url == "http://upstream/fhir"
    assert settings.data_dir == "/srv/gw"
    assert settings.auto_migrate is False
    assert settings.max_body_bytes == 2048


def test_overrides_win_over_the_environment():
    settings = load_settings({"max_json_depth": 10}, environ={"GATEWAY_MAX_JSON_DEPTH": "20"})
    assert settings.max_json_depth == 10


@pytest.mark.parametrize(("overrides", "environ"), [
    ({"no_such_setting": 1}, {}),
    ({}, {"GATEWAY_AUTO_MIGRATE": "perhaps"}),
])
def test_bad_settings_are_refused(overrides, environ):
    with pytest.raises(ValueError, match="GATEWAY_AUTO_MIGRATE|no_such_setting"):
        load_settings(overrides, environ=environ)


# --- commands --------------------------------------------------------------------------

def test_db_upgrade_creates_the_schema(runner, env, tmp_path):
    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "gateway.sqlite3").exists()


def test_clients_create_prints_a_working_token_on_its_last_line(runner, env):
    result = runner.invoke(main, ["clients", "create", "--name", "МИС Поликлиника 1",
                                  "--role", "mis", "--org", "1.2.643.5.1.13.13.12.2.77.7777"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    from gateway.app import create_app
    app = create_app()
    response = app.test_client().get("/fhir/Practitioner/x",
                                     headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404          # authenticated; the resource is just missing


def test_clients_create_refuses_an_unknown_role(runner, env):
    result = runner.invoke(main, ["clients", "create", "--name", "x", "--role", "root"])
    assert result.exit_code != 0


def test_clients_create_refuses_a_definition_that_would_see_too_much(runner, env):
    for args in (["--role", "mis"], ["--role", "mis", "--org", "not-an-oid"],
                 ["--role", "region", "--region", "Москва"], ["--role", "admin", "--org", "1.2.3"]):
        result = runner.invoke(main, ["clients", "create", "--name", "x", *args])
        assert result.exit_code == 2, (args, result.output)


def test_clients_list_rotate_and_revoke(runner, env):
    created = runner.invoke(main, ["clients", "create", "--name", "РЕГИЗ", "--role", "region",
                                   "--region", "77", "--access", "read"])
    old = created.output.strip().splitlines()[-1]
    client_id = created.output.split("(id ")[1].split(",")[0]
    listed = runner.invoke(main, ["clients", "list", "--json"])
    assert json.loads(listed.output)[0] | {"created": None} == {
        "id": int(client_id), "name": "РЕГИЗ", "role": "region", "organizations": [],
        "region": "77", "access": "read", "scopes": "system/*.cruds", "active": True,
        "oauth": False, "created": None, "revoked": None, "rotated": None}
    assert old not in listed.output
    rotated = runner.invoke(main, ["clients", "rotate", client_id])
    new = rotated.output.strip().splitlines()[-1]
    from gateway.app import create_app
    http = create_app().test_client()
    assert http.get("/fhir/Patient", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert http.get("/fhir/Patient", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert runner.invoke(main, ["clients", "revoke", client_id]).exit_code == 0
    assert http.get("/fhir/Patient", headers={"Authorization": f"Bearer {new}"}).status_code == 401
    assert runner.invoke(main, ["clients", "revoke", client_id]).exit_code == 1
    assert runner.invoke(main, ["clients", "rotate", client_id]).exit_code == 1


def test_tenancy_rebuild_recomputes_owners(runner, env):
    from sqlalchemy import delete, select

    from gateway.app import create_app
    from gateway.store.schema import resource_owners
    from tests import delivery_data as data
    gateway = create_app().extensions["gateway"]
    gateway.resources.create(data.organization(1), "Organization")
    with gateway.engine.begin() as conn:
        conn.execute(delete(resource_owners))
    result = runner.invoke(main, ["tenancy", "rebuild"])
    assert result.exit_code == 0, result.output
    assert "Owners recomputed for 1 resources." in result.output
    with gateway.engine.connect() as conn:
        owners = conn.execute(select(resource_owners.c.organization)).scalars().all()
    assert owners == [data.frmo_oid(1)]


def test_validate_accepts_a_valid_file(runner, env):
    result = runner.invoke(main, ["validate", str(FIXTURES / "valid/practitioner-ivanova.json")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["resourceType"] == "OperationOutcome"


def test_validate_prints_every_problem_and_fails(runner, env, tmp_path):
    case = json.loads((FIXTURES / "invalid/several-problems-at-once.json").read_text())
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(case["resource"], ensure_ascii=False))
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    outcome = json.loads(result.output)
    assert len([i for i in outcome["issue"] if i["severity"] == "error"]) >= 3


def test_validate_reads_xml(runner, env):
    result = runner.invoke(main, ["validate", str(FIXTURES / "hl7-xml/patient-example.xml")])
    assert result.exit_code == 0, result.output


def test_validate_reports_malformed_files(runner, env, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{broken")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert json.loads(result.output)["issue"][0]["code"] == "structure"


def test_nsi_load_adds_a_portal_book_that_the_gateway_then_uses(runner, env, tmp_path):
    source = tmp_path / "export"
    shutil.copytree(FIXTURES / "nsi-portal", source)
    result = runner.invoke(main, ["nsi", "load", str(source)])
    assert result.exit_code == 0, result.output
    assert "1.2.643.5.1.13.13.11.1002" in result.output
    from gateway.services import load_terminology
    books = load_terminology(load_settings())
    assert books.book("1.2.643.5.1.13.13.11.1002").has("109")


def test_nsi_load_reports_an_unreadable_export(runner, env, tmp_path):
    bad = tmp_path / "1.2.643.5.1.13.13.11.1002_9.7_part1"
    bad.write_text("not json")
    result = runner.invoke(main, ["nsi", "load", str(bad)])
    assert result.exit_code != 0


# --- delivery: keys, outbox, worker ---------------------------------------------------

def test_keys_generate_writes_a_key_into_the_data_dir_and_prints_its_kid(runner, env):
    from gateway import signing
    result = runner.invoke(main, ["keys", "generate", "--alg", "RS256"])
    assert result.exit_code == 0, result.output
    kid = result.output.strip().splitlines()[-1]
    keys_dir = load_settings().keys_path
    assert (keys_dir / f"{kid}.json").exists()
    assert [k["kid"] for k in signing.jwks(keys_dir)["keys"]] == [kid]
    listed = runner.invoke(main, ["keys", "list"])
    assert kid in listed.output
    assert runner.invoke(main, ["keys", "retire", kid]).exit_code == 0
    assert signing.jwks(keys_dir)["keys"] == []


def test_outbox_commands_show_and_replay_dead_bundles(runner, env):
    from gateway.app import create_app
    from tests import delivery_data as data

    gateway = create_app().extensions["gateway"]
    gateway.resources.create(data.organization(1), "Organization")
    gateway.engine.dispose()
    env_nowhere = {"GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9/fhir",
                   "GATEWAY_DELIVERY_MAX_ATTEMPTS": "1"}
    worked = runner.invoke(main, ["worker", "--once"], env=env_nowhere)
    assert worked.exit_code == 0, worked.output
    listed = runner.invoke(main, ["outbox", "list", "--state", "dead"])
    assert "Records: dead 1" in listed.output
    identifier = next(line.split()[0] for line in listed.output.splitlines()
                      if line.startswith("urn:uuid:"))
    assert "connection failed" in listed.output
    retried = runner.invoke(main, ["outbox", "retry", identifier])
    assert retried.output.strip() == f"{identifier}: pending"
    assert runner.invoke(main, ["worker", "--once"], env=env_nowhere).exit_code == 0
    requeued = runner.invoke(main, ["outbox", "requeue-dead"])
    assert requeued.output.strip() == "Requeued 1 dead Bundle(s)."
    assert runner.invoke(main, ["outbox", "retry", "nope"]).exit_code != 0


def test_the_worker_needs_an_upstream(runner, env):
    result = runner.invoke(main, ["worker", "--once"], env={"GATEWAY_UPSTREAM_URL": ""})
    assert result.exit_code != 0
    assert "upstream_url" in result.output
