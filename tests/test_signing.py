"""Bundle signatures: what a signed Bundle looks like, and what a verifier refuses.

The verifier has the Bundle and the published JWKS, nothing else. GOST is pure
Python, so its tests sign only a handful of times.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from gostcrypto import gosthash, gostsignature

from gateway.signing import (
    ALGORITHMS,
    SignatureInvalid,
    canonical,
    ensure_signer,
    generate_key,
    jwks,
    load_signer,
    retire_key,
    sign_bundle,
    verify_bundle,
)

WHO = {"reference": "Organization/msk-clinic"}
WHEN = datetime(2026, 3, 2, 9, 15, 30, 250000, tzinfo=timezone(timedelta(hours=3)))
FHIR_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def bundle() -> dict:
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986",
                       "value": "urn:uuid:6f1c2a0e-5d7b-4c1e-9a55-3b2f1e0d4c11"},
        "type": "transaction",
        "entry": [
            {"fullUrl": "Practitioner/p1",
             "resource": {"resourceType": "Practitioner", "id": "p1",
                          "meta": {"versionId": "2"}, "active": True,
                          "identifier": [{"system": "urn:oid:1.2.643.2.69.1.1.1.6.223",
                                          "value": "11223344595"}],
                          "name": [{"family": "Иванова", "given": ["Мария", "Петровна"]}],
                          "birthDate": "1984-07-19"},
             "request": {"method": "PUT", "url": "Practitioner/p1"}},
            {"fullUrl": "Observation/o1",
             "resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                          "code": {"text": "Гемоглобин"},
                          "valueQuantity": {"value": 131.5, "unit": "г/л"}},
             "request": {"method": "PUT", "url": "Observation/o1"}},
            {"fullUrl": "Patient/old", "request": {"method": "DELETE", "url": "Patient/old"}},
        ],
    }


def jws_of(signed: dict) -> str:
    return base64.b64decode(signed["signature"]["data"]).decode("ascii")


def with_jws(signed: dict, compact: str) -> dict:
    signature = {**signed["signature"],
                 "data": base64.b64encode(compact.encode("ascii")).decode("ascii")}
    return {**signed, "signature": signature}


def with_header(signed: dict, **changes) -> dict:
    """The signed Bundle with its JWS header re-encoded, the signature bytes kept."""
    encoded_header, _, encoded_signature = jws_of(signed).split(".")
    header = {**json.loads(b64url_decode(encoded_header)), **changes}
    header = {name: value for name, value in header.items() if value is not None}
    return with_jws(signed, f"{b64url(json.dumps(header).encode())}..{encoded_signature}")


def refusal(bundle: dict, keys: dict) -> str:
    """Why verification refuses the Bundle; empty when it verifies."""
    try:
        verify_bundle(bundle, keys)
    except SignatureInvalid as exc:
        return exc.reason_en
    return ""


def tampered_copies(content: dict, wanted: int):
    """Copies of `content` with one character of its canonical JSON changed each."""
    text = canonical(content).decode("utf-8")
    positions = [i for i, char in enumerate(text) if char.isascii() and char.isalnum()]
    step = max(1, len(positions) // (wanted * 2))
    copies = []
    for i in positions[::step]:
        char = text[i]
        new = str((int(char) + 1) % 10) if char.isdigit() else ("x" if char != "x" else "y")
        try:
            copy = json.loads(text[:i] + new + text[i + 1:])
        except ValueError:
            continue  # e.g. "true" became "trxe": not JSON, so not a Bundle to verify
        assert copy != content
        copies.append((i, copy))
        if len(copies) == wanted:
            break
    assert len(copies) == wanted
    return copies


# --- what a signed Bundle is -------------------------------------------------------------

@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_signed_bundle_verifies_with_the_published_keys(tmp_path, bundle, alg):
    signer = generate_key(tmp_path / "keys", alg)
    signed = sign_bundle(bundle, signer, WHO, WHEN)
    header = verify_bundle(signed, jwks(tmp_path / "keys"))
    assert header == {"alg": alg, "kid": signer.kid, "b64": False, "crit": ["b64"]}


def test_the_signature_element_is_as_the_protocol_describes(tmp_path, bundle):
    signer = generate_key(tmp_path, "ES256")
    original = json.loads(json.dumps(bundle))
    signed = sign_bundle(bundle, signer, WHO, WHEN)

    assert bundle == original, "the input Bundle is left as it was"
    assert {k: v for k, v in signed.items() if k != "signature"} == bundle
    signature = signed["signature"]
    assert signature["type"] == [{"system": "urn:iso-astm:E1762-95:2013",
                                  "code": "1.2.840.10065.1.12.1.14",
                                  "display": "Source Signature"}]
    assert signature["when"] == "2026-03-02T09:15:30.250+03:00"
    assert FHIR_INSTANT.fullmatch(signature["when"])
    assert signature["who"] == WHO
    assert signature["sigFormat"] == "application/jose"
    assert signature["targetFormat"] == "application/fhir+json"
    encoded_header, payload, encoded_signature = jws_of(signed).split(".")
    assert payload == "", "the payload is detached"
    assert encoded_signature
    assert json.loads(b64url_decode(encoded_header)) == {
        "alg": "ES256", "kid": signer.kid, "b64": False, "crit": ["b64"]}


def test_signing_again_replaces_the_old_signature(tmp_path, bundle):
    signer = generate_key(tmp_path, "ES256")
    once = sign_bundle(bundle, signer, WHO, WHEN)
    twice = sign_bundle(once, signer, WHO, WHEN + timedelta(hours=1))
    assert twice["signature"]["when"].startswith("2026-03-02T10:15:30")
    verify_bundle(twice, jwks(tmp_path))


def test_the_signing_time_must_carry_a_time_zone(tmp_path, bundle):
    signer = generate_key(tmp_path, "ES256")
    with pytest.raises(ValueError, match="time zone"):
        sign_bundle(bundle, signer, WHO, datetime(2026, 3, 2, 9, 15))


def test_the_payload_is_the_rfc8785_form_of_the_bundle_without_its_signature():
    content = {"type": "transaction", "resourceType": "Bundle", "total": 1.50,
               "signature": {"data": "ignored"}}
    assert canonical(content) == \
        b'{"resourceType":"Bundle","total":1.5,"type":"transaction"}'


def test_es256_verifies_with_plain_cryptography_from_the_jwk(tmp_path, bundle):
    """An independent party needs only RFC 7515/7797 and the JWK."""
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    [jwk] = jwks(tmp_path)["keys"]
    encoded_header, _, encoded_signature = jws_of(signed).split(".")
    raw = b64url_decode(encoded_signature)
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(b64url_decode(jwk["x"]), "big"),
                                           int.from_bytes(b64url_decode(jwk["y"]), "big"),
                                           ec.SECP256R1()).public_key()
    public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                       int.from_bytes(raw[32:], "big")),
                  encoded_header.encode() + b"." + canonical(signed),
                  ec.ECDSA(hashes.SHA256()))


def test_gost_signature_has_the_documented_layout(tmp_path, bundle):
    """e = Streebog-256 of the signing input read little-endian; signature = s || r."""
    signed = sign_bundle(bundle, generate_key(tmp_path, "GOST3410-2012-256"), WHO, WHEN)
    [jwk] = jwks(tmp_path)["keys"]
    assert jwk["kty"] == "GOST"
    assert jwk["crv"] == "id-tc26-gost-3410-2012-256-paramSetA"
    encoded_header, _, encoded_signature = jws_of(signed).split(".")
    digest = gosthash.new("streebog256",
                          data=bytearray(encoded_header.encode() + b"." + canonical(signed)))
    s_r = b64url_decode(encoded_signature)
    curve = gostsignature.CURVES_R_1323565_1_024_2019[jwk["crv"]]
    assert gostsignature.new(gostsignature.MODE_256, curve).verify(
        bytearray(b64url_decode(jwk["x"]) + b64url_decode(jwk["y"])),
        bytearray(digest.digest()[::-1]), bytearray(s_r[32:] + s_r[:32]))


# --- what verification refuses ------------------------------------------------------------

@pytest.mark.parametrize(("alg", "positions"),
                         [("ES256", 40), ("RS256", 10), ("GOST3410-2012-256", 2)])
def test_changing_any_character_of_the_content_fails(tmp_path, bundle, alg, positions):
    signed = sign_bundle(bundle, generate_key(tmp_path, alg), WHO, WHEN)
    keys = jwks(tmp_path)
    refusals = {position: refusal({**content, "signature": signed["signature"]}, keys)
                for position, content in tampered_copies(bundle, positions)}
    unnoticed = [p for p, reason in refusals.items() if "does not verify" not in reason]
    assert not unnoticed, f"changes at these places of the canonical JSON passed: {unnoticed}"


def test_changing_the_signature_bytes_fails(tmp_path, bundle):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    encoded_header, _, encoded_signature = jws_of(signed).split(".")
    raw = bytearray(b64url_decode(encoded_signature))
    raw[10] ^= 0x01
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_bundle(with_jws(signed, f"{encoded_header}..{b64url(bytes(raw))}"),
                      jwks(tmp_path))


def test_naming_another_published_key_in_the_header_fails(tmp_path, bundle):
    signer, other = generate_key(tmp_path, "ES256"), generate_key(tmp_path, "ES256")
    signed = sign_bundle(bundle, signer, WHO, WHEN)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_bundle(with_header(signed, kid=other.kid), jwks(tmp_path))


def test_the_alg_comes_from_the_key_not_from_the_header(tmp_path, bundle):
    es, rs = generate_key(tmp_path, "ES256"), generate_key(tmp_path, "RS256")
    signed = sign_bundle(bundle, es, WHO, WHEN)
    keys = jwks(tmp_path)
    with pytest.raises(SignatureInvalid, match="does not match the alg of key"):
        verify_bundle(with_header(signed, alg="RS256"), keys)
    with pytest.raises(SignatureInvalid, match="does not match the alg of key"):
        verify_bundle(with_header(signed, kid=rs.kid), keys)


def test_a_jwk_whose_alg_contradicts_its_key_type_is_refused(tmp_path, bundle):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    [jwk] = jwks(tmp_path)["keys"]
    with pytest.raises(SignatureInvalid, match="fits none of"):
        verify_bundle(signed, {"keys": [{**jwk, "alg": "RS256"}]})


@pytest.mark.parametrize("alg", ["none", "None", "HS256"])
def test_unsigned_and_symmetric_algs_are_refused(tmp_path, bundle, alg):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    forged = with_header(signed, alg=alg)
    with pytest.raises(SignatureInvalid, match="not accepted|not supported"):
        verify_bundle(forged, jwks(tmp_path))
    without_signature = with_jws(forged, jws_of(forged).rsplit(".", 1)[0] + ".")
    with pytest.raises(SignatureInvalid, match="header..signature"):
        verify_bundle(without_signature, jwks(tmp_path))


@pytest.mark.parametrize("changes", [
    {"b64": None}, {"b64": True}, {"crit": None}, {"crit": []}, {"crit": ["b64", "exp"]},
])
def test_the_header_must_declare_an_unencoded_payload(tmp_path, bundle, changes):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    with pytest.raises(SignatureInvalid, match="RFC 7797"):
        verify_bundle(with_header(signed, **changes), jwks(tmp_path))


def test_extra_header_parameters_are_refused(tmp_path, bundle):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    with pytest.raises(SignatureInvalid, match="Unexpected JWS header parameters: jku"):
        verify_bundle(with_header(signed, jku="https://attacker.example/jwks"), jwks(tmp_path))


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda s: {k: v for k, v in s.items() if k != "signature"}, "missing"),
    (lambda s: {**s, "signature": {**s["signature"], "sigFormat": "application/pkcs7"}},
     "sigFormat must be application/jose"),
    (lambda s: {**s, "signature": {**s["signature"], "data": "not base64!"}}, "base64"),
    (lambda s: {**s, "signature": {k: v for k, v in s["signature"].items() if k != "data"}},
     "base64"),
    (lambda s: with_jws(s, "onlyonepart"), "header..signature"),
    (lambda s: with_jws(s, jws_of(s).replace("..", ".cGF5bG9hZA.")), "detached"),
    (lambda s: with_jws(s, "bm90IGpzb24.." + jws_of(s).split(".")[2]), "header is not"),
])
def test_malformed_signatures_are_refused_with_a_reason(tmp_path, bundle, damage, reason):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    with pytest.raises(SignatureInvalid, match=re.escape(reason)) as caught:
        verify_bundle(damage(signed), jwks(tmp_path))
    assert str(caught.value) == caught.value.reason_en
    assert re.search("[а-яё]", caught.value.reason_ru)


# --- canonical form -----------------------------------------------------------------------

def test_reordered_and_reindented_json_still_verifies(tmp_path, bundle):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    text = json.dumps(signed, indent=7, sort_keys=True, ensure_ascii=True)
    reread = json.loads(text)
    assert list(reread) != list(signed)
    verify_bundle(reread, jwks(tmp_path))


def test_reordering_an_array_is_a_change(tmp_path, bundle):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO, WHEN)
    reordered = {**signed, "entry": list(reversed(signed["entry"]))}
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_bundle(reordered, jwks(tmp_path))


# --- keys and rotation --------------------------------------------------------------------

def test_two_active_keys_both_verify_during_rotation(tmp_path, bundle):
    old = generate_key(tmp_path, "ES256")
    new = generate_key(tmp_path, "ES256")
    assert load_signer(tmp_path, "ES256") == new, "the newest key signs"
    keys = jwks(tmp_path)
    assert {k["kid"] for k in keys["keys"]} == {old.kid, new.kid}
    for signer in (old, new):
        verify_bundle(sign_bundle(bundle, signer, WHO, WHEN), keys)


def test_a_retired_then_deleted_key_no_longer_verifies(tmp_path, bundle):
    old = generate_key(tmp_path, "ES256")
    new = generate_key(tmp_path, "ES256")
    signed_with_old = sign_bundle(bundle, old, WHO, WHEN)

    retire_key(tmp_path, old.kid)
    assert [k["kid"] for k in jwks(tmp_path)["keys"]] == [new.kid]
    with pytest.raises(SignatureInvalid, match="Unknown signing key"):
        verify_bundle(signed_with_old, jwks(tmp_path))

    (tmp_path / f"{old.kid}.json").unlink()
    with pytest.raises(SignatureInvalid, match="Unknown signing key"):
        verify_bundle(signed_with_old, jwks(tmp_path))
    verify_bundle(sign_bundle(bundle, new, WHO, WHEN), jwks(tmp_path))


def test_a_retired_key_is_never_used_to_sign(tmp_path):
    older = generate_key(tmp_path, "ES256")
    newest = generate_key(tmp_path, "ES256")
    retire_key(tmp_path, newest.kid)
    assert load_signer(tmp_path, "ES256") == older
    with pytest.raises(KeyError, match="retired"):
        load_signer(tmp_path, kid=newest.kid)
    retire_key(tmp_path, older.kid)
    with pytest.raises(FileNotFoundError):
        load_signer(tmp_path, "ES256")
    assert ensure_signer(tmp_path, "ES256").kid not in {older.kid, newest.kid}


def test_verification_needs_only_the_bundle_and_the_jwks(tmp_path, bundle):
    signed = sign_bundle(bundle, generate_key(tmp_path / "keys", "RS256"), WHO, WHEN)
    published = json.loads(json.dumps(jwks(tmp_path / "keys")))
    shutil.rmtree(tmp_path / "keys")
    verify_bundle(json.loads(json.dumps(signed, ensure_ascii=False)), published)


def test_the_jwks_never_holds_private_parameters(tmp_path):
    for alg in ALGORITHMS:
        signer = generate_key(tmp_path, alg)
        assert "d" in json.loads((tmp_path / f"{signer.kid}.json").read_text())
    published = jwks(tmp_path)["keys"]
    assert sorted(k["alg"] for k in published) == sorted(ALGORITHMS)
    for jwk in published:
        assert not PRIVATE_MEMBERS & set(jwk), jwk
        assert not {"created", "retired"} & set(jwk), "file bookkeeping stays private"
        assert jwk["use"] == "sig"
        assert jwk == load_signer(tmp_path, kid=jwk["kid"]).public_jwk()


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_generate_key_writes_an_owner_only_file_in_a_new_directory(tmp_path):
    keys_dir = tmp_path / "var" / "keys"
    signer = generate_key(keys_dir, "ES256")
    path = keys_dir / f"{signer.kid}.json"
    assert sorted(p.name for p in keys_dir.iterdir()) == [path.name]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    retire_key(keys_dir, signer.kid)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "rewriting keeps the mode"


def test_kids_are_unique_thumbprints(tmp_path):
    kids = {generate_key(tmp_path, "ES256").kid for _ in range(5)}
    assert len(kids) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", kid) for kid in kids)


def test_ensure_signer_creates_once_then_reuses(tmp_path):
    first = ensure_signer(tmp_path / "keys", "ES256")
    again = ensure_signer(tmp_path / "keys", "ES256")
    assert again == first
    assert len(list((tmp_path / "keys").glob("*.json"))) == 1
    assert ensure_signer(tmp_path / "keys", "RS256").alg == "RS256"
    assert len(list((tmp_path / "keys").glob("*.json"))) == 2


def test_load_signer_says_when_there_is_no_such_key(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_signer(tmp_path / "absent")
    es = generate_key(tmp_path, "ES256")
    with pytest.raises(FileNotFoundError):
        load_signer(tmp_path, "RS256")
    with pytest.raises(KeyError):
        load_signer(tmp_path, kid="no-such-kid")
    with pytest.raises(KeyError):
        load_signer(tmp_path, kid="../" + es.kid)
    with pytest.raises(KeyError):
        load_signer(tmp_path, alg="RS256", kid=es.kid)
    with pytest.raises(ValueError, match="unsupported"):
        generate_key(tmp_path, "HS256")
    assert load_signer(tmp_path, kid=es.kid) == es


def test_the_private_key_stays_out_of_reprs(tmp_path):
    signer = generate_key(tmp_path, "ES256")
    private = json.loads((tmp_path / f"{signer.kid}.json").read_text())["d"]
    assert private not in repr(signer)
    assert "d" not in signer.public_jwk()


def test_the_signing_time_is_kept_in_its_own_time_zone(tmp_path, bundle):
    signed = sign_bundle(bundle, generate_key(tmp_path, "ES256"), WHO,
                         datetime(2026, 1, 5, 6, 0, tzinfo=UTC))
    assert signed["signature"]["when"] == "2026-01-05T06:00:00.000+00:00"
