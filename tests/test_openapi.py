"""The OpenAPI document of the non-FHIR endpoints (gateway/api/openapi.yaml).

It is a valid OpenAPI 3.1 document, served at /api/v1/openapi.json without a token; it
describes every route outside /fhir and nothing that is not a route, marks public exactly
the endpoints the app lets in without a token, and its examples match its schemas.

Then every operation is fuzzed with schemathesis, in process through WSGI: requests
generated from the document — valid ones, and in a second mode ones that break it (a
wrong type, a missing field, no token) — as the admin, as an MIS client and as an MIS
client with an OAuth token of read scopes, on SQLite and on PostgreSQL. Every answer
must be no 5xx, a status code the document lists for the operation, in the content type
it names, with a body matching its schema. The database is seeded first (records pushed
through intake, Bundles the worker failed to deliver to a closed port, webhooks, a
client with OAuth keys), and requests are also drawn from real ids, real records and
fresh signed assertions, so the answers with data are checked too. Hypothesis runs
derandomized (the same examples every run, for one version of the code) and keeps no
example database. The inputs the fuzz found answered with 500 are kept as plain cases.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway import oauth
from gateway.api.auth import PUBLIC_ENDPOINTS
from gateway.api.openapi import document
from gateway.app import create_app
from gateway.delivery.worker import Worker
from gateway.store.clients import create_client
from tests.conftest import FIXTURES, empty_postgres

DOC = document()
METHODS = ("get", "put", "post", "delete", "patch")
OPERATIONS = [(method, path) for path, item in DOC["paths"].items()
              for method in METHODS if method in item]
MIS_OID = "1.2.643.5.1.13.13.12.2.77.8517"
ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
# Examples per operation and generation mode: (backend, role) → count (≈ 30 s in all).
# `oauth` is an MIS client with an OAuth access token of scope system/*.rs (reads only).
EXAMPLES = {("sqlite", "admin"): 30, ("sqlite", "mis"): 15, ("sqlite", "oauth"): 8,
            ("postgresql", "admin"): 15, ("postgresql", "mis"): 8, ("postgresql", "oauth"): 4}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@schemathesis.serializer("text/csv")
def _csv(ctx, value) -> bytes:
    """A CSV body as generated (a string); schemathesis knows no CSV of its own."""
    return value.encode("utf-8") if isinstance(value, str) else json.dumps(value).encode()


# --- the document itself ---------------------------------------------------------------

def test_the_document_is_valid_openapi():
    validate(DOC)
    assert DOC["openapi"].startswith("3.1")


@pytest.fixture
def plain_app(tmp_path):
    app = create_app({"data_dir": str(tmp_path / "data"), "log_level": "WARNING",
                      "database_url": f"sqlite:///{tmp_path / 'gateway.sqlite3'}"})
    yield app
    app.extensions["gateway"].engine.dispose()


def test_it_is_served_as_json_without_a_token(plain_app):
    response = plain_app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == DOC


def _routes(app) -> dict[tuple[str, str], str]:
    """(OpenAPI path, method) → endpoint, for every route of the app."""
    found = {}
    for rule in app.url_map.iter_rules():
        path = ARGUMENT.sub(r"{\1}", rule.rule)         # /a/<int:pk> → /a/{pk}
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found[(path, method.lower())] = rule.endpoint
    return found


def test_every_route_outside_fhir_is_described_and_nothing_else(plain_app):
    routes = _routes(plain_app)
    outside_fhir = {key for key, endpoint in routes.items()
                    if not key[0].startswith("/fhir") and endpoint != "static"}
    described = {(path, method) for method, path in OPERATIONS}
    assert outside_fhir - described == set(), "routes missing from gateway/api/openapi.yaml"
    assert described - set(routes) == set(), "described in openapi.yaml but not routes"


def test_public_operations_are_exactly_the_public_endpoints(plain_app):
    routes = _routes(plain_app)
    for method, path in OPERATIONS:
        public = DOC["paths"][path][method].get("security", DOC["security"]) == []
        assert public == (routes[(path, method)] in PUBLIC_ENDPOINTS), f"{method} {path}"


def test_the_mappings_named_are_those_installed(plain_app):
    operation = DOC["paths"]["/api/v1/ingest/{name}"]["post"]
    named = next(p for p in operation["parameters"] if p["name"] == "name")["schema"]["enum"]
    assert sorted(named) == sorted(plain_app.extensions["gateway"].mappings)


def _examples():
    """(where, schema, example) of every JSON example in the document."""
    for path, item in DOC["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            where = f"{method.upper()} {path}"
            contents = [("request", operation.get("requestBody", {}).get("content", {}))]
            contents += [(status, response.get("content", {}))
                         for status, response in operation["responses"].items()]
            for parameter in operation.get("parameters", []):
                if "example" in parameter:
                    yield f"{where} {parameter['name']}", parameter["schema"], \
                        parameter["example"]
            for label, content in contents:
                for media_type, media in content.items():
                    if "example" in media and "json" in media_type:
                        yield f"{where} {label} {media_type}", media["schema"], \
                            media["example"]
    for name, response in DOC["components"]["responses"].items():
        for media_type, media in response.get("content", {}).items():
            if "example" in media and "json" in media_type:
                yield f"response {name}", media["schema"], media["example"]


@pytest.mark.parametrize(("where", "schema", "example"), list(_examples()),
                         ids=[where for where, _, _ in _examples()])
def test_every_example_matches_its_schema(where, schema, example):
    root = {**schema, "components": DOC["components"]}
    errors = sorted(OAS31Validator(root).iter_errors(example), key=str)
    assert not errors, f"{where}: {errors[0].message}"


# --- the fuzz --------------------------------------------------------------------------

@dataclass
class Fuzzed:
    """An app with data, the tokens of its clients, and requests that meet its data."""

    app: object
    backend: str
    tokens: dict[str, str]
    protected: set[int]                                 # the fuzzing clients' own ids
    # path → as_strategy arguments of valid requests: real ids, real records
    seeds: dict[str, list[dict]] = field(default_factory=dict)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("openapi-fuzz")
    url = f"sqlite:///{folder / 'gateway.sqlite3'}" if request.param == "sqlite" \
        else request.getfixturevalue("postgres_database")
    # Thousands of requests from one address, many refused on purpose: no rate limit and
    # no throttle of failed logins, or the fuzz would soon meet nothing but 429.
    app = create_app({"data_dir": str(folder / "data"), "database_url": url,
                      "log_level": "ERROR", "rate_limit_per_minute": 0,
                      "auth_failures_limit": 0})
    gateway = app.extensions["gateway"]
    admin, admin_token = create_client(gateway.engine, "fuzz-admin", "admin")
    mis, mis_token = create_client(gateway.engine, "fuzz-mis", "mis", [MIS_OID])
    key = ECKey.generate_key("P-384", parameters={"kid": "fuzz-1"})
    backend, _ = create_client(gateway.engine, "fuzz-oauth", "mis", [MIS_OID],
                               jwks={"keys": [key.as_dict(private=False)]})
    found = Fuzzed(app, request.param, {"admin": admin_token, "mis": mis_token},
                   {admin.pk, mis.pk, backend.pk})
    found.seeds["/auth/token"] = [
        {"body": _token_form(key, backend.pk, "system/*.cruds"),
         "media_type": "application/x-www-form-urlencoded"} for _ in range(2)]
    response = app.test_client().post("/auth/token",
                                      data=_token_form(key, backend.pk, "system/*.rs"))
    assert response.status_code == 200, response.get_json()
    found.tokens["oauth"] = response.get_json()["access_token"]
    _seed(found, gateway)
    others = [create_client(gateway.engine, f"fuzz-other-{n}", "region", region="78")[0].pk
              for n in range(3)]
    _ids(found, "/api/v1/admin/clients/{pk}", "pk", [*others, admin.pk, mis.pk])
    for action, pk in zip(("revoke", "rotate", "jwks"), others, strict=True):
        _ids(found, f"/api/v1/admin/clients/{{pk}}/{action}", "pk", [pk])
    yield found
    empty_postgres(gateway.engine)
    gateway.engine.dispose()


def _seed(found: Fuzzed, gateway) -> None:
    """Records through intake, their Bundles dead after one failed delivery, webhooks."""
    client = found.app.test_client()
    for role, name, sample in [("admin", "frmr-person", "valid-full.json"),
                               ("admin", "frmo-organization", "valid-full.json"),
                               ("mis", "elmk-record", "valid-array.json")]:
        body = json.loads((FIXTURES / "mappings" / name / sample).read_text(encoding="utf-8"))
        response = client.post(f"/api/v1/ingest/{name}", json=body,
                               headers=_auth(found, role))
        assert response.status_code == 200, response.get_json()
        found.seeds.setdefault("/api/v1/ingest/{name}", []).append(
            {"path_parameters": {"name": name}, "body": body, "media_type": "application/json"})
    found.seeds["/api/v1/ingest/{name}"].append(
        {"path_parameters": {"name": "frmr-person-csv"}, "media_type": "text/csv",
         "body": (FIXTURES / "mappings" / "frmr-person-csv" / "staff-utf8.csv")
         .read_text(encoding="utf-8-sig")})
    settings = gateway.settings.__class__(**{**gateway.settings.__dict__,
                                             "delivery_max_attempts": 1,
                                             "delivery_timeout": 0.5})
    Worker(gateway.engine, settings, upstream_url="http://127.0.0.1:9").drain()
    admin = _auth(found, "admin")
    sids = [s["id"] for s in client.get("/api/v1/submissions", headers=admin)
            .get_json()["submissions"]]
    bundles = [b["identifier"] for b in client.get("/api/v1/admin/outbox", headers=admin)
               .get_json()["bundles"]]
    assert sids
    assert bundles
    _ids(found, "/api/v1/submissions/{sid}", "sid", sids[:3])
    _ids(found, "/api/v1/admin/outbox/{identifier}/retry", "identifier", bundles[:2] + sids[:1])
    hooks = []
    for role in ("admin", "mis"):
        for number in range(3):
            response = client.post("/api/v1/webhooks", headers=_auth(found, role),
                                   json={"url": f"https://mis.example.ru/hook/{number}"})
            hooks.append(response.get_json()["id"])
    _ids(found, "/api/v1/webhooks/{pk}", "pk", hooks)


def _token_form(key: ECKey, client_id: int, scope: str) -> dict:
    """A token request with a fresh assertion (usable once: its jti is then spent)."""
    claims = {"iss": str(client_id), "sub": str(client_id), "jti": uuid.uuid4().hex,
              "aud": "http://localhost/auth/token", "exp": int(time.time()) + 240}
    signed = jwt.encode({"alg": "ES384", "kid": key.kid}, claims, key, algorithms=["ES384"])
    return {"grant_type": oauth.GRANT_TYPE, "client_assertion_type": oauth.ASSERTION_TYPE,
            "client_assertion": signed, "scope": scope}


def _ids(found: Fuzzed, path: str, name: str, values: list) -> None:
    found.seeds.setdefault(path, []).extend({"path_parameters": {name: v}} for v in values)


def _auth(found: Fuzzed, role: str, content_type: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {found.tokens[role]}"}
    return {**headers, "Content-Type": content_type} if content_type else headers


SCHEMA = schemathesis.openapi.from_dict(DOC)


def _strategy(found: Fuzzed, method: str, path: str, mode: GenerationMode):
    operation = SCHEMA[path][method.upper()]
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = st.one_of(strategy, *[operation.as_strategy(generation_mode=mode, **seed)
                                         for seed in found.seeds.get(path, [])])
    if path.endswith(("/revoke", "/rotate", "/jwks")):    # not the fuzzing clients' own
        strategy = strategy.filter(
            lambda case: case.path_parameters.get("pk") not in found.protected)
    return strategy


def _has_inputs(method: str, path: str) -> bool:
    """Something a negative case can break: parameters, a body, or a token."""
    operation = DOC["paths"][path][method]
    return bool(operation.get("parameters") or operation.get("requestBody")
                or operation.get("security", DOC["security"]))


def _json_documented(method: str, path: str, status: int) -> bool:
    response = DOC["paths"][path][method]["responses"].get(str(status), {})
    if "$ref" in response:
        response = DOC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return any("json" in media_type for media_type in response.get("content", {}))


@pytest.mark.parametrize("role", ["admin", "mis", "oauth"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS,
                         ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_fuzz_no_server_error_and_answers_as_documented(fuzzed, role, method, path):
    examples = EXAMPLES[(fuzzed.backend, role)]
    modes = [GenerationMode.POSITIVE]
    if _has_inputs(method, path):
        modes.append(GenerationMode.NEGATIVE)
    for mode in modes:
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                         HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])
        @given(case=_strategy(fuzzed, method, path, mode))
        def fuzz(case):
            # The token is added to every case; where a negative case leaves the header
            # out, schemathesis drops it again (401 is then the answer to check).
            response = case.call(app=fuzzed.app, headers=_auth(fuzzed, role))
            case.validate_response(response, checks=CHECKS)
            if _json_documented(method, path, response.status_code):
                json.loads(response.content)

        fuzz()


# Inputs the fuzz found answered with 500 (an overflow, a character PostgreSQL refuses,
# a URL or CSV the standard library cannot parse), kept as plain regression cases.
HUGE = 10**20
ONCE_500 = [
    ("get", f"/api/v1/admin/clients/{HUGE}", {}, 404),
    ("post", f"/api/v1/admin/clients/{HUGE}/revoke", {}, 404),
    ("delete", f"/api/v1/webhooks/{HUGE}", {}, 404),
    ("get", f"/api/v1/submissions?cursor={HUGE}", {}, 400),
    ("get", "/api/v1/submissions?cursor=%C2%B2", {}, 400),                 # "²".isdigit()
    ("get", "/api/v1/submissions?_count=%C2%B2", {}, 400),
    ("get", "/api/v1/admin/outbox?_count=%C2%B2", {}, 400),
    ("get", "/api/v1/submissions?since=0001-01-01T00:00:00%2B01:00", {}, 400),
    ("get", "/api/v1/export/legacy/frmr?since=0001-01-01T00:00:00%2B01:00", {}, 400),
    ("get", "/api/v1/export/legacy/frmr?since=9999-12-31T23:59:59-01:00", {}, 400),
    ("post", "/api/v1/ingest/frmr-person-csv",
     {"data": '"' + "x" * 200_000, "content_type": "text/csv"}, 400),    # csv field limit
    ("post", "/api/v1/webhooks", {"json": {"url": "http://[::1"}}, 400),
    ("post", "/api/v1/webhooks",
     {"json": {"url": "https://mis.example.ru/h", "secret": "\x00" * 20}}, 400),
    ("get", "/api/v1/submissions/%00", {}, 404),
    ("post", "/api/v1/admin/outbox/%00/retry", {}, 404),
    ("get", "/api/v1/submissions?organization=%00", {}, 400),
    ("get", "/api/v1/submissions?resource=Practitioner/%00", {}, 400),
    ("post", "/api/v1/admin/clients", {"json": {"name": "x\x00", "role": "admin"}}, 400),
    ("post", "/api/v1/admin/clients",
     {"json": {"name": "x", "role": "admin", "scopes": "\x00"}}, 400),
]


@pytest.mark.parametrize(("method", "url", "request_kwargs", "status"), ONCE_500,
                         ids=[f"{m.upper()} {u[:60]}" for m, u, _, _ in ONCE_500])
def test_inputs_that_once_gave_500(fuzzed, method, url, request_kwargs, status):
    response = getattr(fuzzed.app.test_client(), method)(
        url, headers=_auth(fuzzed, "admin"), **request_kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["resourceType"] == "OperationOutcome"


BODIES = [(method, path) for method, path in OPERATIONS
          if "requestBody" in DOC["paths"][path][method]]


@pytest.mark.parametrize(("method", "path"), BODIES, ids=[f"{m.upper()} {p}" for m, p in BODIES])
def test_a_body_over_the_limit_is_413_where_documented(tmp_path, method, path):
    app = create_app({"data_dir": str(tmp_path / "data"), "log_level": "WARNING",
                      "database_url": f"sqlite:///{tmp_path / 'gateway.sqlite3'}",
                      "max_body_bytes": 1000})
    _, token = create_client(app.extensions["gateway"].engine, "big", "admin")
    media_type = next(iter(DOC["paths"][path][method]["requestBody"]["content"]))
    url = path.replace("{name}", "frmr-person").replace("{pk}", "1")
    body = "x=" + "y" * 2000 if "form" in media_type else json.dumps({"url": "y" * 2000})
    response = app.test_client().open(url, method=method.upper(), data=body, headers={
        "Authorization": f"Bearer {token}", "Content-Type": media_type})
    assert response.status_code == 413
    assert "413" in DOC["paths"][path][method]["responses"]
    assert response.get_json()["issue"][0]["code"] == "too-long"
    app.extensions["gateway"].engine.dispose()
