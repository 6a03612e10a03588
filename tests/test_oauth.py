"""OAuth 2.0 client credentials with JWT assertions (SMART Backend Services) and scopes.

Keys are made per test session with `cryptography` (RSA for RS384, P-384 for ES384);
the assertions are signed with joserfc, as a client would.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway import oauth
from gateway.oauth import OAuthError
from gateway.store import clients
from gateway.store.clock import utcnow
from tests.conftest import FHIR_JSON, load_fixture

TOKEN_URL = "http://localhost/auth/token"
FORM = "application/x-www-form-urlencoded"
MIS_OID = "1.2.643.5.1.13.13.12.4.77.100"


def _pem(private_key) -> bytes:
    return private_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


@pytest.fixture(scope="session")
def keys() -> dict:
    """Private keys by algorithm, plus a stranger's key of each kind."""
    made = {
        "RS384": RSAKey.import_key(_pem(rsa.generate_private_key(65537, 2048)),
                                   parameters={"kid": "rsa-1"}),
        "ES384": ECKey.import_key(_pem(ec.generate_private_key(ec.SECP384R1())),
                                  parameters={"kid": "ec-1"}),
    }
    made["stranger-RS384"] = RSAKey.import_key(
        _pem(rsa.generate_private_key(65537, 2048)), parameters={"kid": "rsa-1"})
    return made


def public_jwks(*keys) -> dict:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@pytest.fixture
def engine(app):
    return app.extensions["gateway"].engine


@pytest.fixture
def backend_client(engine, keys):
    """An admin backend client allowed every scope, with its JWKS registered."""
    client, _ = clients.create_client(engine, "backend", "admin")
    assert clients.set_jwks(engine, client.pk, public_jwks(keys["RS384"], keys["ES384"]))
    return client


def assertion(key, alg: str, client_id, *, aud=TOKEN_URL, exp_in=120, jti=None,
              header=None, **claims) -> str:
    now = int(time.time())
    body = {"iss": str(client_id), "sub": str(client_id), "aud": aud, "exp": now + exp_in,
            "jti": jti or uuid.uuid4().hex, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid, **(header or {})}, body, key,
                      algorithms=[alg])


def token_request(client, signed: str | None, scope="system/*.cruds", **form):
    data = {"grant_type": "client_credentials",
            "client_assertion_type": oauth.ASSERTION_TYPE,
            "client_assertion": signed, "scope": scope, **form}
    return client.post("/auth/token", data={k: v for k, v in data.items() if v is not None})


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


def issued(engine, client, scope: str, **kwargs) -> str:
    return oauth.issue(engine, client, oauth.normalise(scope), **kwargs)["access_token"]


# --- the whole flow -------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_token_flow_and_use_on_fhir(client, backend_client, keys, alg):
    response = token_request(client, assertion(keys[alg], alg, backend_client.pk),
                             scope="system/Practitioner.cruds system/Organization.read")
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/Organization.rs system/Practitioner.cruds"
    assert body["access_token"].startswith(clients.TOKEN_PREFIX)

    headers = bearer(body["access_token"])
    created = client.post("/fhir/Practitioner", headers=headers,
                          data=json.dumps(load_fixture("valid/practitioner-ivanova.json")))
    assert created.status_code == 201, created.get_json()
    found = client.get("/fhir/Practitioner", headers=headers).get_json()
    assert found["total"] == 1
    assert client.get("/fhir/Organization", headers=headers).status_code == 200


def test_smart_configuration(client):
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        response = client.get(path)                    # public: no Authorization
        assert response.status_code == 200, path
        config = response.get_json()
        assert config["token_endpoint"] == TOKEN_URL
        assert config["grant_types_supported"] == ["client_credentials"]
        assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
        assert "system/*.rs" in config["scopes_supported"]
        assert config["capabilities"] == ["client-confidential-asymmetric"]


def test_base_url_sets_the_audience(database_url, tmp_path, keys):
    from gateway.app import create_app
    app = create_app({"data_dir": str(tmp_path / "d"), "database_url": database_url,
                      "log_level": "WARNING", "base_url": "https://gw.example.ru/fhir"})
    engine = app.extensions["gateway"].engine
    backend, _ = clients.create_client(engine, "b", "admin")
    clients.set_jwks(engine, backend.pk, public_jwks(keys["ES384"]))
    http = app.test_client()
    config = http.get("/.well-known/smart-configuration").get_json()
    assert config["token_endpoint"] == "https://gw.example.ru/auth/token"
    local = token_request(http, assertion(keys["ES384"], "ES384", backend.pk))
    assert local.status_code == 401
    right = token_request(http, assertion(keys["ES384"], "ES384", backend.pk,
                                          aud="https://gw.example.ru/auth/token"))
    assert right.status_code == 200, right.get_json()
    from tests.conftest import empty_postgres
    empty_postgres(engine)
    engine.dispose()


# --- every refusal of the assertion ------------------------------------------------------

def _hs256_with_public_key(keys, pk) -> str:
    """Algorithm confusion: HS256 keyed with the RSA public key's PEM (made by hand, as an
    attacker would: joserfc itself refuses an asymmetric key as an HMAC secret)."""
    public = keys["RS384"].as_pem(private=False)
    signing_input = "{}.{}".format(
        _b64({"alg": "HS256", "kid": "rsa-1"}),
        _b64({"iss": str(pk), "sub": str(pk), "aud": TOKEN_URL,
              "exp": int(time.time()) + 60, "jti": uuid.uuid4().hex}))
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _alg_none(keys, pk) -> str:
    claims = {"iss": str(pk), "sub": str(pk), "aud": TOKEN_URL,
              "exp": int(time.time()) + 60, "jti": uuid.uuid4().hex}
    return f"{_b64({'alg': 'none', 'kid': 'rsa-1'})}.{_b64(claims)}."


def _b64(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


REFUSALS = {
    "wrong aud": lambda k, pk: assertion(k["RS384"], "RS384", pk, aud="https://evil/token"),
    "expired": lambda k, pk: assertion(k["RS384"], "RS384", pk, exp_in=-120),
    "exp too far": lambda k, pk: assertion(k["RS384"], "RS384", pk, exp_in=3600),
    "no exp": lambda k, pk: jwt.encode(
        {"alg": "ES384", "kid": "ec-1"}, {"iss": str(pk), "sub": str(pk), "aud": TOKEN_URL,
                                          "jti": "x"}, k["ES384"], algorithms=["ES384"]),
    "no jti": lambda k, pk: jwt.encode(
        {"alg": "ES384", "kid": "ec-1"}, {"iss": str(pk), "sub": str(pk), "aud": TOKEN_URL,
                                          "exp": int(time.time()) + 60},
        k["ES384"], algorithms=["ES384"]),
    "unknown kid": lambda k, pk: assertion(k["RS384"], "RS384", pk, header={"kid": "nope"}),
    "signed by another key": lambda k, pk: assertion(k["stranger-RS384"], "RS384", pk),
    "alg none": _alg_none,
    "HS256 with the public key": _hs256_with_public_key,
    "RS384 key named for ES384": lambda k, pk: assertion(
        k["ES384"], "ES384", pk, header={"kid": "rsa-1"}),
    "iss differs from sub": lambda k, pk: assertion(k["RS384"], "RS384", pk, sub="999"),
    "unknown client id": lambda k, pk: assertion(k["RS384"], "RS384", pk + 1000),
    "client id not a number": lambda k, pk: assertion(k["RS384"], "RS384", "backend"),
    "not a JWT": lambda k, pk: "not-a-jwt",
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_assertion_refused(client, backend_client, keys, case):
    response = token_request(client, REFUSALS[case](keys, backend_client.pk))
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"] == "invalid_client"
    assert response.headers["Cache-Control"] == "no-store"
    assert "access_token" not in response.get_json()


def test_unknown_revoked_and_forged_read_alike(client, engine, backend_client, keys):
    """Whether a client id exists is never told: every pre-signature failure reads the same."""
    keyless, _ = clients.create_client(engine, "no-keys", "admin")
    answers = [token_request(client, signed).get_json() for signed in (
        assertion(keys["RS384"], "RS384", backend_client.pk + 1000),
        assertion(keys["stranger-RS384"], "RS384", backend_client.pk),
        assertion(keys["RS384"], "RS384", backend_client.pk, header={"kid": "nope"}),
        assertion(keys["RS384"], "RS384", keyless.pk),
    )]
    assert {a["error_description"] for a in answers} == {oauth.UNVERIFIABLE}
    clients.revoke(engine, backend_client.pk)
    revoked = token_request(client, assertion(keys["RS384"], "RS384", backend_client.pk))
    assert revoked.status_code == 401
    assert revoked.get_json()["error_description"] == oauth.UNVERIFIABLE


def test_replayed_jti_is_refused(client, backend_client, keys):
    signed = assertion(keys["ES384"], "ES384", backend_client.pk, jti="once")
    assert token_request(client, signed).status_code == 200
    again = token_request(client, signed)
    assert again.status_code == 401
    assert "jti" in again.get_json()["error_description"]
    # the same jti from a fresh assertion is still a replay
    fresh = assertion(keys["RS384"], "RS384", backend_client.pk, jti="once")
    assert token_request(client, fresh).status_code == 401


def test_clock_skew_leeway(client, backend_client, keys):
    just_expired = assertion(keys["ES384"], "ES384", backend_client.pk, exp_in=-30)
    assert token_request(client, just_expired).status_code == 200
    a_bit_far = assertion(keys["ES384"], "ES384", backend_client.pk, exp_in=330)
    assert token_request(client, a_bit_far).status_code == 200
    future_iat = assertion(keys["ES384"], "ES384", backend_client.pk,
                           iat=int(time.time()) + 600)
    assert token_request(client, future_iat).status_code == 401


def test_jti_of_one_client_does_not_block_another(client, engine, backend_client, keys):
    other, _ = clients.create_client(engine, "other", "admin")
    clients.set_jwks(engine, other.pk, public_jwks(keys["ES384"]))
    for pk in (backend_client.pk, other.pk):
        response = token_request(client, assertion(keys["ES384"], "ES384", pk, jti="shared"))
        assert response.status_code == 200, response.get_json()


def test_revoked_client_loses_its_tokens(client, engine, backend_client, keys):
    access = token_request(client, assertion(keys["RS384"], "RS384", backend_client.pk)) \
        .get_json()["access_token"]
    assert client.get("/fhir/Practitioner", headers=bearer(access)).status_code == 200
    clients.revoke(engine, backend_client.pk)
    assert client.get("/fhir/Practitioner", headers=bearer(access)).status_code == 401


# --- the request itself ---------------------------------------------------------------------

@pytest.mark.parametrize(("form", "error"), [
    ({"grant_type": "password"}, "unsupported_grant_type"),
    ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
    ({"grant_type": None}, "invalid_request"),
    ({"client_assertion_type": "urn:something:else"}, "invalid_client"),
    ({"scope": None}, "invalid_request"),
])
def test_request_errors(client, backend_client, keys, form, error):
    response = token_request(client, assertion(keys["RS384"], "RS384", backend_client.pk),
                             **form)
    assert response.get_json()["error"] == error
    assert response.status_code == (401 if error == "invalid_client" else 400)
    assert response.headers["Cache-Control"] == "no-store"


def test_form_encoding_and_repeats(client, backend_client, keys):
    signed = assertion(keys["RS384"], "RS384", backend_client.pk)
    as_json = client.post("/auth/token", json={"grant_type": "client_credentials"})
    assert as_json.get_json()["error"] == "invalid_request"
    repeated = client.post("/auth/token", content_type=FORM, data=(
        "grant_type=client_credentials&grant_type=client_credentials"
        f"&client_assertion_type={oauth.ASSERTION_TYPE}&client_assertion={signed}"
        "&scope=system/*.rs"))
    assert repeated.get_json()["error"] == "invalid_request"
    other_id = token_request(client, signed, client_id=str(backend_client.pk + 1))
    assert other_id.get_json()["error"] == "invalid_client"


def test_scope_not_allowed_is_invalid_scope(client, engine, keys):
    narrow, _ = clients.create_client(engine, "narrow", "mis", organizations=[MIS_OID],
                                      scopes="system/Practitioner.rs")
    clients.set_jwks(engine, narrow.pk, public_jwks(keys["ES384"]))
    refused = token_request(client, assertion(keys["ES384"], "ES384", narrow.pk),
                            scope="system/Organization.rs")
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid_scope"
    # asking for more than allowed grants the intersection
    wide = token_request(client, assertion(keys["ES384"], "ES384", narrow.pk),
                         scope="system/*.cruds")
    assert wide.get_json()["scope"] == "system/Practitioner.rs"
    for bad in ("patient/Patient.rs", "user/*.cruds", "openid", "system/Practitioner.rx"):
        response = token_request(client, assertion(keys["ES384"], "ES384", narrow.pk),
                                 scope=bad)
        assert response.get_json()["error"] == "invalid_scope", bad


def test_expired_token_is_refused(client, engine, backend_client):
    past = utcnow() - timedelta(hours=1)
    stale = issued(engine, backend_client, "system/*.rs", now=past)
    response = client.get("/fhir/Practitioner", headers=bearer(stale))
    assert response.status_code == 401
    fresh = issued(engine, backend_client, "system/*.rs")
    assert client.get("/fhir/Practitioner", headers=bearer(fresh)).status_code == 200


def test_token_lifetime_setting(database_url, tmp_path, keys):
    from gateway.app import create_app
    from tests.conftest import empty_postgres
    app = create_app({"data_dir": str(tmp_path / "d"), "database_url": database_url,
                      "log_level": "WARNING", "oauth_token_seconds": 60,
                      "oauth_assertion_max_seconds": 30})
    engine = app.extensions["gateway"].engine
    backend, _ = clients.create_client(engine, "b", "admin")
    clients.set_jwks(engine, backend.pk, public_jwks(keys["ES384"]))
    http = app.test_client()
    too_far = token_request(http, assertion(keys["ES384"], "ES384", backend.pk, exp_in=200))
    assert too_far.status_code == 401
    ok = token_request(http, assertion(keys["ES384"], "ES384", backend.pk, exp_in=30))
    assert ok.get_json()["expires_in"] == 60
    empty_postgres(engine)
    engine.dispose()


# --- scope enforcement ----------------------------------------------------------------------

def _forbidden(response, scope: str) -> None:
    assert response.status_code == 403, response.get_json()
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert scope in outcome["issue"][0]["details"]["text"]
    assert "Нужн" in outcome["issue"][0]["details"]["text"]
    assert scope in outcome["issue"][0]["diagnostics"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_practitioner_rs_token(client, engine, backend_client, put):
    put(load_fixture("valid/practitioner-ivanova.json") | {"id": "ivanova"})
    headers = bearer(issued(engine, backend_client, "system/Practitioner.rs"))
    assert client.get("/fhir/Practitioner?name=иванова", headers=headers).status_code == 200
    assert client.get("/fhir/Practitioner/ivanova", headers=headers).status_code == 200
    assert client.get("/fhir/Practitioner/ivanova/_history", headers=headers).status_code == 200
    assert client.post("/fhir/Practitioner/_search", data={"name": "иванова"},
                       headers={"Authorization": headers["Authorization"]}).status_code == 200
    _forbidden(client.get("/fhir/Organization", headers=headers), "system/Organization.s")
    _forbidden(client.get("/fhir/Organization/x", headers=headers), "system/Organization.r")
    _forbidden(client.put("/fhir/Practitioner/ivanova", headers=headers,
                          data=json.dumps(load_fixture("valid/practitioner-ivanova.json")
                                          | {"id": "ivanova"})),
               "system/Practitioner.u")
    _forbidden(client.delete("/fhir/Practitioner/ivanova", headers=headers),
               "system/Practitioner.d")
    _forbidden(client.get("/fhir/_history", headers=headers), "system/Organization.rs")
    _forbidden(client.get("/fhir/PractitionerRole?_include=PractitionerRole:practitioner",
                          headers=headers), "system/PractitionerRole.s")
    _forbidden(client.get("/fhir/Practitioner?_revinclude=PractitionerRole:practitioner",
                          headers=headers), "system/PractitionerRole.s")
    _forbidden(client.get("/api/v1/submissions", headers=headers), "system/Organization.r")
    admin = client.get("/api/v1/admin/clients", headers=headers)      # never for OAuth
    assert admin.status_code == 403
    assert "OAuth" in admin.get_json()["issue"][0]["diagnostics"]


def test_includes_need_read_on_their_targets(client, engine, backend_client):
    headers = bearer(issued(engine, backend_client, "system/PractitionerRole.rs"))
    _forbidden(client.get("/fhir/PractitionerRole?_include=PractitionerRole:organization",
                          headers=headers), "system/Organization.r")
    roles_and_people = bearer(issued(engine, backend_client,
                                     "system/PractitionerRole.rs system/Practitioner.r"))
    assert client.get("/fhir/PractitionerRole?_include=PractitionerRole:practitioner",
                      headers=roles_and_people).status_code == 200


def test_read_search_everything_cannot_write(client, engine, backend_client):
    headers = bearer(issued(engine, backend_client, "system/*.rs"))
    assert client.get("/fhir/Organization", headers=headers).status_code == 200
    assert client.get("/fhir/_history", headers=headers).status_code == 200
    assert client.get("/api/v1/submissions", headers=headers).status_code == 200
    practitioner = load_fixture("valid/practitioner-ivanova.json")
    _forbidden(client.post("/fhir/Practitioner", headers=headers,
                           data=json.dumps(practitioner)), "system/Practitioner.c")
    _forbidden(client.post("/fhir/Practitioner", headers={
        **headers, "If-None-Exist": "identifier=x|y"}, data=json.dumps(practitioner)),
        "system/Practitioner.c")
    _forbidden(client.put("/fhir/Practitioner?identifier=x|y", headers=headers,
                          data=json.dumps(practitioner)), "system/Practitioner.u")
    _forbidden(client.post("/api/v1/ingest/frmr-person", headers=headers, data="{}"),
               "system/Practitioner.cu")
    transaction = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": practitioner, "request": {"method": "POST", "url": "Practitioner"}}]}
    _forbidden(client.post("/fhir", headers=headers, data=json.dumps(transaction)),
               "system/Practitioner.c")
    assert client.get("/fhir/Practitioner", headers=headers).get_json()["total"] == 0


def test_bundle_entries_checked_by_type_and_method(client, engine, backend_client):
    headers = bearer(issued(engine, backend_client, "system/Practitioner.cu"))
    practitioner = load_fixture("valid/practitioner-ivanova.json")
    organization = load_fixture("valid/organization-msk-clinic.json")
    mixed = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": practitioner, "request": {"method": "POST", "url": "Practitioner"}},
        {"resource": organization, "request": {"method": "POST", "url": "Organization"}}]}
    _forbidden(client.post("/fhir", headers=headers, data=json.dumps(mixed)),
               "system/Organization.c")
    disguised = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": organization, "request": {"method": "POST", "url": "Practitioner"}}]}
    _forbidden(client.post("/fhir", headers=headers, data=json.dumps(disguised)),
               "system/Organization.c")
    deleting = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Practitioner/x"}}]}
    _forbidden(client.post("/fhir", headers=headers, data=json.dumps(deleting)),
               "system/Practitioner.d")
    only_practitioner = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": practitioner, "request": {"method": "POST", "url": "Practitioner"}}]}
    response = client.post("/fhir", headers=headers, data=json.dumps(only_practitioner))
    assert response.status_code == 200, response.get_json()


def test_bulk_export_scopes(client, engine, backend_client):
    async_headers = {"Prefer": "respond-async"}
    narrow = bearer(issued(engine, backend_client, "system/Practitioner.rs"))
    _forbidden(client.get("/fhir/$export", headers={**narrow, **async_headers}),
               "system/Organization.rs")
    _forbidden(client.get("/fhir/Organization/$export", headers={**narrow, **async_headers}),
               "system/Organization.rs")
    assert client.get("/fhir/$export?_type=Practitioner",
                      headers={**narrow, **async_headers}).status_code == 202
    assert client.get("/fhir/Practitioner/$export",
                      headers={**narrow, **async_headers}).status_code == 202
    wide = bearer(issued(engine, backend_client, "system/*.read"))
    assert client.get("/fhir/$export", headers={**wide, **async_headers}).status_code == 202


def test_static_tokens_are_not_scope_limited(client, engine, auth):
    practitioner = load_fixture("valid/practitioner-ivanova.json")
    assert client.post("/fhir/Practitioner", headers=auth,
                       data=json.dumps(practitioner)).status_code == 201
    assert client.get("/fhir/Organization", headers=auth).status_code == 200
    assert client.get("/api/v1/admin/clients", headers=auth).status_code == 200


# --- scopes, pure ---------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "canonical"), [
    ("system/Practitioner.rs", "system/Practitioner.rs"),
    ("system/Practitioner.sr", "system/Practitioner.rs"),
    ("system/Practitioner.read", "system/Practitioner.rs"),
    ("system/Practitioner.write", "system/Practitioner.cud"),
    ("system/Practitioner.*", "system/Practitioner.cruds"),
    ("system/*.read system/Patient.write", "system/*.rs system/Patient.cruds"),
    ("system/Patient.r system/Patient.s", "system/Patient.rs"),
    ("system/*.rs system/Patient.r", "system/*.rs"),
    ("system/Observation.c system/Organization.r", "system/Organization.r "
                                                   "system/Observation.c"),
])
def test_normalise(given, canonical):
    assert oauth.normalise(given) == canonical


@pytest.mark.parametrize("bad", ["patient/Patient.rs", "user/*.cruds", "system/Patient.rr",
                                 "system/Patient.x", "system/patient.rs", "system/Patient",
                                 "system/Observation.rs?category=laboratory", "launch",
                                 "system/Patient."])
def test_bad_scopes(bad):
    with pytest.raises(OAuthError) as caught:
        oauth.parse_scopes(bad)
    assert caught.value.error == "invalid_scope"


@pytest.mark.parametrize(("requested", "allowed", "granted"), [
    ("system/*.cruds", "system/*.cruds", "system/*.cruds"),
    ("system/*.cruds", "system/Practitioner.rs", "system/Practitioner.rs"),
    ("system/Practitioner.cruds", "system/*.rs", "system/Practitioner.rs"),
    ("system/*.rs system/Patient.c", "system/*.r system/Patient.cruds",
     "system/*.r system/Patient.crs"),
    ("system/Practitioner.rs system/Encounter.rs", "system/*.cruds",
     "system/Practitioner.rs system/Encounter.rs"),
])
def test_grant(requested, allowed, granted):
    assert oauth.grant(requested, allowed) == granted


def test_grant_empty_is_invalid_scope():
    with pytest.raises(OAuthError) as caught:
        oauth.grant("system/Organization.cud", "system/*.rs")
    assert caught.value.error == "invalid_scope"


def test_permits_and_missing():
    assert oauth.permits("system/Practitioner.rs", "Practitioner", "s")
    assert not oauth.permits("system/Practitioner.rs", "Practitioner", "u")
    assert not oauth.permits("system/Practitioner.rs", "Organization", "r")
    assert oauth.permits("system/*.r system/Patient.s", "Patient", "s")
    assert oauth.permits("system/*.rs", "*", "r")
    assert not oauth.permits("system/Practitioner.rs", "*", "r")
    assert oauth.missing("system/*.r", [("*", "rs")]) == ["system/*.s"]
    assert oauth.missing("system/Practitioner.r", [("Practitioner", "rs"),
                                                   ("Organization", "r")]) == \
        ["system/Organization.r", "system/Practitioner.s"]
    assert oauth.missing("system/*.cruds", [("*", "rs"), ("Patient", "d")]) == []
