"""The legacy XML export: format (XSD), content, streaming, and its enveloped signature.

Signatures are checked three ways: by gateway.export.legacy.verify_legacy (signxml
for ECDSA and RSA, our own gostcrypto path for GOST), and independently by Debian's
`xmlsec1`. Without xmlsec1 those checks are skipped, with the reason, except in CI
(GATEWAY_TEST_REQUIRE_POSTGRES=1), where a missing xmlsec1 fails them.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import os
import shutil
import subprocess
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey, RSAKey
from lxml import etree
from sqlalchemy import insert, select

from gateway import signing
from gateway.export import legacy, legacy_records, xmldsig
from gateway.signing import SignatureInvalid
from gateway.store.schema import resource_versions, resources
from tests import delivery_data
from tests.conftest import FHIR_JSON, load_fixture

NS = {"lr": legacy_records.NS, "ds": xmldsig.DS}
FIXTURES = [
    "organization-msk-clinic", "organization-msk-lab-department", "organization-spb-clinic",
    "organization-msk-ip-dental", "practitioner-ivanova", "practitioner-sokolov",
    "practitionerrole-ivanova-therapist", "practitionerrole-sokolov-gp", "patient-petrova",
    "patient-kuznetsov", "observation-petrova-glucose", "observation-petrova-hemoglobin",
    "observation-petrova-leukocytes", "diagnosticreport-petrova-lab",
    "diagnosticreport-petrova-periodic-exam", "immunization-petrova-shigellvak",
    "immunization-kuznetsov-measles",
]
FRMO = "urn:oid:1.2.643.5.1.13.13.11.1461"


# --- fixtures and helpers ---------------------------------------------------------------

@pytest.fixture
def filled(app, put):
    """The reviewed samples, plus what makes each register's structure visible."""
    for name in FIXTURES:
        put(load_fixture(f"valid/{name}.json"))
    put(_subdepartment())
    put(_employer())
    put(_role_by_oid())
    put(_standalone_lab_result())
    return app.extensions["gateway"].engine


def _subdepartment() -> dict:
    department = copy.deepcopy(load_fixture("valid/organization-msk-lab-department.json"))
    department.update(id="org-msk-lab-hematology", name="Гематологический кабинет",
                      partOf={"reference": "Organization/org-msk-lab-dept"})
    department["identifier"][0]["value"] += ".1"
    return department


def _employer() -> dict:
    """An employer from a medical book: no ФРМО OID, so not a medical organization."""
    return {"resourceType": "Organization", "id": "org-employer", "active": True,
            "identifier": [{"system": "urn:oid:1.2.643.100.4", "value": "7715038277"},
                           {"system": "urn:oid:1.2.643.100.1", "value": "1167746291833"}],
            "name": "ООО «Комбинат питания «Столичный»"}


def _role_by_oid() -> dict:
    """A second post of Иванова at a clinic named by its ФРМО OID (as the MIS sends it)."""
    role = copy.deepcopy(load_fixture("valid/practitionerrole-ivanova-therapist.json"))
    role.update(id="role-ivanova-spb", organization={
        "identifier": {"system": FRMO, "value": "1.2.643.5.1.13.13.12.2.78.8623"}})
    role["period"] = {"start": "2021-03-15", "end": "2025-12-31"}
    role["extension"] = [
        {"url": legacy_records.EXTENSION + "employment-rate", "valueDecimal": 0.25},
        {"url": legacy_records.EXTENSION + "position-type", "valueCoding": {
            "system": "https://fhir.egisz-gateway.ru/CodeSystem/position-type", "code": "4",
            "display": "Внешнее совместительство"}}]
    return role


def _standalone_lab_result() -> dict:
    observation = copy.deepcopy(load_fixture("valid/observation-petrova-glucose.json"))
    observation["id"] = "obs-petrova-glucose-repeat"
    observation["valueQuantity"]["value"] = 4.8
    return observation


def export(engine, register: str, signer, **options) -> bytes:
    out = io.BytesIO()
    legacy.write_legacy(engine, register, out, signer, **options)
    return out.getvalue()


def parse(document: bytes) -> etree._Element:
    return etree.fromstring(document, etree.XMLParser(huge_tree=True))


def valid(document: bytes) -> etree._Element:
    root = parse(document)
    legacy.schema().assertValid(root)
    return root


def records(root: etree._Element, tag: str) -> dict[str, etree._Element]:
    return {element.get("id"): element for element in root.findall(f"lr:{tag}", NS)}


def text(element: etree._Element, path: str) -> str | None:
    return element.findtext(path, namespaces=NS)


def public_pem(signer: signing.Signer) -> bytes:
    jwk = signer.public_jwk()
    key = (RSAKey if jwk["kty"] == "RSA" else ECKey).import_key(jwk).public_key
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def jwks_of(signer: signing.Signer) -> dict:
    return {"keys": [signer.public_jwk()]}


@pytest.fixture(params=["ES256", "RS256"])
def standard_signer(request, tmp_path) -> signing.Signer:
    return signing.generate_key(tmp_path / "keys", request.param)


@pytest.fixture(scope="session")
def xmlsec1() -> str:
    """The xmlsec1 binary: a failure in CI, a skip elsewhere, when it is missing."""
    path = shutil.which("xmlsec1")
    if path is None:
        reason = "xmlsec1 is not installed (Debian: apt-get install xmlsec1)"
        if os.environ.get("GATEWAY_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + "; CI (GATEWAY_TEST_REQUIRE_POSTGRES=1) requires it")
        pytest.skip(reason)
    return path


def xmlsec1_verifies(binary: str, document: bytes, signer: signing.Signer, pem: bytes,
                     tmp_path) -> bool:
    """`xmlsec1 --verify`, trusting only `pem` under the document's KeyName.

    `--enabled-key-data key-name` stops xmlsec1 from taking the key in the document's
    own KeyValue: the trusted key comes from the command line, as it must.
    """
    (tmp_path / "document.xml").write_bytes(document)
    (tmp_path / "trusted.pem").write_bytes(pem)
    result = subprocess.run(
        [binary, "--verify", "--enabled-key-data", "key-name",
         f"--pubkey-pem:{signer.kid}", str(tmp_path / "trusted.pem"),
         str(tmp_path / "document.xml")],
        capture_output=True, text=True, timeout=60, check=False)
    return result.returncode == 0


# --- the writer: canonical form and digest ----------------------------------------------

def test_a_child_canonicalised_alone_matches_the_whole_documents_exc_c14n(tmp_path):
    """The claim the streaming signature rests on, checked against lxml itself."""
    root = legacy.root_element("frmr", datetime(2026, 1, 2, 3, 4, 5), None)
    children = []
    for n in range(3):
        child = legacy_records.element("worker", id=f"w{n}", version="1",
                                lastUpdated="2026-01-01T00:00:00.000+00:00")
        legacy_records.add(child, "name", f"Иванова & <{n}> \"кавычки\"\r\n\t", use="a\tb\n")
        nested = legacy_records.add(child, "employment", force=True, id="r", version="2",
                             lastUpdated="2026-01-01T00:00:00.000+00:00")
        legacy_records.add(nested, "rate", "0.25")
        children.append(child)
    start, end = xmldsig._root_tags(root)
    streamed = start + b"\n".join(xmldsig.canonical_child(copy.deepcopy(c), legacy_records.NS)
                                  for c in children) + end

    whole = copy.deepcopy(root)
    for index, child in enumerate(children):
        whole.append(copy.deepcopy(child))
        child_copy = whole[-1]
        child_copy.tail = "\n" if index < len(children) - 1 else None
    assert etree.tostring(whole, method="c14n", exclusive=True) == streamed


def test_the_signed_bytes_are_the_documents_exclusive_canonical_form(tmp_path):
    signer = signing.generate_key(tmp_path / "keys", "ES256")
    writer = xmldsig.EnvelopedWriter(legacy.root_element("frmo", datetime(2026, 1, 1), None),
                                     signer)
    org = legacy_records.element("organization", id="o1", version="1",
                          lastUpdated="2026-01-01T00:00:00.000+00:00")
    legacy_records.add(org, "name", "ООО «Здоровье» & Ко")
    document = writer.start() + writer.whitespace() + writer.child(org) \
        + writer.whitespace() + writer.finish()
    tree = etree.ElementTree(parse(document))
    signature = tree.getroot().find("ds:Signature", NS)
    tree.getroot().remove(signature)
    canonical = etree.tostring(tree, method="c14n", exclusive=True)
    hashed = document[len(xmldsig.XML_DECLARATION):document.index(b"<ds:Signature")] \
        + b"</registers>"
    assert canonical == hashed
    assert base64.b64decode(signature.findtext(".//ds:DigestValue", namespaces=NS)) \
        == hashlib.sha256(canonical).digest()
    assert document.endswith(b"</ds:Signature></registers>\n")


def test_a_child_outside_the_namespace_is_refused():
    with pytest.raises(ValueError, match="namespace"):
        xmldsig.canonical_child(etree.Element("{urn:other}x", nsmap={None: "urn:other"}),
                                legacy_records.NS)


# --- content of each register -----------------------------------------------------------

def test_frmo_nests_departments_in_their_organization(backend, filled, tmp_path):
    signer = signing.generate_key(tmp_path / "keys")
    root = valid(export(filled, "frmo", signer))
    assert root.get("register") == "frmo"
    assert root.get("formatVersion") == "1.0"
    organizations = records(root, "organization")
    assert set(organizations) == {"org-msk-clinic", "org-spb-clinic", "org-msk-ip-dental"}
    clinic = organizations["org-msk-clinic"]
    assert text(clinic, "lr:frmoOid") == "1.2.643.5.1.13.13.12.2.77.8517"
    assert text(clinic, "lr:ogrn") == "1187746123454"
    assert text(clinic, "lr:inn") == "7707452131"
    department = clinic.find("lr:department", NS)
    assert department.get("id") == "org-msk-lab-dept"
    assert text(department, "lr:name") == "Клинико-диагностическая лаборатория"
    assert department.find("lr:department", NS).get("id") == "org-msk-lab-hematology"
    assert text(organizations["org-msk-ip-dental"], "lr:ogrnip") == "319774600123661"
    assert root.find("lr:trailer", NS).get("recordCount") == "3"
    assert legacy.count(filled, "frmo") == 3


def test_frmr_lists_employments_with_positions_and_certificates(backend, filled, tmp_path):
    signer = signing.generate_key(tmp_path / "keys")
    root = valid(export(filled, "frmr", signer))
    workers = records(root, "worker")
    assert set(workers) == {"prac-ivanova", "prac-sokolov"}
    ivanova = workers["prac-ivanova"]
    assert text(ivanova, "lr:snils") == "14831576274"
    assert text(ivanova, "lr:name/lr:family") == "Иванова"
    assert text(ivanova, "lr:name/lr:patronymic") == "Петровна"
    assert ivanova.find("lr:passport", NS).get("divisionCode") == "770-001"
    certificate = ivanova.find("lr:certificate", NS)
    assert text(certificate, "lr:number") == "0177241234567"
    assert certificate.find("lr:specialty/lr:coding", NS).get("code") == "27"
    employments = records(ivanova, "employment")
    assert set(employments) == {"role-ivanova-therapist", "role-ivanova-spb"}
    therapist = employments["role-ivanova-therapist"]
    position = therapist.find("lr:position/lr:coding", NS)
    assert (position.get("code"), position.get("system"), position.text) == \
        ("109", "urn:oid:1.2.643.5.1.13.13.11.1002", "Врач-терапевт")
    organization = therapist.find("lr:organization", NS)
    assert organization.get("ref") == "Organization/org-msk-clinic"
    assert organization.get("identifier") == "1.2.643.5.1.13.13.12.2.77.8517"
    by_oid = employments["role-ivanova-spb"]
    assert by_oid.find("lr:organization", NS).get("identifier") == \
        "1.2.643.5.1.13.13.12.2.78.8623"
    assert text(by_oid, "lr:rate") == "0.25"
    assert text(by_oid, "lr:positionType/lr:coding") == "Внешнее совместительство"
    assert text(by_oid, "lr:end") == "2025-12-31"


def test_elmk_holds_each_patients_book(backend, filled, tmp_path):
    signer = signing.generate_key(tmp_path / "keys")
    root = valid(export(filled, "elmk", signer))
    books = records(root, "medicalBook")
    assert set(books) == {"pat-petrova", "pat-kuznetsov"}
    petrova = books["pat-petrova"]
    assert text(petrova, "lr:omsPolicy") == "7751840392017465"
    vaccination = petrova.find("lr:vaccination", NS)
    assert vaccination.find("lr:vaccine/lr:coding", NS).get("code") == "253"
    assert text(vaccination, "lr:lotNumber") == "250624"
    examinations = records(petrova, "examination")
    assert set(examinations) == {"dr-petrova-lab", "dr-petrova-periodic-exam"}
    results = examinations["dr-petrova-lab"].findall("lr:result", NS)
    assert [r.get("id") for r in results] == [
        "obs-petrova-hemoglobin", "obs-petrova-glucose", "obs-petrova-leukocytes"]
    assert results[1].find("lr:valueQuantity", NS).get("value") == "5.1"
    attachment = examinations["dr-petrova-periodic-exam"].find("lr:attachment", NS)
    assert attachment.get("contentType") == "application/pdf"
    assert attachment.text.startswith("JVBERi0")
    assert [r.get("id") for r in petrova.findall("lr:labResult", NS)] == \
        ["obs-petrova-glucose-repeat"]
    assert books["pat-kuznetsov"].find("lr:vaccination", NS) is not None


def test_since_exports_records_changed_or_with_a_changed_part(backend, filled, put, tmp_path):
    signer = signing.generate_key(tmp_path / "keys")
    since = datetime.now(UTC) + timedelta(milliseconds=5)
    time.sleep(0.02)
    role = load_fixture("valid/practitionerrole-sokolov-gp.json")
    role["active"] = False
    put(role)
    root = valid(export(filled, "frmr", signer, since=since))
    assert set(records(root, "worker")) == {"prac-sokolov"}
    assert root.get("since") is not None
    assert legacy.count(filled, "frmr", since=since) == 1
    assert records(valid(export(filled, "frmo", signer, since=since)), "organization") == {}


def test_deleted_resources_are_not_exported(backend, filled, client, auth, tmp_path):
    assert client.delete("/fhir/PractitionerRole/role-ivanova-spb", headers=auth).status_code \
        in (200, 204)
    assert client.delete("/fhir/Practitioner/prac-sokolov", headers=auth).status_code \
        in (200, 204)
    root = valid(export(filled, "frmr", signing.generate_key(tmp_path / "keys")))
    workers = records(root, "worker")
    assert set(workers) == {"prac-ivanova"}
    assert set(records(workers["prac-ivanova"], "employment")) == {"role-ivanova-therapist"}


def test_an_empty_register_is_a_valid_signed_document(backend, app, tmp_path):
    signer = signing.generate_key(tmp_path / "keys")
    document = export(app.extensions["gateway"].engine, "elmk", signer)
    assert valid(document).find("lr:trailer", NS).get("recordCount") == "0"
    legacy.verify_legacy(document, jwks_of(signer))


# --- streaming ----------------------------------------------------------------------------

def test_records_are_read_and_yielded_batch_by_batch(backend, app, put, tmp_path):
    engine = app.extensions["gateway"].engine
    for n in range(25):
        put(delivery_data.practitioner(n))
    signer = signing.generate_key(tmp_path / "keys")
    batches: list[int] = []
    chunks = legacy.iter_legacy(engine, "frmr", signer, progress=batches.append,
                                batch_size=10)
    head, first = next(chunks), next(chunks)
    assert head.startswith(b"<?xml")
    assert first.count(b"<worker ") == 10
    # Later batches are read only when asked for: a practitioner written now is exported.
    put(delivery_data.practitioner(25))
    rest = list(chunks)
    assert batches == [10, 10, 6]
    assert [chunk.count(b"<worker ") for chunk in rest] == [10, 6, 0]
    document = head + first + b"".join(rest)
    root = valid(document)
    assert [w.get("id") for w in root.findall("lr:worker", NS)] == \
        [f"prac-{n}" for n in range(26)]
    assert root.find("lr:trailer", NS).get("recordCount") == "26"
    legacy.verify_legacy(document, jwks_of(signer))


def test_write_legacy_returns_the_count_and_reports_progress(backend, filled, tmp_path):
    seen: list[int] = []
    out = io.BytesIO()
    written = legacy.write_legacy(filled, "elmk", out, signing.generate_key(tmp_path / "k"),
                                  progress=seen.append)
    assert written == sum(seen) == legacy.count(filled, "elmk") == 2


def test_an_unknown_register_is_refused_before_anything_is_written(app, tmp_path):
    engine = app.extensions["gateway"].engine
    with pytest.raises(legacy.UnknownRegister):
        legacy.iter_legacy(engine, "frmx", signing.generate_key(tmp_path / "k"))
    with pytest.raises(legacy.UnknownRegister):
        legacy.count(engine, "frmx")


def _bulk_practitioners(engine, start: int, count: int) -> None:
    """Practitioners written straight into the store tables (the API is too slow here)."""
    person = load_fixture("valid/practitioner-ivanova.json")
    now = datetime(2026, 1, 1)
    with engine.begin() as conn:
        conn.execute(insert(resources), [
            {"resource_type": "Practitioner", "id": f"bulk-{n}", "version": 1,
             "last_updated": now, "deleted": False} for n in range(start, start + count)])
        rows = conn.execute(select(resources.c.pk, resources.c.id).where(
            resources.c.resource_type == "Practitioner",
            resources.c.id.in_([f"bulk-{n}" for n in range(start, start + count)]))).all()
        conn.execute(insert(resource_versions), [
            {"resource_pk": pk, "resource_type": "Practitioner", "id": rid, "version": 1,
             "last_updated": now, "method": "PUT", "deleted": False,
             "content": json.dumps({**person, "id": rid}, ensure_ascii=False)}
            for pk, rid in rows])


class _Sink:
    """A binary file that keeps only the size and the last bytes of what it is given."""

    def __init__(self) -> None:
        self.size, self.tail = 0, b""

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self.tail = (self.tail + data)[-64:]
        return len(data)


def _peak_growth(run) -> int:
    """The peak of Python's allocations while `run()` runs (rows, dicts, chunks...).

    Peak RSS would also see libxml2's memory, but the allocator hands freed memory
    back out, so it says little about one call; tracemalloc counts exactly.
    """
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_whatever_the_number_of_records(backend, app, tmp_path):
    engine = app.extensions["gateway"].engine
    signer = signing.generate_key(tmp_path / "keys")
    growth = {}
    _bulk_practitioners(engine, 0, 2_000)
    legacy.write_legacy(engine, "frmr", _Sink(), signer)     # warm up: first-use allocations
    for total in (2_000, 20_000):
        if total > 2_000:
            _bulk_practitioners(engine, 2_000, total - 2_000)
        sink = _Sink()
        growth[total] = _peak_growth(lambda sink=sink: legacy.write_legacy(
            engine, "frmr", sink, signer))
        assert sink.tail.endswith(b"</ds:Signature></registers>\n")
        assert sink.size > total * 500
    # Ten times the records (about 18 MB of XML) may not cost ten times the memory:
    # one batch is held, whatever the register's size.
    assert growth[20_000] < growth[2_000] + 8 * 2**20, growth


# --- signatures ---------------------------------------------------------------------------

def test_signxml_and_xmlsec1_verify_the_signature(backend, filled, standard_signer, xmlsec1,
                                                  tmp_path):
    document = export(filled, "frmr", standard_signer)
    verified = legacy.verify_legacy(document, jwks_of(standard_signer))
    assert (verified.kid, verified.alg) == (standard_signer.kid, standard_signer.alg)
    assert legacy.verify_legacy(document, public_pem(standard_signer)).alg == \
        standard_signer.alg
    assert xmlsec1_verifies(xmlsec1, document, standard_signer, public_pem(standard_signer),
                            tmp_path)
    signature = parse(document).find("ds:Signature", NS)
    method = signature.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm")
    assert method == {"ES256": xmldsig.ECDSA_SHA256,
                      "RS256": xmldsig.RSA_SHA256}[standard_signer.alg]
    assert signature.findtext("ds:KeyInfo/ds:KeyName", namespaces=NS) == standard_signer.kid


def test_a_changed_byte_is_refused_by_both_verifiers(backend, filled, standard_signer,
                                                     xmlsec1, tmp_path):
    document = export(filled, "frmr", standard_signer)
    tampered = document.replace(b"<snils>14831576274<", b"<snils>14831576275<", 1)
    assert tampered != document
    assert len(tampered) == len(document)
    with pytest.raises(SignatureInvalid):
        legacy.verify_legacy(tampered, jwks_of(standard_signer))
    assert not xmlsec1_verifies(xmlsec1, tampered, standard_signer,
                                public_pem(standard_signer), tmp_path)


def test_another_key_is_refused_by_both_verifiers(backend, filled, standard_signer, xmlsec1,
                                                  tmp_path):
    document = export(filled, "frmo", standard_signer)
    other = signing.generate_key(tmp_path / "other-keys", standard_signer.alg)
    with pytest.raises(SignatureInvalid):
        legacy.verify_legacy(document, jwks_of(other))          # no key of that kid
    with pytest.raises(SignatureInvalid):
        legacy.verify_legacy(document, other.public_jwk())      # the wrong key
    with pytest.raises(SignatureInvalid):
        legacy.verify_legacy(document, public_pem(other))
    assert not xmlsec1_verifies(xmlsec1, document, standard_signer, public_pem(other),
                                tmp_path)


def test_a_document_signed_with_a_swapped_in_key_is_refused(filled, standard_signer,
                                                            tmp_path):
    """Re-signing the altered document with one's own key and KeyValue does not help."""
    document = export(filled, "frmr", standard_signer)
    forger = signing.generate_key(tmp_path / "forger", standard_signer.alg)
    forged = export(filled, "frmr", forger)
    assert legacy.verify_legacy(forged, jwks_of(forger))
    with pytest.raises(SignatureInvalid):
        legacy.verify_legacy(forged, standard_signer.public_jwk())
    assert legacy.verify_legacy(document, standard_signer.public_jwk())


def test_gost_documents_are_verified_by_the_gateways_own_verifier(filled, tmp_path):
    """signxml and Debian's xmlsec1 know no GOST; gostcrypto checks the same form."""
    signer = signing.generate_key(tmp_path / "keys", signing.GOST)
    document = export(filled, "frmo", signer)
    valid(document)
    signature = parse(document).find("ds:Signature", NS)
    assert signature.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm") == \
        xmldsig.GOST_SIGNATURE
    assert signature.find(".//ds:DigestMethod", NS).get("Algorithm") == xmldsig.GOST_DIGEST
    assert legacy.verify_legacy(document, jwks_of(signer)).alg == signing.GOST
    tampered = document.replace(b"<inn>7707452131<", b"<inn>7707452132<", 1)
    with pytest.raises(SignatureInvalid, match="digest"):
        legacy.verify_legacy(tampered, jwks_of(signer))
    other = signing.generate_key(tmp_path / "other", signing.GOST)
    with pytest.raises(SignatureInvalid):
        legacy.verify_legacy(document, other.public_jwk())


def test_a_cut_or_doubly_signed_document_is_refused(filled, tmp_path):
    signer = signing.generate_key(tmp_path / "keys")
    document = export(filled, "frmo", signer)
    with pytest.raises(SignatureInvalid):
        legacy.verify_legacy(document[:document.index(b"<trailer")] + b"</registers>",
                             jwks_of(signer))
    signature = document[document.index(b"<ds:Signature"):document.index(b"</registers>")]
    doubled = document.replace(b"<trailer", signature + b"<trailer", 1)
    with pytest.raises(SignatureInvalid, match="exactly one"):
        legacy.verify_legacy(doubled, jwks_of(signer))


# --- HTTP -------------------------------------------------------------------------------

def test_the_endpoint_streams_a_signed_document(backend, filled, client, auth):
    response = client.get("/api/v1/export/legacy/frmr", headers=auth, buffered=False)
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "application/xml"
    assert "legacy-frmr-" in response.headers["Content-Disposition"]
    document = b"".join(response.response)
    root = valid(document)
    assert set(records(root, "worker")) == {"prac-ivanova", "prac-sokolov"}
    jwks = client.get("/.well-known/jwks.json").get_json()
    assert legacy.verify_legacy(document, jwks).alg == "ES256"


def test_the_endpoint_filters_by_since(backend, filled, client, auth):
    later = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    response = client.get(f"/api/v1/export/legacy/elmk?since={later}", headers=auth)
    assert response.status_code == 200
    assert records(valid(response.data), "medicalBook") == {}


def test_the_endpoint_refuses_an_unknown_register_and_a_bad_since(backend, app, client, auth):
    response = client.get("/api/v1/export/legacy/frmx", headers=auth)
    assert response.status_code == 404
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "frmx" in outcome["issue"][0]["diagnostics"]
    response = client.get("/api/v1/export/legacy/frmr?since=yesterday", headers=auth)
    assert response.status_code == 400
    response = client.get("/api/v1/export/legacy/frmr?since=2026-01-01T00:00:00", headers=auth)
    assert response.status_code == 400


def test_the_endpoint_needs_a_token(backend, app, client):
    response = client.get("/api/v1/export/legacy/frmr")
    assert response.status_code == 401
    assert response.get_json()["resourceType"] == "OperationOutcome"
    response = client.get("/api/v1/export/legacy/frmr",
                          headers={"Authorization": "Bearer wrong", "Accept": FHIR_JSON})
    assert response.status_code == 401
