"""The attacker's view: every route as the wrong client, forged tokens, injection strings.

What a real attacker would try through the HTTP API, and what must hold each
time: no 500, nothing of another clinic in the answer, nothing of it changed.
- every route of the app (read from its URL map, so a new route is attacked as
  soon as it exists) called by the Petersburg clinic with the Moscow clinic's
  ids, resources, jobs, submissions and webhooks;
- tampered, forged, replayed and revoked tokens;
- injection strings in every search parameter of every type.
Hostile bodies (XXE, billion laughs, huge and deep bodies) are in
tests/test_hostile_input.py and tests/test_protection.py; tenancy rules one by
one in tests/test_tenancy.py.
"""
from __future__ import annotations

import json

import pytest

from gateway.app import create_app
from gateway.export import bulk
from gateway.registry import RESOURCE_TYPES, searchable
from gateway.store.clients import create_client, revoke, rotate
from tests.conftest import empty_postgres, load_fixture
from tests.tenants import MSK, MSK_IDS, SPB_IDS, Tenants, filled

pytestmark = pytest.mark.attack


@pytest.fixture
def app(database_url, tmp_path):
    """The app with the per-client rate limit off: the sweeps below send thousands of
    requests as one client (the limit itself is tested in tests/test_protection.py)."""
    app = create_app({"data_dir": str(tmp_path / "data"), "database_url": database_url,
                      "log_level": "WARNING", "rate_limit_per_minute": 0})
    yield app
    empty_postgres(app.extensions["gateway"].engine)
    app.extensions["gateway"].engine.dispose()


@pytest.fixture
def tenants(app, client) -> Tenants:
    return filled(app, client)


def _no_leak(response, ids: set[str]) -> None:
    assert response.status_code != 500, response.get_data(as_text=True)
    body = response.get_json(silent=True)
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "link"}    # links echo the query
        text = json.dumps(body, ensure_ascii=False)
    else:
        text = response.get_data(as_text=True)
    leaked = {rid for rid in ids if rid in text}
    assert not leaked, f"{sorted(leaked)} leaked: {text[:300]}"


def _snapshot(tenants: Tenants) -> dict[str, str]:
    """The Moscow clinic's resources as the admin sees them: version per resource."""
    found = {}
    for name in ("Organization", "Practitioner", "PractitionerRole", "Patient",
                 "Observation", "DiagnosticReport", "Immunization"):
        bundle = tenants.get("admin", f"/fhir/{name}?_count=100").get_json()
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            if resource["id"] in MSK_IDS:
                found[f"{name}/{resource['id']}"] = resource["meta"]["versionId"]
    return found


# --- every route as the wrong client -----------------------------------------------------

def _targets(tenants: Tenants, app) -> dict:
    """Things of the Moscow clinic an attacker from Petersburg would aim at."""
    kicked = tenants.get("msk", "/fhir/Patient/$export", Prefer="respond-async")
    job_id = kicked.headers["Content-Location"].rsplit("/", 1)[1]
    gateway = app.extensions["gateway"]
    runner = bulk.Runner(gateway.engine, gateway.settings)
    while runner.run_once():
        pass
    webhook = tenants.post("msk", "/api/v1/webhooks", {"url": "http://127.0.0.1:9/hook"},
                           **{"Content-Type": "application/json"}).get_json()
    submissions = tenants.get("msk", "/api/v1/submissions").get_json()["submissions"]
    return {"resource_type": "Patient", "rid": "pat-petrova", "vid": "1", "job_id": job_id,
            "name": "Patient-1.ndjson", "sid": submissions[0]["id"], "register": "elmk",
            "pk": webhook.get("id") or webhook.get("webhook", {}).get("id") or 1,
            "identifier": "any", "filename": "x"}


BODIES = {
    "fhir.bundle": {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Patient/pat-petrova"}}]},
    "intake.ingest": {"oid": MSK, "fullName": "Захват", "inn": "7707452131",
                      "ogrn": "1187746123454", "regionCode": "77"},
}


def _routes(app) -> list[tuple[str, str, str]]:
    routes = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((rule.rule, method, rule.endpoint))
    return routes


def test_every_route_as_the_wrong_clinic_answers_without_leaking_or_changing(
        backend, tenants, app):
    targets = _targets(tenants, app)
    before = _snapshot(tenants)
    tried = 0
    for rule, method, endpoint in _routes(app):
        url = rule
        for key, value in targets.items():
            url = url.replace(f"<int:{key}>", str(value)).replace(f"<path:{key}>", str(value)) \
                .replace(f"<{key}>", str(value))
        if endpoint == "intake.ingest":
            url = "/api/v1/ingest/frmo-organization"
        body = BODIES.get(endpoint, load_fixture("valid/patient-petrova.json"))
        if endpoint == "fhir.create":
            body = dict(body)
            body.pop("id", None)
        response = tenants.http.open(url, method=method,
                                     data=json.dumps(body, ensure_ascii=False),
                                     headers={**tenants.headers("spb"),
                                              "Prefer": "respond-async",
                                              "If-None-Exist": "identifier=x|1"})
        # an id the attacker named himself may be echoed; nothing else may appear
        named = url + json.dumps(body)
        _no_leak(response, {rid for rid in MSK_IDS if rid not in named})
        if method in ("PUT", "DELETE") and "pat-petrova" in url:
            assert response.status_code in (403, 404), (method, url, response.status_code)
        if endpoint.startswith("admin.") or endpoint in ("audit.search", "audit.read") \
                or "outbox" in endpoint:
            assert response.status_code == 403, (url, response.status_code)
        tried += 1
    assert tried >= 40
    assert _snapshot(tenants) == before


def test_every_read_route_as_a_region_elsewhere_leaks_nothing(backend, tenants, app):
    targets = _targets(tenants, app)
    for rule, method, endpoint in _routes(app):
        if method != "GET" or endpoint in ("static",):
            continue
        url = rule
        for key, value in targets.items():
            url = url.replace(f"<int:{key}>", str(value)).replace(f"<{key}>", str(value))
        _no_leak(tenants.get("region78", url), {rid for rid in MSK_IDS if rid not in url})


# --- tokens ---------------------------------------------------------------------------------

def _token_attacks(good: str, revoked: str, rotated_out: str) -> dict[str, dict]:
    return {
        "no header": {},
        "empty bearer": {"Authorization": "Bearer "},
        "scheme only": {"Authorization": "Bearer"},
        "basic scheme": {"Authorization": f"Basic {good}"},
        "last character changed": {
            "Authorization": f"Bearer {good[:-1]}{'A' if good[-1] != 'A' else 'B'}"},
        "truncated": {"Authorization": f"Bearer {good[:-4]}"},
        "extended": {"Authorization": f"Bearer {good}x"},
        "prefix only": {"Authorization": "Bearer gw_"},
        "upper-cased": {"Authorization": f"Bearer {good.upper()}"},
        "sql in token": {"Authorization": "Bearer ' OR '1'='1"},
        "sql comment": {"Authorization": "Bearer gw_x'--"},
        "wildcard": {"Authorization": "Bearer %"},
        "very long": {"Authorization": "Bearer " + "A" * 20000},
        "unicode": {"Authorization": "Bearer токен"},
        "the token's hash": {"Authorization": "Bearer " + __import__("hashlib").sha256(
            good.encode()).hexdigest()},
        "revoked client": {"Authorization": f"Bearer {revoked}"},
        "rotated-out token": {"Authorization": f"Bearer {rotated_out}"},
        "token in query only": {},
        "two tokens": {"Authorization": f"Bearer {good} {good}"},
        "alg none jwt": {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."},
    }


def test_forged_tampered_revoked_and_rotated_tokens_are_401(backend, app, client):
    engine = app.extensions["gateway"].engine
    good = create_client(engine, "victim", "admin")[1]
    victim_revoked, revoked = create_client(engine, "gone", "admin")
    revoke(engine, victim_revoked.pk)
    rotating, rotated_out = create_client(engine, "rotating", "admin")
    assert rotate(engine, rotating.pk)
    attacks = _token_attacks(good, revoked, rotated_out)
    for number, (name, headers) in enumerate(attacks.items()):
        # each attack from its own address, so the failed-login throttle stays out of it
        environ = {"REMOTE_ADDR": f"10.9.{number // 250}.{number % 250 + 1}"}
        url = "/fhir/Patient" + (f"?access_token={good}" if name == "token in query only" else "")
        response = client.get(url, headers=headers, environ_base=environ)
        assert response.status_code == 401, (name, response.status_code)
        assert response.get_json()["resourceType"] == "OperationOutcome"
        assert good not in response.get_data(as_text=True)
    assert client.get("/fhir/Patient", headers={"Authorization": f"Bearer {good}"}) \
        .status_code == 200


# --- injection strings in every search parameter -------------------------------------------

INJECTIONS = [
    "'", "\"", "' OR '1'='1", "1' OR 1=1 --", "x'; DROP TABLE resources; --",
    "\\' UNION SELECT content FROM resource_versions --", "%", "_", "%25", "*", "\\",
    "a%' OR '%'='", "1;SELECT pg_sleep(1)", "\x00", "ﾠ", "\u202e", "Ｏ’ＲＥＩＬＬＹ",
    "\ud7ff", "e\u0301", "${jndi:ldap://x}", "{{7*7}}", "<script>alert(1)</script>",
    "a" * 300, "../../etc/passwd", "gt' OR 1=1", "urn:oid:1|' OR 1=1",
]


def _search_urls() -> list[str]:
    urls = []
    for name in RESOURCE_TYPES:
        spec = searchable(name)
        if spec is None:
            continue
        for param in spec.search:
            urls.append(f"/fhir/{name}?{param.name}=")
    return urls


@pytest.mark.parametrize("injection", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_strings_in_every_search_parameter_are_harmless(backend, tenants, injection):
    from urllib.parse import quote
    for base in _search_urls():
        for modifier in ("", ":exact", ":contains", ":missing", ":not"):
            url = base.replace("=", f"{modifier}=", 1)
            response = tenants.get("spb", url + quote(injection, safe=""))
            assert response.status_code in (200, 400), (url, injection, response.status_code)
            if response.status_code == 200:
                ids = {e["resource"]["id"] for e in response.get_json().get("entry", [])}
                assert ids <= SPB_IDS, (url, injection)
    assert tenants.get("admin", "/fhir/Patient/pat-petrova").status_code == 200
