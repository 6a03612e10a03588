"""Bundle.signature: detached JWS over the canonical Bundle, and the keys that make it.

What goes on the wire (docs/upstream-protocol.md, "Signature"):

    payload  = RFC 8785 canonical JSON of the Bundle without its `signature` element
    header   = {"alg": ..., "kid": ..., "b64": false, "crit": ["b64"]}
    JWS      = BASE64URL(header) "." "." BASE64URL(signature)          (compact, detached)
    signed   = ASCII(BASE64URL(header) "." ) || payload                (RFC 7797: not encoded)
    Bundle.signature.data = standard base64 of the JWS's ASCII

Only the Bundle's content is signed: `signature.when` and `signature.who` sit outside
the payload and are not protected. A verifier needs the Bundle and the JWKS and nothing
else. It takes the algorithm from the JWK named by `kid` (its `alg`, or else its key
type); a header `alg` that differs from the key's, `none` included, is refused.

Algorithms:

- `ES256` (default; P-256) and `RS256` (RSA, 2048-bit keys generated) are plain
  RFC 7515/7518 through joserfc.
- `GOST3410-2012-256`: GOST R 34.10-2012 with a 256-bit key on the curve
  id-tc26-gost-3410-2012-256-paramSetA (OID 1.2.643.7.1.2.1.1.1, TC 26's twisted
  Edwards curve in its Weierstrass form, cofactor 4), digest GOST R 34.11-2012
  (Streebog-256), through the pure-Python `gostcrypto`. No JOSE registration exists
  for it, so this module defines it:
    e = Streebog-256(signing input), its 32 bytes read as a little-endian integer
        (the digest reversed, the standard's own vector order), taken mod q;
    signature = s || r, each 32 bytes big-endian (the layout of RFC 4491/RFC 7091);
    JWK = {"kty": "GOST", "crv": "id-tc26-gost-3410-2012-256-paramSetA",
           "x", "y": the public point's affine coordinates, 32 bytes big-endian, base64url,
           "d": the private scalar, same encoding (private key files only),
           "kid", "alg": "GOST3410-2012-256", "use": "sig"}.
  The JWS is put together here rather than in joserfc: joserfc accepts only its own
  four key classes and its algorithm registry is shared by the whole process.
  gostcrypto is neither certified СКЗИ nor constant-time; a qualified electronic
  signature for ЕГИСЗ needs a certified provider behind the same `Signer` interface.

Keys live in one directory, one private JWK per file `<kid>.json`, mode 0600. The kid is
the key's RFC 7638 thumbprint (for GOST computed the same way as for EC: crv, kty, x,
y). Besides the JWK members a file holds `created` and, once retired, `retired` (UTC
timestamps); neither is ever published. Rotation: generate a new key (both are
published and verify), sign with the newest, and retire the old one once nothing
signed with it can still be in flight. A retired key is neither published nor used.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import rfc8785
from gostcrypto import gosthash, gostsignature
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey, thumbprint

ALGORITHMS = ("ES256", "RS256", "GOST3410-2012-256")
GOST = "GOST3410-2012-256"
GOST_CURVE = "id-tc26-gost-3410-2012-256-paramSetA"
RSA_KEY_BITS = 2048
SIG_FORMAT = "application/jose"
TARGET_FORMAT = "application/fhir+json"
SIGNATURE_TYPE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.14",
                  "display": "Source Signature"}

# The key type (and curve) each algorithm must have, and the JWK members of each key
# type: the public ones are also exactly the RFC 7638 thumbprint members.
_KEY_TYPE = {"ES256": ("EC", "P-256"), "RS256": ("RSA", None), GOST: ("GOST", GOST_CURVE)}
_PUBLIC = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e"),
           "GOST": ("kty", "crv", "x", "y")}
_PRIVATE = {"EC": ("d",), "RSA": ("d", "p", "q", "dp", "dq", "qi"), "GOST": ("d",)}
_COMMON = ("kid", "alg", "use")
_HEADER_MEMBERS = {"alg", "kid", "b64", "crit"}
_KID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class SignatureInvalid(Exception):
    """A Bundle's signature is missing, malformed, or does not verify."""

    def __init__(self, reason_ru: str, reason_en: str) -> None:
        super().__init__(reason_en)
        self.reason_ru = reason_ru
        self.reason_en = reason_en


@dataclass(frozen=True)
class Signer:
    """One private key, ready to sign. Made by `generate_key` and `load_signer`."""

    kid: str
    alg: str
    _jwk: MappingProxyType = field(repr=False, compare=False)
    _key: Any = field(repr=False, compare=False)  # joserfc key, or the GOST scalar

    def sign(self, payload: bytes) -> str:
        """The compact detached JWS over `payload`: "header..signature"."""
        header = {"alg": self.alg, "kid": self.kid, "b64": False, "crit": ["b64"]}
        if self.alg == GOST:
            encoded_header = _b64url(json.dumps(header, separators=(",", ":")).encode())
            signing_input = encoded_header.encode("ascii") + b"." + payload
            return f"{encoded_header}..{_b64url(_gost_sign(self._key, signing_input))}"
        compact = jws.serialize_compact(header, payload, self._key,
                                        registry=_jose_registry(self.alg))
        parts = compact.split(".")
        return f"{parts[0]}..{parts[-1]}"

    def public_jwk(self) -> dict:
        return _public_jwk(self._jwk)

    def sign_raw(self, message: bytes) -> bytes:
        """The bare signature bytes a JWS of this key would carry, over `message` itself.

        For formats that wrap signatures their own way (the enveloped XML signature of
        the legacy export): ES256 r || s, RS256 PKCS #1 v1.5, GOST s || r as above.
        """
        if self.alg == GOST:
            return _gost_sign(self._key, message)
        return _jose_registry(self.alg).get_alg(self.alg).sign(message, self._key)


def generate_key(keys_dir: Path, alg: str = "ES256") -> Signer:
    """A new key of `alg`, written to keys_dir/<kid>.json (mode 0600)."""
    _check_alg(alg)
    parameters = {"alg": alg, "use": "sig"}
    jwk: dict[str, Any]
    if alg == "ES256":
        jwk = dict(ECKey.generate_key("P-256", parameters=parameters).as_dict(private=True))
    elif alg == "RS256":
        jwk = dict(RSAKey.generate_key(RSA_KEY_BITS, parameters=parameters)
                   .as_dict(private=True))
    else:
        scalar = secrets.randbelow(_gost_curve()["q"] - 1) + 1
        point = _gost().public_key_generate(bytearray(scalar.to_bytes(32, "big")))
        jwk = {"kty": "GOST", "crv": GOST_CURVE, "x": _b64url(bytes(point[:32])),
               "y": _b64url(bytes(point[32:])), "d": _b64url(scalar.to_bytes(32, "big")),
               **parameters}
    jwk["kid"] = thumbprint({name: jwk[name] for name in _PUBLIC[jwk["kty"]]})
    jwk["created"] = _now()
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(keys_dir / f"{jwk['kid']}.json", jwk)
    return _signer(jwk)


def load_signer(keys_dir: Path, alg: str | None = None, kid: str | None = None) -> Signer:
    """The key `kid`, or the newest active key (of `alg`, when given).

    Raises KeyError for an unknown or retired `kid` (or one of another alg), and
    FileNotFoundError when no active key of `alg` exists.
    """
    if alg is not None:
        _check_alg(alg)
    if kid is not None:
        record = _read_key(keys_dir, kid)
        if record.get("retired"):
            raise KeyError(f"key {kid} in {keys_dir} is retired")
        if alg is not None and record["alg"] != alg:
            raise KeyError(f"key {kid} in {keys_dir} is {record['alg']}, not {alg}")
        return _signer(record)
    active = [r for r in _active(keys_dir) if alg is None or r["alg"] == alg]
    if not active:
        raise FileNotFoundError(f"no active {alg or 'signing'} key in {keys_dir}")
    return _signer(active[0])


def ensure_signer(keys_dir: Path, alg: str = "ES256") -> Signer:
    """The newest active key of `alg`, generated first if there is none (first start).

    Processes starting together may each generate one; all are published, so that
    is harmless, and from then on every process loads the newest.
    """
    try:
        return load_signer(keys_dir, alg)
    except FileNotFoundError:
        return generate_key(keys_dir, alg)


def jwks(keys_dir: Path) -> dict:
    """The JWKS to publish: the public JWK of every active key, newest first."""
    return {"keys": [_public_jwk(record) for record in _active(keys_dir)]}


def retire_key(keys_dir: Path, kid: str) -> None:
    """Stop publishing `kid` and never sign with it again. Its file stays."""
    record = _read_key(keys_dir, kid)
    if not record.get("retired"):
        record["retired"] = _now()
        _write_private(keys_dir / f"{kid}.json", record)


def canonical(bundle: dict) -> bytes:
    """The signed payload: RFC 8785 JSON of the Bundle without `signature`."""
    return rfc8785.dumps({name: value for name, value in bundle.items() if name != "signature"})


def sign_bundle(bundle: dict, signer: Signer, who: dict, when: datetime) -> dict:
    """A new Bundle dict (entries shared, not copied) with `signature` filled in."""
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("Bundle.signature.when needs a time zone (FHIR instant)")
    if offset % timedelta(minutes=1):  # FHIR offsets have no seconds
        when = when.astimezone(UTC)
    compact = signer.sign(canonical(bundle))
    signature = {
        "type": [dict(SIGNATURE_TYPE)],
        "when": when.isoformat(timespec="milliseconds"),
        "who": json.loads(json.dumps(who)),
        "targetFormat": TARGET_FORMAT,
        "sigFormat": SIG_FORMAT,
        "data": base64.b64encode(compact.encode("ascii")).decode("ascii"),
    }
    signed = {name: value for name, value in bundle.items() if name != "signature"}
    signed["signature"] = signature
    return signed


def verify_bundle(bundle: dict, jwks: dict) -> dict:
    """The protected header of a valid signature; SignatureInvalid otherwise."""
    signature = bundle.get("signature")
    if not isinstance(signature, dict):
        raise SignatureInvalid("Bundle не подписан: нет элемента Bundle.signature.",
                               "The Bundle is not signed: Bundle.signature is missing.")
    if signature.get("sigFormat") != SIG_FORMAT:
        raise SignatureInvalid(
            f"Bundle.signature.sigFormat должен быть {SIG_FORMAT}, "
            f"получено: {signature.get('sigFormat')!r}.",
            f"Bundle.signature.sigFormat must be {SIG_FORMAT}, "
            f"got {signature.get('sigFormat')!r}.")
    if signature.get("targetFormat", TARGET_FORMAT) != TARGET_FORMAT:
        raise SignatureInvalid(
            f"Bundle.signature.targetFormat должен быть {TARGET_FORMAT}.",
            f"Bundle.signature.targetFormat must be {TARGET_FORMAT}.")
    encoded_header, encoded_signature = _split_jws(signature.get("data"))
    header = _checked_header(encoded_header)
    jwk = _jwk_for(jwks, header["kid"])
    alg = _jwk_alg(jwk)
    if header["alg"] != alg:
        raise SignatureInvalid(
            f"Алгоритм подписи {header['alg']!r} не совпадает с алгоритмом ключа "
            f"{header['kid']!r} ({alg}).",
            f"Signature alg {header['alg']!r} does not match the alg of key "
            f"{header['kid']!r} ({alg}).")
    try:
        payload = canonical(bundle)
    except rfc8785.CanonicalizationError as exc:
        raise SignatureInvalid(
            "Содержимое Bundle нельзя привести к канонической форме JSON (RFC 8785).",
            f"The Bundle's content has no RFC 8785 canonical form: {exc}.") from exc
    if alg == GOST:
        valid = _gost_verify(jwk, encoded_header.encode("ascii") + b"." + payload,
                             encoded_signature)
    else:
        valid = _jose_verify(jwk, alg, f"{encoded_header}..{encoded_signature}", payload)
    if not valid:
        raise SignatureInvalid(
            "Подпись Bundle не сходится: содержимое изменено после подписания "
            "или подписано другим ключом.",
            "The Bundle's signature does not verify: the content was changed after "
            "signing, or signed with another key.")
    return header


def verify_raw(jwk: dict, message: bytes, signature: bytes) -> bool:
    """Whether `signature`, made by `Signer.sign_raw`, is the public `jwk`'s over `message`.

    SignatureInvalid when the JWK fits none of ALGORITHMS.
    """
    alg = _jwk_alg(jwk)
    if alg == GOST:
        return _gost_verify(jwk, message, _b64url(signature))
    try:
        if alg == "RS256":
            if len(_b64url_decode(jwk["n"]).lstrip(b"\0")) * 8 < RSA_KEY_BITS:
                return False
            key: ECKey | RSAKey = RSAKey.import_key(_members(jwk, private=False))
        else:
            key = ECKey.import_key(_members(jwk, private=False))
        return _jose_registry(alg).get_alg(alg).verify(message, signature, key)
    except (JoseError, ValueError, KeyError, TypeError):
        return False


# --- verification steps ---------------------------------------------------------------

def _split_jws(data: Any) -> tuple[str, str]:
    """The header and signature segments of Bundle.signature.data."""
    try:
        compact = base64.b64decode(data, validate=True).decode("ascii")
    except (TypeError, ValueError) as exc:  # binascii.Error and UnicodeError are ValueErrors
        raise SignatureInvalid(
            "Bundle.signature.data не является base64 компактной JWS.",
            "Bundle.signature.data is not the base64 of a compact JWS.") from exc
    parts = compact.split(".")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise SignatureInvalid(
            "Bundle.signature.data: JWS должна иметь вид «заголовок..подпись».",
            "Bundle.signature.data: the JWS must have the form 'header..signature'.")
    if parts[1]:
        raise SignatureInvalid(
            "Bundle.signature.data: полезная нагрузка JWS должна быть отделена (пуста).",
            "Bundle.signature.data: the JWS payload must be detached (empty).")
    return parts[0], parts[2]


def _checked_header(encoded: str) -> dict:
    try:
        header = json.loads(_b64url_decode(encoded), object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise SignatureInvalid("Заголовок JWS не читается как JSON в base64url.",
                               "The JWS header is not base64url-encoded JSON.") from exc
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise SignatureInvalid("В заголовке JWS нет alg.", "The JWS header has no alg.")
    if header["alg"].lower() == "none":
        raise SignatureInvalid("Алгоритм none (без подписи) не принимается.",
                               "alg 'none' (unsigned) is not accepted.")
    if header["alg"] not in ALGORITHMS:
        raise SignatureInvalid(
            f"Алгоритм {header['alg']!r} не поддерживается; допустимы: {', '.join(ALGORITHMS)}.",
            f"alg {header['alg']!r} is not supported; use one of {', '.join(ALGORITHMS)}.")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise SignatureInvalid("В заголовке JWS нет kid.", "The JWS header has no kid.")
    if header.get("b64") is not False or header.get("crit") != ["b64"]:
        raise SignatureInvalid(
            "Заголовок JWS должен содержать \"b64\": false и \"crit\": [\"b64\"] (RFC 7797).",
            "The JWS header must carry \"b64\": false and \"crit\": [\"b64\"] (RFC 7797).")
    extra = set(header) - _HEADER_MEMBERS
    if extra:
        raise SignatureInvalid(
            f"Лишние параметры в заголовке JWS: {', '.join(sorted(extra))}.",
            f"Unexpected JWS header parameters: {', '.join(sorted(extra))}.")
    return header


def _jwk_for(jwks: dict, kid: str) -> dict:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    found = [k for k in keys or [] if isinstance(k, dict) and k.get("kid") == kid]
    if len(found) != 1:
        raise SignatureInvalid(
            f"Ключ подписи {kid!r} неизвестен (нет в опубликованном JWKS или отозван).",
            f"Unknown signing key {kid!r} (not in the published JWKS, or retired).")
    jwk = found[0]
    if jwk.get("use", "sig") != "sig":
        raise SignatureInvalid(f"Ключ {kid!r} не предназначен для подписи.",
                               f"Key {kid!r} is not a signing key (use != sig).")
    return jwk


def _jwk_alg(jwk: dict) -> str:
    """The alg a JWK is for, from its key type; its own `alg` must agree."""
    key_type = (jwk.get("kty"), jwk.get("crv") if jwk.get("kty") != "RSA" else None)
    algs = [alg for alg, kty_crv in _KEY_TYPE.items() if kty_crv == key_type]
    if not algs or jwk.get("alg", algs[0]) != algs[0]:
        raise SignatureInvalid(
            f"Ключ {jwk.get('kid')!r} не подходит ни для одного допустимого алгоритма.",
            f"Key {jwk.get('kid')!r} (kty {jwk.get('kty')!r}, alg {jwk.get('alg')!r}) "
            f"fits none of {', '.join(ALGORITHMS)}.")
    return algs[0]


def _jose_verify(jwk: dict, alg: str, compact: str, payload: bytes) -> bool:
    try:
        if alg == "RS256":
            if len(_b64url_decode(jwk["n"]).lstrip(b"\0")) * 8 < RSA_KEY_BITS:
                return False  # joserfc would only warn about a short key
            key: ECKey | RSAKey = RSAKey.import_key(_members(jwk, private=False))
        else:
            key = ECKey.import_key(_members(jwk, private=False))
        jws.deserialize_compact(compact, key, payload=payload, registry=_jose_registry(alg))
    except (JoseError, ValueError, KeyError, TypeError):
        return False
    return True


# --- GOST R 34.10-2012 -----------------------------------------------------------------

@cache
def _gost_curve() -> dict:
    return gostsignature.CURVES_R_1323565_1_024_2019[GOST_CURVE]


@cache
def _gost() -> Any:
    return gostsignature.new(gostsignature.MODE_256, _gost_curve())


def _gost_digest(message: bytes) -> bytearray:
    """Streebog-256 reversed, so gostcrypto's big-endian read yields the standard's e."""
    return bytearray(gosthash.new("streebog256", data=bytearray(message)).digest()[::-1])


def _gost_sign(scalar: int, message: bytes) -> bytes:
    r_s = _gost().sign(bytearray(scalar.to_bytes(32, "big")), _gost_digest(message))
    return bytes(r_s[32:] + r_s[:32])


def _gost_verify(jwk: dict, message: bytes, encoded_signature: str) -> bool:
    curve = _gost_curve()
    try:
        x, y = _b64url_decode(jwk["x"]), _b64url_decode(jwk["y"])
        s_r = _b64url_decode(encoded_signature)
    except (KeyError, TypeError, ValueError):
        return False
    if len(x) != 32 or len(y) != 32 or len(s_r) != 64:
        return False
    px, py = int.from_bytes(x, "big"), int.from_bytes(y, "big")
    if px >= curve["p"] or py >= curve["p"] or \
            (py * py - px ** 3 - curve["a"] * px - curve["b"]) % curve["p"]:
        return False  # not a point of the curve
    return bool(_gost().verify(bytearray(x + y), _gost_digest(message),
                               bytearray(s_r[32:] + s_r[:32])))


# --- key files -------------------------------------------------------------------------

def _signer(record: dict) -> Signer:
    jwk = _members(record, private=True)
    if record["alg"] == GOST:
        key: Any = int.from_bytes(_b64url_decode(jwk["d"]), "big")
    elif record["alg"] == "RS256":
        key = RSAKey.import_key(jwk)
    else:
        key = ECKey.import_key(jwk)
    return Signer(record["kid"], record["alg"], MappingProxyType(jwk), key)


def _read_key(keys_dir: Path, kid: str) -> dict:
    path = keys_dir / f"{kid}.json"
    if not _KID.fullmatch(kid) or not path.is_file():
        raise KeyError(f"no key {kid!r} in {keys_dir}")
    return _parse_key_file(path)


def _active(keys_dir: Path) -> list[dict]:
    """Every key file that is not retired, newest first."""
    if not keys_dir.is_dir():
        return []
    records = [_parse_key_file(path) for path in keys_dir.glob("*.json")]
    active = [record for record in records if not record.get("retired")]
    return sorted(active, key=lambda r: (r["created"], r["kid"]), reverse=True)


def _parse_key_file(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        kty = _KEY_TYPE[record["alg"]][0]
        ok = record["kid"] == path.stem and record["kty"] == kty and \
            isinstance(record["created"], str) and all(name in record for name in _PRIVATE[kty])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a key file of gateway.signing") from exc
    if not ok:
        raise ValueError(f"{path} is not a key file of gateway.signing")
    return record


def _write_private(path: Path, record: dict) -> None:
    """Write atomically, readable by the owner only (mkstemp creates files 0600)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(record, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _members(jwk: dict, *, private: bool) -> dict:
    """The JWK members of `jwk` (allow-listed), with or without the private ones."""
    kty = jwk.get("kty")
    if kty not in _PUBLIC:
        raise ValueError(f"unsupported kty {kty!r}")
    names = _PUBLIC[kty] + _COMMON + (_PRIVATE[kty] if private else ())
    return {name: jwk[name] for name in names if name in jwk}


def _public_jwk(jwk: Any) -> dict:
    return _members(dict(jwk), private=False)


# --- small helpers ---------------------------------------------------------------------

@cache
def _jose_registry(alg: str) -> jws.JWSRegistry:
    registry = jws.JWSRegistry(algorithms=[alg])
    # joserfc caps payloads at 128 kB; ours is our own canonical form of a Bundle
    # that was already accepted, so its size is not the attacker's to choose here.
    registry.max_payload_length = sys.maxsize
    return registry


def _check_alg(alg: str) -> None:
    if alg not in ALGORITHMS:
        raise ValueError(f"unsupported signing alg {alg!r}; use one of {ALGORITHMS}")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Strict base64url without padding: one encoding per value, nothing else accepted."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    if _b64url(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate member in JWS header")
    return dict(pairs)
