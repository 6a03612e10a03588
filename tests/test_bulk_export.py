"""FHIR Bulk Data `$export` and `gateway export`, on SQLite and PostgreSQL.

The asynchronous pattern end to end (kick-off, polling, manifest, files,
cancel), what the files hold (every live resource once, `_type`, `_since`, the
store as of `transactionTime`), who may see a job, and the leases that keep one
job on one runner. Jobs are run in process with `Runner.run_once()`, as the
worker's export thread runs them.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner
from lxml import etree

from gateway.cli import main
from gateway.delivery.worker import Worker
from gateway.export import bulk, reader
from gateway.store.clients import create_client
from gateway.store.clock import utcnow
from tests.conftest import FHIR_JSON, FIXTURES

ASYNC = {"Prefer": "respond-async", "Accept": FHIR_JSON}
SAMPLES = sorted((FIXTURES / "valid").glob("*.json"))


@pytest.fixture
def gateway(app):
    return app.extensions["gateway"]


@pytest.fixture
def stored(client, auth) -> dict[str, set[str]]:
    """Every valid sample, stored under its own id: {type: {id, ...}}."""
    found: dict[str, set[str]] = {}
    for path in SAMPLES:
        resource = json.loads(path.read_text(encoding="utf-8"))
        response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                              data=json.dumps(resource, ensure_ascii=False), headers=auth)
        assert response.status_code == 201, response.json
        found.setdefault(resource["resourceType"], set()).add(resource["id"])
    return found


def kick_off(client, auth, path: str = "/fhir/$export", **headers):
    return client.get(path, headers={**auth, **ASYNC, **headers})


def status_url(response) -> str:
    assert response.status_code == 202, response.json
    return response.headers["Content-Location"]


def run_jobs(gateway, **overrides) -> None:
    settings = dataclasses.replace(gateway.settings, **overrides)
    runner = bulk.Runner(gateway.engine, settings)
    while runner.run_once():
        pass


def download(client, auth, manifest: dict) -> dict[str, list[dict]]:
    """Every file of a manifest, parsed: {type: [resource, ...]}."""
    found: dict[str, list[dict]] = {}
    for output in manifest["output"]:
        response = client.get(output["url"], headers=auth)
        try:
            assert response.status_code == 200
            assert response.mimetype == "application/fhir+ndjson"
            lines = response.get_data(as_text=True).splitlines()
        finally:
            response.close()
        resources = [json.loads(line) for line in lines]
        assert len(resources) == output["count"]
        assert {r["resourceType"] for r in resources} == {output["type"]}
        found.setdefault(output["type"], []).extend(resources)
    return found


def ids(found: dict[str, list[dict]]) -> dict[str, list[str]]:
    return {t: sorted(r["id"] for r in resources) for t, resources in found.items()}


def export(client, auth, gateway, path: str = "/fhir/$export") -> dict:
    """Kick off, run the job, and return the manifest."""
    url = status_url(kick_off(client, auth, path))
    run_jobs(gateway)
    response = client.get(url, headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


# --- kick-off --------------------------------------------------------------------------

def test_kick_off_needs_prefer_respond_async(client, auth):
    response = client.get("/fhir/$export", headers={**auth, "Accept": FHIR_JSON})
    assert response.status_code == 400
    assert "respond-async" in response.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize(("query", "named"), [
    ("_type=Patient,Encounter", "Encounter"),
    ("_since=yesterday", "_since"),
    ("_outputFormat=text/csv", "_outputFormat"),
    ("_typeFilter=Patient%3Factive%3Dtrue", "_typeFilter"),
])
def test_a_bad_kick_off_parameter_is_400(client, auth, query, named):
    response = kick_off(client, auth, f"/fhir/$export?{query}")
    assert response.status_code == 400
    assert named in response.json["issue"][0]["diagnostics"]


def test_an_unknown_parameter_is_ignored_when_lenient(client, auth):
    response = kick_off(client, auth, "/fhir/$export?_typeFilter=x",
                        Prefer="respond-async, handling=lenient")
    assert response.status_code == 202


def test_an_unencoded_plus_in_the_output_format_is_understood(client, auth):
    response = kick_off(client, auth, "/fhir/$export?_outputFormat=application/fhir+ndjson")
    assert response.status_code == 202


def test_kick_off_needs_a_token(client):
    assert client.get("/fhir/$export", headers=ASYNC).status_code == 401


def test_export_routes_are_not_taken_for_reads_or_searches(client, auth):
    assert kick_off(client, auth, "/fhir/$export").status_code == 202
    assert kick_off(client, auth, "/fhir/Practitioner/$export").status_code == 202
    assert kick_off(client, auth, "/fhir/Encounter/$export").status_code == 404


def test_type_level_takes_no_other_type(client, auth):
    response = kick_off(client, auth, "/fhir/Practitioner/$export?_type=Patient")
    assert response.status_code == 400


# --- the whole flow ------------------------------------------------------------------

def test_system_export_holds_every_live_resource_once(client, auth, gateway, stored):
    assert client.delete("/fhir/Practitioner/prac-sokolov", headers=auth).status_code == 204
    updated = json.loads((FIXTURES / "valid" / "patient-petrova.json").read_text("utf-8"))
    updated["gender"] = "female"
    updated["birthDate"] = "1990-01-02"
    assert client.put("/fhir/Patient/pat-petrova", data=json.dumps(updated),
                      headers=auth).status_code == 200

    kicked = kick_off(client, auth)
    url = status_url(kicked)
    assert url.startswith("http://localhost/fhir/$export-status/")
    waiting = client.get(url, headers=auth)
    assert waiting.status_code == 202
    assert waiting.headers["Retry-After"] == str(gateway.settings.export_poll_seconds)
    assert waiting.headers["X-Progress"].startswith("accepted")

    run_jobs(gateway)
    response = client.get(url, headers=auth)
    assert response.status_code == 200
    manifest = response.json
    assert manifest["request"] == "http://localhost/fhir/$export"
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    assert manifest["transactionTime"].endswith("+00:00")
    assert response.expires is not None

    found = download(client, auth, manifest)
    expected = {t: sorted(i) for t, i in stored.items()}
    expected["Practitioner"].remove("prac-sokolov")
    assert ids(found) == expected
    petrova = next(r for r in found["Patient"] if r["id"] == "pat-petrova")
    assert petrova["meta"]["versionId"] == "2"
    assert petrova["birthDate"] == "1990-01-02"


def test_type_and_since_choose_what_is_exported(client, auth, gateway, stored):
    manifest = export(client, auth, gateway, "/fhir/$export?_type=Patient,Observation")
    assert ids(download(client, auth, manifest)) == {
        "Patient": sorted(stored["Patient"]), "Observation": sorted(stored["Observation"])}

    before = client.get("/fhir/Patient/pat-kuznetsov", headers=auth).json
    since = before["meta"]["lastUpdated"].replace("+", "%2B")
    later = json.loads((FIXTURES / "valid" / "patient-petrova.json").read_text("utf-8"))
    later["gender"] = "female"
    later["birthDate"] = "1990-01-03"
    assert client.put("/fhir/Patient/pat-petrova", data=json.dumps(later),
                      headers=auth).status_code == 200
    manifest = export(client, auth, gateway, f"/fhir/$export?_type=Patient&_since={since}")
    assert ids(download(client, auth, manifest)) == {"Patient": ["pat-petrova"]}


def test_type_level_export(client, auth, gateway, stored):
    manifest = export(client, auth, gateway, "/fhir/PractitionerRole/$export")
    assert manifest["request"] == "http://localhost/fhir/PractitionerRole/$export"
    assert ids(download(client, auth, manifest)) == {
        "PractitionerRole": sorted(stored["PractitionerRole"])}


def test_an_empty_export_completes_with_no_files(client, auth, gateway):
    manifest = export(client, auth, gateway)
    assert manifest["output"] == []


def test_large_types_are_split_into_several_files(client, auth, gateway, stored):
    url = status_url(kick_off(client, auth, "/fhir/$export?_type=Observation"))
    run_jobs(gateway, export_file_max_resources=2)
    manifest = client.get(url, headers=auth).json
    assert [(o["url"].rsplit("/", 1)[1], o["count"]) for o in manifest["output"]] == [
        ("Observation-1.ndjson", 2), ("Observation-2.ndjson", 1)]
    assert ids(download(client, auth, manifest)) == {"Observation": sorted(stored["Observation"])}


def test_the_worker_runs_export_jobs(client, auth, gateway):
    url = status_url(kick_off(client, auth))
    Worker(gateway.engine, gateway.settings, upstream_url="http://127.0.0.1:9/fhir").drain()
    assert client.get(url, headers=auth).status_code == 200


def test_a_failed_job_answers_500(client, auth, gateway, stored, monkeypatch):
    url = status_url(kick_off(client, auth))

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")
        yield

    monkeypatch.setattr(reader, "batches", broken)
    run_jobs(gateway)
    response = client.get(url, headers=auth)
    assert response.status_code == 500
    assert "disk on fire" in response.json["issue"][0]["diagnostics"]
    assert not (bulk.export_root(gateway.settings) / url.rsplit("/", 1)[1]).exists()


# --- the store as of transactionTime ------------------------------------------------------

def test_changes_after_the_transaction_time_are_not_exported(client, auth, gateway, stored):
    as_of = reader.latest_change(gateway.engine)
    updated = json.loads((FIXTURES / "valid" / "practitioner-ivanova.json").read_text("utf-8"))
    updated["gender"] = "other"
    assert client.put("/fhir/Practitioner/prac-ivanova", data=json.dumps(updated),
                      headers=auth).status_code == 200
    assert client.delete("/fhir/Practitioner/prac-sokolov", headers=auth).status_code == 204
    updated.pop("id")
    assert client.put("/fhir/Practitioner/prac-new", data=json.dumps(updated),
                      headers=auth).status_code == 201

    rows = [json.loads(content) for batch in reader.batches(
        gateway.engine, "Practitioner", as_of, size=1) for _, content in batch]
    assert sorted((r["id"], r["meta"]["versionId"]) for r in rows) == [
        ("prac-ivanova", "1"), ("prac-sokolov", "1")]
    assert all(r.get("gender") != "other" for r in rows)


# --- polling, cancelling, retention -----------------------------------------------------

def test_polling_a_running_job_says_how_far_it_is(client, auth, gateway, stored):
    url = status_url(kick_off(client, auth))
    job = bulk.claim(gateway.engine, "runner-a", utcnow())
    assert job is not None
    response = client.get(url, headers=auth)
    assert response.status_code == 202
    assert response.headers["X-Progress"].startswith("in-progress")
    assert int(response.headers["Retry-After"]) >= 1
    bulk.Runner(gateway.engine, gateway.settings, name="runner-a").run_job(job)
    assert client.get(url, headers=auth).status_code == 200


def test_delete_cancels_a_completed_job_and_removes_its_files(client, auth, gateway, stored):
    url = status_url(kick_off(client, auth))
    run_jobs(gateway)
    manifest = client.get(url, headers=auth).json
    folder = bulk.export_root(gateway.settings) / url.rsplit("/", 1)[1]
    assert folder.is_dir()

    assert client.delete(url, headers=auth).status_code == 202
    assert not folder.exists()
    assert client.get(url, headers=auth).status_code == 404
    assert client.get(manifest["output"][0]["url"], headers=auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 404


def test_delete_stops_a_running_job_and_its_runner_removes_the_files(client, auth, gateway,
                                                                     stored):
    url = status_url(kick_off(client, auth))
    job = bulk.claim(gateway.engine, "runner-a", utcnow())
    assert client.delete(url, headers=auth).status_code == 202
    bulk.Runner(gateway.engine, gateway.settings, name="runner-a").run_job(job)
    assert not (bulk.export_root(gateway.settings) / job.id).exists()
    assert client.get(url, headers=auth).status_code == 404
    assert bulk.claim(gateway.engine, "runner-b", utcnow() + timedelta(hours=1)) is None


def test_finished_jobs_are_removed_after_the_retention_period(client, auth, gateway, stored):
    url = status_url(kick_off(client, auth))
    run_jobs(gateway)
    folder = bulk.export_root(gateway.settings) / url.rsplit("/", 1)[1]
    retention = timedelta(hours=gateway.settings.export_retention_hours)
    root = bulk.export_root(gateway.settings)
    assert bulk.sweep(gateway.engine, root, utcnow(), retention) == 0
    assert bulk.sweep(gateway.engine, root, utcnow() + retention + timedelta(minutes=1),
                      retention) == 1
    assert not folder.exists()
    assert client.get(url, headers=auth).status_code == 404


# --- whose job --------------------------------------------------------------------------

def test_another_client_cannot_see_or_cancel_a_job(client, auth, gateway, stored):
    url = status_url(kick_off(client, auth))
    run_jobs(gateway)
    manifest = client.get(url, headers=auth).json
    _, other_token = create_client(gateway.engine, "other MIS", "mis",
                                   ["1.2.643.5.1.13.13.12.2.78.8623"])
    other = {"Authorization": f"Bearer {other_token}"}
    assert client.get(url, headers=other).status_code == 404
    assert client.get(manifest["output"][0]["url"], headers=other).status_code == 404
    assert client.delete(url, headers=other).status_code == 404
    assert client.get(url, headers=auth).status_code == 200
    assert client.get(url).status_code == 401


# --- leases ------------------------------------------------------------------------------

def test_a_claimed_job_is_not_claimed_by_another_runner(client, auth, gateway):
    status_url(kick_off(client, auth))
    now = utcnow()
    assert bulk.claim(gateway.engine, "runner-a", now) is not None
    assert bulk.claim(gateway.engine, "runner-b", now) is None
    assert bulk.claim(gateway.engine, "runner-b", now + bulk.LEASE / 2) is None


def test_a_job_whose_lease_ran_out_is_taken_over(client, auth, gateway, stored):
    url = status_url(kick_off(client, auth, "/fhir/$export?_type=Organization"))
    now = utcnow()
    first = bulk.claim(gateway.engine, "runner-a", now)
    second = bulk.claim(gateway.engine, "runner-b", now + bulk.LEASE + timedelta(seconds=1))
    assert second is not None
    assert (second.id, second.attempts) == (first.id, 2)

    # The first runner comes back to life: the job is no longer its own to write.
    bulk.Runner(gateway.engine, gateway.settings, name="runner-a").run_job(first)
    assert client.get(url, headers=auth).status_code == 202
    bulk.Runner(gateway.engine, gateway.settings, name="runner-b").run_job(second)
    manifest = client.get(url, headers=auth).json
    assert ids(download(client, auth, manifest)) == {
        "Organization": sorted(stored["Organization"])}


def test_a_job_whose_runner_keeps_dying_fails(client, auth, gateway):
    url = status_url(kick_off(client, auth))
    now = utcnow()
    for attempt in range(bulk.MAX_ATTEMPTS):
        now += bulk.LEASE + timedelta(seconds=1)
        assert bulk.claim(gateway.engine, f"runner-{attempt}", now) is not None
    assert bulk.claim(gateway.engine, "runner-last", now + bulk.LEASE * 2) is None
    assert client.get(url, headers=auth).status_code == 500


def test_concurrent_runners_claim_each_job_once(client, auth, gateway):
    for _ in range(4):
        status_url(kick_off(client, auth))
    claimed, errors = [], []

    def take(name: str) -> None:
        try:
            claimed.append(bulk.claim(gateway.engine, name, utcnow()))
        except Exception as error:          # surfaced below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=take, args=(f"runner-{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    jobs = [job.id for job in claimed if job is not None]
    assert len(jobs) == len(set(jobs)) == 4


def test_the_operation_is_described_for_the_capability_statement():
    assert bulk.OPERATION["name"] == "export"
    assert bulk.OPERATION["definition"] == \
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    assert "Patient" in bulk.OPERATION["types"]


# --- gateway export -------------------------------------------------------------------------

@pytest.fixture
def cli(app, monkeypatch):
    """`gateway export` against the app's own database and data directory."""
    settings = app.extensions["gateway"].settings
    monkeypatch.setenv("GATEWAY_DATA_DIR", settings.data_dir)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "WARNING")

    def run(*args: str):
        result = CliRunner().invoke(main, ["export", *args])
        assert result.exit_code == 0, result.output
        return result
    return run


@pytest.fixture(scope="module")
def fhir_schema():
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(FIXTURES / "xsd" / "fhir-single.xsd"), parser))


def test_cli_ndjson_writes_one_file_per_type(cli, stored, tmp_path):
    result = cli("--format", "ndjson", "--output", str(tmp_path / "out"))
    for resource_type, expected in stored.items():
        lines = (tmp_path / "out" / f"{resource_type}.ndjson").read_text("utf-8").splitlines()
        assert sorted(json.loads(line)["id"] for line in lines) == sorted(expected)
    assert not (tmp_path / "out" / "Provenance.ndjson").exists()
    assert "Exporting ndjson" in result.stderr
    assert f"{sum(map(len, stored.values()))} resources" in result.stdout


def test_cli_fhir_json_writes_one_collection_bundle_per_type(cli, stored, tmp_path):
    out = tmp_path / "out"
    cli("--format", "fhir-json", "--register", "frmr", "--output", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["Practitioner.json", "PractitionerRole.json"]
    bundle = json.loads((out / "Practitioner.json").read_text("utf-8"))
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == sorted(stored["Practitioner"])


def test_cli_register_keeps_employers_with_the_medical_book(cli, stored, tmp_path):
    cli("--format", "ndjson", "--register", "frmo", "--output", str(tmp_path / "frmo"))
    cli("--format", "ndjson", "--register", "elmk", "--output", str(tmp_path / "elmk"))
    frmo = (tmp_path / "frmo" / "Organization.ndjson").read_text("utf-8").splitlines()
    elmk_file = tmp_path / "elmk" / "Organization.ndjson"
    elmk = elmk_file.read_text("utf-8").splitlines() if elmk_file.exists() else []
    assert sorted(json.loads(x)["id"] for x in frmo + elmk) == sorted(stored["Organization"])
    assert (tmp_path / "elmk" / "Patient.ndjson").exists()


def test_cli_fhir_xml_is_valid_against_the_official_schema(cli, stored, tmp_path, fhir_schema):
    cli("--format", "fhir-xml", "--type", "Observation", "--type", "Patient",
        "--output", str(tmp_path / "out"))
    for resource_type in ("Observation", "Patient"):
        document = etree.parse(str(tmp_path / "out" / f"{resource_type}.xml"))
        fhir_schema.assertValid(document)
        found = document.xpath(f"/f:Bundle/f:entry/f:resource/f:{resource_type}/f:id/@value",
                               namespaces={"f": "http://hl7.org/fhir"})
        assert sorted(found) == sorted(stored[resource_type])


def test_cli_since_and_bad_arguments(cli, stored, tmp_path):
    out = tmp_path / "out"
    cli("--format", "ndjson", "--since", "2999-01-01T00:00:00Z", "--output", str(out))
    assert list(out.iterdir()) == []
    result = CliRunner().invoke(main, ["export", "--format", "ndjson", "--type", "Encounter",
                                       "--output", str(out)])
    assert result.exit_code != 0
    assert "Encounter" in result.output


def test_cli_legacy_xml(cli, stored, tmp_path):
    pytest.importorskip("gateway.export.legacy", reason="gateway.export.legacy not written yet")
    cli("--format", "legacy-xml", "--register", "frmr", "--output", str(tmp_path / "out"))
    written = tmp_path / "out" / "frmr.xml"
    assert written.stat().st_size > 0
    etree.parse(str(written))
