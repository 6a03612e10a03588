"""Encryption at rest of stored resource bodies, on SQLite and PostgreSQL.

With a key configured the `content` column holds no plaintext while every way out
(read, vread, search and includes, history, $export NDJSON, the legacy XML export,
the Bundles sent upstream) returns the plain data; keys rotate (`gateway keys
reencrypt`); a missing or wrong key, an altered body and a body moved into another
row are refused with an error naming the key, never the content.
"""
from __future__ import annotations

import base64
import io
import json
import os

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from gateway import signing
from gateway.app import create_app
from gateway.cli import main
from gateway.delivery import outbox
from gateway.export import legacy
from gateway.store import encryption
from gateway.store.clients import create_client
from gateway.store.clock import utcnow
from gateway.store.encryption import BrokenSeal, Keyring, KeyringError, UnknownKey
from gateway.store.schema import outbox_bundles, resource_versions, search_string
from tests.conftest import FHIR_JSON, empty_postgres, load_fixture
from tests.test_bulk_export import download, export

KEY_A = encryption.new_key_line("key-a")       # made per test session, never committed
KEY_B = encryption.new_key_line("key-b")
SNILS = "14831576274"
FAMILY = "Иванова"
SAMPLES = ["organization-msk-clinic", "practitioner-ivanova",
           "practitionerrole-ivanova-therapist"]


@pytest.fixture
def make_app(database_url, tmp_path):
    """make_app(keys, active="") → an app on the test's database with those keys."""
    apps = []

    def _make(keys: str, active: str = ""):
        app = create_app({"data_dir": str(tmp_path / "data"), "database_url": database_url,
                          "log_level": "WARNING", "encryption_keys": keys,
                          "encryption_active_key": active})
        apps.append(app)
        return app
    yield _make
    if apps:
        empty_postgres(apps[-1].extensions["gateway"].engine)
    for app in apps:
        app.extensions["gateway"].engine.dispose()


def auth_of(app) -> dict:
    _, token = create_client(app.extensions["gateway"].engine, "enc-admin", "admin")
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


def put(app, auth, resource: dict) -> None:
    response = app.test_client().put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                                     data=json.dumps(resource, ensure_ascii=False),
                                     headers=auth)
    assert response.status_code in (200, 201), response.get_json()


def get(app, auth, path: str):
    return app.test_client().get(path, headers=auth)


def raw_rows(app) -> list:
    with app.extensions["gateway"].engine.connect() as conn:
        return conn.execute(select(resource_versions.c.resource_type, resource_versions.c.id,
                                   resource_versions.c.version, resource_versions.c.content,
                                   resource_versions.c.key_id)
                            .order_by(resource_versions.c.seq)).all()


def key_ids(app) -> set:
    return {row.key_id for row in raw_rows(app) if row.content is not None}


def written(app) -> dict:
    """The samples, and a second version of Иванова; the auth headers."""
    auth = auth_of(app)
    for name in SAMPLES:
        put(app, auth, load_fixture(f"valid/{name}.json"))
    ivanova = load_fixture("valid/practitioner-ivanova.json")
    ivanova["telecom"] = ivanova["telecom"][:1]
    put(app, auth, ivanova)
    return auth


# --- the whole way through, encrypted ----------------------------------------------------

def test_nothing_plain_is_stored_and_everything_reads_plain(backend, make_app, tmp_path):
    app = make_app(KEY_A)
    auth = written(app)
    rows = raw_rows(app)
    assert len(rows) == 4
    for row in rows:
        assert row.key_id == "key-a"
        for secret in (FAMILY, SNILS, "ivanova", "Practitioner", "resourceType"):
            assert secret not in row.content
    with app.extensions["gateway"].engine.connect() as conn:   # the index is unaffected
        assert "иванова" in conn.execute(select(search_string.c.value)).scalars().all()

    read = get(app, auth, "/fhir/Practitioner/prac-ivanova")
    assert read.status_code == 200
    assert read.json["name"][0]["family"] == FAMILY
    assert read.json["meta"]["versionId"] == "2"
    assert len(read.json["telecom"]) == 1
    first = get(app, auth, "/fhir/Practitioner/prac-ivanova/_history/1").json
    assert first["identifier"][0]["value"] == SNILS
    assert len(first["telecom"]) == 2

    for query in ("name=иванова", f"identifier=urn:oid:1.2.643.2.69.1.1.1.6.223|{SNILS}"):
        bundle = get(app, auth, f"/fhir/Practitioner?{query}"
                                "&_revinclude=PractitionerRole:practitioner").json
        assert [e["resource"]["name"][0]["family"] for e in bundle["entry"]
                if e["search"]["mode"] == "match"] == [FAMILY]
        assert [e["resource"]["id"] for e in bundle["entry"]
                if e["search"]["mode"] == "include"] == ["role-ivanova-therapist"]
    bundle = get(app, auth, "/fhir/PractitionerRole?_include=PractitionerRole:practitioner"
                            "&_include=PractitionerRole:organization").json
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {
        "PractitionerRole", "Practitioner", "Organization"}
    lines = get(app, auth, "/fhir/Practitioner?name=иванова&_format=ndjson") \
        .get_data(as_text=True).splitlines()
    assert json.loads(lines[0])["name"][0]["family"] == FAMILY

    history = get(app, auth, "/fhir/Practitioner/prac-ivanova/_history").json
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert all(e["resource"]["name"][0]["family"] == FAMILY for e in history["entry"])
    everything = get(app, auth, "/fhir/_history").json
    assert len(everything["entry"]) == 4
    assert all("resource" in e for e in everything["entry"])

    gateway = app.extensions["gateway"]
    found = download(app.test_client(), auth, export(app.test_client(), auth, gateway))
    assert found["Practitioner"][0]["name"][0]["family"] == FAMILY
    assert found["Practitioner"][0]["meta"]["versionId"] == "2"

    out = io.BytesIO()
    legacy.write_legacy(gateway.engine, "frmr", out, signing.generate_key(tmp_path / "keys"))
    assert FAMILY.encode("utf-8") in out.getvalue()
    assert SNILS.encode() in out.getvalue()


def test_the_bundles_sent_upstream_carry_the_plain_resources(backend, make_app):
    app = make_app(KEY_A)
    written(app)
    engine = app.extensions["gateway"].engine
    formed, _ = outbox.form(engine, utcnow(), 100, lambda bundle, _org: bundle)
    assert formed
    with engine.connect() as conn:
        bodies = [json.loads(b) for b in conn.execute(select(outbox_bundles.c.body)).scalars()]
    resources = [e["resource"] for b in bodies for e in b["entry"] if "resource" in e]
    assert FAMILY in [r["name"][0]["family"] for r in resources
                      if r["resourceType"] == "Practitioner"]


def test_with_encryption_off_bodies_are_plain_and_have_no_key_id(backend, make_app):
    app = make_app("")
    auth = written(app)
    rows = raw_rows(app)
    assert {row.key_id for row in rows} == {None}
    assert FAMILY in rows[1].content
    assert json.loads(rows[1].content)["id"] == "prac-ivanova"
    assert get(app, auth, "/fhir/Practitioner/prac-ivanova").json["name"][0]["family"] == FAMILY


def test_the_suites_switch_reaches_the_shared_app_fixture(app, put):
    """GATEWAY_TEST_ENCRYPTION=1 (tests/conftest.py) runs the other suites encrypted."""
    put(load_fixture("valid/practitioner-ivanova.json"))
    expected = "test-session" if os.environ.get("GATEWAY_TEST_ENCRYPTION") == "1" else None
    assert key_ids(app) == {expected}


# --- rotation ------------------------------------------------------------------------------

def test_rotation_keeps_old_rows_readable_and_reencrypt_moves_them(backend, make_app,
                                                                   database_url, tmp_path):
    plain = make_app("")                            # before encryption was switched on
    auth = auth_of(plain)
    put(plain, auth, load_fixture("valid/organization-msk-clinic.json"))
    under_a = make_app(KEY_A)
    put(under_a, auth, load_fixture("valid/practitioner-ivanova.json"))
    both = make_app(f"{KEY_A},{KEY_B}", active="key-b")
    assert get(both, auth, "/fhir/Practitioner/prac-ivanova").json["name"][0]["family"] \
        == FAMILY
    changed = load_fixture("valid/practitioner-ivanova.json")
    changed["gender"] = "unknown"
    put(both, auth, changed)
    assert [row.key_id for row in raw_rows(both)] == [None, "key-a", "key-b"]

    result = CliRunner().invoke(main, ["keys", "reencrypt", "--batch-size", "1"], env={
        "GATEWAY_DATABASE_URL": database_url, "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_ENCRYPTION_KEYS": f"{KEY_B},{KEY_A}", "GATEWAY_ENCRYPTION_ACTIVE_KEY": ""})
    assert result.exit_code == 0, result.output
    assert "2 stored versions re-encrypted" in result.output
    assert key_ids(both) == {"key-b"}
    assert encryption.reencrypt(both.extensions["gateway"].engine) == 0   # nothing left

    only_b = make_app(KEY_B)
    assert get(only_b, auth, "/fhir/Organization/org-msk-clinic").status_code == 200
    assert get(only_b, auth, "/fhir/Practitioner/prac-ivanova/_history/1") \
        .json["name"][0]["family"] == FAMILY
    assert get(only_b, auth, "/fhir/Practitioner/prac-ivanova").json["gender"] == "unknown"
    for row in raw_rows(only_b):
        assert FAMILY not in row.content
        assert "org-msk-clinic" not in row.content


def test_reencrypt_without_a_key_says_so(backend, make_app, database_url, tmp_path):
    make_app("")
    result = CliRunner().invoke(main, ["keys", "reencrypt"], env={
        "GATEWAY_DATABASE_URL": database_url, "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_ENCRYPTION_KEYS": ""})
    assert result.exit_code != 0
    assert "No encryption key is configured" in result.output


# --- refusals --------------------------------------------------------------------------------

def assert_refused(response, *named: str) -> None:
    assert response.status_code == 500
    text = response.get_data(as_text=True)
    for name in named:
        assert name in text
    assert FAMILY not in text
    assert SNILS not in text


def test_a_row_under_a_key_no_longer_configured_is_a_clear_error(backend, make_app):
    auth = written(make_app(KEY_A))
    without_a = make_app(KEY_B)
    response = get(without_a, auth, "/fhir/Practitioner/prac-ivanova")
    assert_refused(response, "'key-a'", "not configured", "Practitioner/prac-ivanova/_history/2")
    assert_refused(get(without_a, auth, "/fhir/Practitioner?name=иванова"), "'key-a'")
    assert_refused(get(without_a, auth, "/fhir/_history"), "'key-a'")


def test_a_wrong_key_under_the_same_id_is_refused_not_garbage(backend, make_app):
    auth = written(make_app(KEY_A))
    impostor = make_app(encryption.new_key_line("key-a"))
    assert_refused(get(impostor, auth, "/fhir/Practitioner/prac-ivanova"),
                   "fails authentication", "'key-a'")


def test_an_altered_body_is_refused(backend, make_app):
    app = make_app(KEY_A)
    auth = written(app)
    engine = app.extensions["gateway"].engine
    stored = next(r for r in raw_rows(app) if r.id == "prac-ivanova" and r.version == 2)
    raw = bytearray(base64.b64decode(stored.content))
    raw[-20] ^= 0x01                                # one bit of the ciphertext
    with engine.begin() as conn:
        conn.execute(update(resource_versions).where(
            resource_versions.c.id == "prac-ivanova", resource_versions.c.version == 2)
            .values(content=base64.b64encode(bytes(raw)).decode()))
    assert_refused(get(app, auth, "/fhir/Practitioner/prac-ivanova"), "fails authentication")
    assert get(app, auth, "/fhir/Practitioner/prac-ivanova/_history/1").status_code == 200


def test_a_body_moved_into_another_row_is_refused(backend, make_app):
    app = make_app(KEY_A)
    auth = written(app)
    engine = app.extensions["gateway"].engine
    rows = {(r.id, r.version): r.content for r in raw_rows(app)}
    with engine.begin() as conn:                    # v1 of Иванова's body as her v2
        conn.execute(update(resource_versions).where(
            resource_versions.c.id == "prac-ivanova", resource_versions.c.version == 2)
            .values(content=rows[("prac-ivanova", 1)]))
        conn.execute(update(resource_versions).where(      # and into the clinic's row
            resource_versions.c.id == "org-msk-clinic")
            .values(content=rows[("prac-ivanova", 1)]))
    assert_refused(get(app, auth, "/fhir/Practitioner/prac-ivanova"), "fails authentication")
    assert_refused(get(app, auth, "/fhir/Organization/org-msk-clinic"), "fails authentication")


# --- the keyring and its settings (no database) ---------------------------------------------

def test_seal_and_open():
    keyring = Keyring.parse(f"{KEY_A},{KEY_B}")
    assert keyring.active == "key-a"
    assert keyring.key_ids == ["key-a", "key-b"]
    sealed, kid = keyring.seal("Иванова 148-315-762 74", "Practitioner/p/_history/1")
    again, _ = keyring.seal("Иванова 148-315-762 74", "Practitioner/p/_history/1")
    assert kid == "key-a"
    assert sealed != again
    assert len(base64.b64decode(sealed)) == 12 + len("Иванова 148-315-762 74".encode()) + 16
    assert keyring.open(sealed, "key-a", "Practitioner/p/_history/1") == \
        "Иванова 148-315-762 74"
    with pytest.raises(BrokenSeal):
        keyring.open(sealed, "key-a", "Practitioner/q/_history/1")
    with pytest.raises(BrokenSeal):
        keyring.open("not base64!", "key-a")
    with pytest.raises(UnknownKey, match="'key-c'"):
        keyring.open(sealed, "key-c")
    assert Keyring.parse(f"{KEY_A},{KEY_B}", "key-b").active == "key-b"


def test_without_keys_the_keyring_is_the_identity():
    keyring = Keyring.parse("")
    assert keyring.active is None
    assert keyring.seal("plain") == ("plain", None)
    assert keyring.open("plain", None) == "plain"
    with pytest.raises(UnknownKey):
        keyring.open("c2VhbGVk", "key-a")


@pytest.mark.parametrize(("keys", "active", "message"), [
    ("short:" + base64.b64encode(b"x" * 16).decode(), "", "16 bytes"),
    ("long:" + base64.b64encode(b"x" * 33).decode(), "", "exactly 32"),
    ("bad:###", "", "not valid base64"),
    ("no-colon", "", "not `kid:base64key`"),
    (f"{KEY_A},{KEY_A}", "", "listed twice"),
    ("bad id:" + base64.b64encode(b"x" * 32).decode(), "", "key id"),
    (KEY_A, "key-z", "'key-z'"),
    ("", "key-z", "none configured"),
])
def test_unusable_settings_stop_the_start(tmp_path, keys, active, message):
    with pytest.raises(KeyringError, match=message):
        create_app({"data_dir": str(tmp_path / "data"), "log_level": "WARNING",
                    "database_url": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                    "encryption_keys": keys, "encryption_active_key": active})


def test_settings_never_show_the_keys(tmp_path):
    app = create_app({"data_dir": str(tmp_path / "data"), "log_level": "WARNING",
                      "database_url": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                      "encryption_keys": KEY_A})
    try:
        assert KEY_A.split(":")[1] not in repr(app.extensions["gateway"].settings)
    finally:
        app.extensions["gateway"].engine.dispose()


def test_new_encryption_key_prints_a_usable_line():
    result = CliRunner().invoke(main, ["keys", "new-encryption-key", "--kid", "k2027"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith("k2027:")
    assert Keyring.parse(line).active == "k2027"
    assert CliRunner().invoke(main, ["keys", "new-encryption-key", "--kid", "a:b"]).exit_code
