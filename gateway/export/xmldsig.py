"""Enveloped XML signatures (XMLDSig 1.1) over documents written as a stream.

XMLDSig libraries sign a tree they hold in memory; an export of 100,000 records
must not build one. The enveloped signature of a whole document (Reference URI="",
transforms enveloped-signature then Exclusive XML Canonicalization 1.0) digests
the document's canonical form without the Signature element. So the writer here
emits a document that *is* its own canonical form, between the XML declaration and
the end: the root start tag and every child as lxml canonicalises them (exc-c14n),
each child without the default-namespace declaration the root already makes (in
the whole document exc-c14n does not repeat it). It hashes those bytes as they go
out, adds the root end tag to the hash, and then writes `ds:Signature` as the last
child of the root, right before the end tag: what the enveloped-signature transform
removes is exactly what was never hashed.

    <?xml version="1.0" encoding="UTF-8"?>           not in the canonical form
    <root xmlns="urn:…" a="…">                          hashed
    <child>…</child>\\n<child>…</child>\\n…              hashed (as written)
    <ds:Signature>…</ds:Signature>                    removed by the transform
    </root>                                           hashed (before the signature)

The SignedInfo is canonicalised (exc-c14n) and signed with the gateway's key
(`gateway.signing.Signer.sign_raw`): ECDSA-SHA256 (SignatureValue r || s, RFC 4051 /
XMLDSig 1.1), RSA-SHA256 (PKCS #1 v1.5), or GOST R 34.10-2012 with Streebog-256
under the CryptoPro URIs. KeyInfo names the key (KeyName = kid) and, for ECDSA and
RSA, carries it (dsig11:ECKeyValue, ds:RSAKeyValue) for tools that want it; trust
comes from the key the verifier is given, never from KeyInfo.

Verification (`verify_enveloped`) holds the document in memory: ECDSA and RSA go
through signxml, a maintained XMLDSig library; GOST, which signxml and Debian's
xmlsec1 do not know, through the same canonicalisation (lxml) and gostcrypto.
"""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import cryptography.exceptions
import signxml
from cryptography.hazmat.primitives import serialization
from gostcrypto import gosthash
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from lxml import etree

from gateway import signing
from gateway.signing import SignatureInvalid, Signer

DS = "http://www.w3.org/2000/09/xmldsig#"
DSIG11 = "http://www.w3.org/2009/xmldsig11#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
GOST_SIGNATURE = "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34102012-gostr34112012-256"
GOST_DIGEST = "urn:ietf:params:xml:ns:cpxmlsec:algorithms:gostr34112012-256"
P256_URI = "urn:oid:1.2.840.10045.3.1.7"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


class _Hash(Protocol):
    def update(self, data: bytes) -> None: ...
    def digest(self) -> bytes: ...


class _Streebog256:
    """gostcrypto's Streebog-256 behind hashlib's update/digest."""

    def __init__(self) -> None:
        self._hash = gosthash.new("streebog256")

    def update(self, data: bytes) -> None:
        self._hash.update(bytearray(data))

    def digest(self) -> bytes:
        return bytes(self._hash.digest())


@dataclass(frozen=True)
class Profile:
    """The algorithm URIs of one signing alg, and the digest that goes with it."""

    signature_method: str
    digest_method: str
    new_hash: Callable[[], _Hash]


PROFILES = {
    "ES256": Profile(ECDSA_SHA256, SHA256, hashlib.sha256),
    "RS256": Profile(RSA_SHA256, SHA256, hashlib.sha256),
    signing.GOST: Profile(GOST_SIGNATURE, GOST_DIGEST, _Streebog256),
}
_ALG_OF_METHOD = {profile.signature_method: alg for alg, profile in PROFILES.items()}
_KEY_TYPE = {"ES256": "EC", "RS256": "RSA", signing.GOST: "GOST"}


# --- writing ---------------------------------------------------------------------------

class EnvelopedWriter:
    """One signed document, written piece by piece; each method returns the bytes to emit.

    `root` is an empty element: its tag, default namespace and attributes make the
    document's root. Children must be elements of that default namespace and use no
    other namespace (what exc-c14n would then render differently in context is not
    handled). Call `start`, then `child`/`whitespace` any number of times, then `finish`.
    """

    def __init__(self, root: etree._Element, signer: Signer) -> None:
        if len(root) or root.text:
            raise ValueError("the root passed to EnvelopedWriter must be empty")
        self._signer = signer
        self._profile = PROFILES[signer.alg]
        self._hash = self._profile.new_hash()
        self._namespace = etree.QName(root).namespace
        self._start_tag, self._end_tag = _root_tags(root)

    def start(self) -> bytes:
        return XML_DECLARATION + self._hashed(self._start_tag)

    def child(self, element: etree._Element) -> bytes:
        return self._hashed(canonical_child(element, self._namespace))

    def whitespace(self, text: str = "\n") -> bytes:
        """Whitespace between children, for readers; it is part of what is signed."""
        if text.strip():
            raise ValueError("only whitespace may stand between the children")
        return self._hashed(text.encode("ascii"))

    def finish(self) -> bytes:
        """The Signature (over everything so far plus the end tag) and the end tag."""
        self._hash.update(self._end_tag)
        signature = signature_element(self._hash.digest(), self._signer, self._profile)
        return etree.tostring(signature, encoding="utf-8", xml_declaration=False) \
            + self._end_tag + b"\n"

    def _hashed(self, data: bytes) -> bytes:
        self._hash.update(data)
        return data


def canonical_child(element: etree._Element, namespace: str | None) -> bytes:
    """`element` in the exc-c14n form it has as a child of a root declaring `namespace`.

    Canonicalised alone, the element declares the default namespace on its top tag;
    inside the document the root has already rendered that declaration, so exc-c14n
    leaves it out there (tests/test_legacy_export.py checks this against lxml).
    The element's tail, if any, is dropped: the writer places whitespace itself.
    """
    element.tail = None
    data = etree.tostring(element, method="c14n", exclusive=True)
    if not namespace:
        return data
    local = etree.QName(element).localname
    head = f'<{local} xmlns="{namespace}"'.encode()
    if etree.QName(element).namespace != namespace or not data.startswith(head):
        raise ValueError(f"<{local}> is not in the document's namespace {namespace}")
    return f"<{local}".encode() + data[len(head):]


def signature_element(digest: bytes, signer: Signer, profile: Profile) -> etree._Element:
    """ds:Signature over a whole document (Reference URI="") whose digest is `digest`."""
    signature = etree.Element(_ds("Signature"), nsmap={"ds": DS})
    signed_info = etree.SubElement(signature, _ds("SignedInfo"))
    etree.SubElement(signed_info, _ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    etree.SubElement(signed_info, _ds("SignatureMethod"), Algorithm=profile.signature_method)
    reference = etree.SubElement(signed_info, _ds("Reference"), URI="")
    transforms = etree.SubElement(reference, _ds("Transforms"))
    etree.SubElement(transforms, _ds("Transform"), Algorithm=ENVELOPED)
    etree.SubElement(transforms, _ds("Transform"), Algorithm=EXC_C14N)
    etree.SubElement(reference, _ds("DigestMethod"), Algorithm=profile.digest_method)
    etree.SubElement(reference, _ds("DigestValue")).text = _b64(digest)
    canonical_signed_info = etree.tostring(signed_info, method="c14n", exclusive=True)
    etree.SubElement(signature, _ds("SignatureValue")).text = \
        _b64(signer.sign_raw(canonical_signed_info))
    signature.append(key_info(signer.kid, signer.public_jwk()))
    return signature


def key_info(kid: str, jwk: dict) -> etree._Element:
    """KeyName, and the public key itself where XMLDSig has a KeyValue for it (not GOST)."""
    info = etree.Element(_ds("KeyInfo"), nsmap={"ds": DS})
    etree.SubElement(info, _ds("KeyName")).text = kid
    if jwk["kty"] == "EC":
        value = etree.SubElement(info, _ds("KeyValue"))
        ec = etree.SubElement(value, f"{{{DSIG11}}}ECKeyValue", nsmap={"dsig11": DSIG11})
        etree.SubElement(ec, f"{{{DSIG11}}}NamedCurve", URI=P256_URI)
        point = b"\x04" + _b64url_decode(jwk["x"]) + _b64url_decode(jwk["y"])
        etree.SubElement(ec, f"{{{DSIG11}}}PublicKey").text = _b64(point)
    elif jwk["kty"] == "RSA":
        value = etree.SubElement(info, _ds("KeyValue"))
        rsa = etree.SubElement(value, _ds("RSAKeyValue"))
        etree.SubElement(rsa, _ds("Modulus")).text = _b64(_b64url_decode(jwk["n"]))
        etree.SubElement(rsa, _ds("Exponent")).text = _b64(_b64url_decode(jwk["e"]))
    return info


def _root_tags(root: etree._Element) -> tuple[bytes, bytes]:
    """The canonical start and end tags of the (empty) root element."""
    data = etree.tostring(root, method="c14n", exclusive=True)
    end = f"</{etree.QName(root).localname}>".encode()
    return data[:-len(end)], end


# --- verifying -------------------------------------------------------------------------

@dataclass(frozen=True)
class Verified:
    """What a valid signature was made with."""

    kid: str | None
    alg: str
    root: str              # the tag of the document's root, {namespace}name


def verify_enveloped(source: bytes | str | Path | IO[bytes], key: Any) -> Verified:
    """Check the enveloped signature of a whole document; SignatureInvalid if it fails.

    `source`: the document's bytes, a path, or a binary file. `key`: what is trusted —
    a JWKS (the key is picked by KeyName), one public JWK, a PEM public key, or a
    `cryptography` public key. The document must carry exactly one ds:Signature, the
    last child of its root, with one Reference URI="" transformed by
    enveloped-signature and exc-c14n: anything else (a signature over part of the
    document, a second signature) is refused rather than interpreted.
    """
    data = _read(source)
    root = _parse(data)
    signature = _checked_signature(root)
    kid = _text(signature.find(f"{_ds('KeyInfo')}/{_ds('KeyName')}"))
    method = signature.find(f"{_ds('SignedInfo')}/{_ds('SignatureMethod')}").get("Algorithm")
    alg = _ALG_OF_METHOD.get(method)
    if alg is None:
        raise SignatureInvalid(f"Алгоритм подписи {method!r} не поддерживается.",
                               f"Signature method {method!r} is not supported.")
    jwk = trusted_jwk(key, kid)
    if _KEY_TYPE[alg] != jwk.get("kty"):
        raise _mismatch()
    if alg == signing.GOST:
        _verify_own(root, signature, jwk, PROFILES[alg])
    else:
        _verify_signxml(data, jwk, alg)
    return Verified(kid, alg, root.tag)


def trusted_jwk(key: Any, kid: str | None) -> dict:
    """The public JWK of `key` (see verify_enveloped), the one named `kid` in a JWKS."""
    if isinstance(key, dict) and "keys" in key:
        found = [k for k in key["keys"] if isinstance(k, dict) and k.get("kid") == kid]
        if len(found) != 1:
            raise SignatureInvalid(
                f"Ключ подписи {kid!r} не найден среди доверенных ключей.",
                f"Signing key {kid!r} is not among the trusted keys.")
        return found[0]
    if isinstance(key, dict):
        return key
    if not isinstance(key, (str, bytes)):
        key = key.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = key.encode("ascii") if isinstance(key, str) else key
    for key_class in (ECKey, RSAKey):
        try:
            return dict(key_class.import_key(pem).as_dict(private=False))
        except (JoseError, ValueError, TypeError):
            continue
    raise ValueError("the trusted key is neither a JWKS, a JWK nor an EC or RSA public key")


def _checked_signature(root: etree._Element) -> etree._Element:
    signatures = list(root.iter(_ds("Signature")))
    if len(signatures) != 1 or len(root) == 0 or root[-1] is not signatures[0]:
        raise SignatureInvalid(
            "Документ должен содержать ровно одну подпись ds:Signature, последним "
            "элементом корня.",
            "The document must hold exactly one ds:Signature, as the last child of its root.")
    signature = signatures[0]
    references = signature.findall(f"{_ds('SignedInfo')}/{_ds('Reference')}")
    transforms = [t.get("Algorithm") for t in
                  signature.iterfind(f".//{_ds('Reference')}/{_ds('Transforms')}/{_ds('Transform')}")]
    c14n = signature.find(f"{_ds('SignedInfo')}/{_ds('CanonicalizationMethod')}")
    if len(references) != 1 or references[0].get("URI") != "" \
            or transforms != [ENVELOPED, EXC_C14N] \
            or c14n is None or c14n.get("Algorithm") != EXC_C14N \
            or signature.find(f"{_ds('SignedInfo')}/{_ds('SignatureMethod')}") is None:
        raise SignatureInvalid(
            "Подпись должна охватывать весь документ: одна ссылка URI=\"\", "
            "преобразования enveloped-signature и exc-c14n.",
            "The signature must cover the whole document: one Reference URI=\"\", "
            "transforms enveloped-signature and exc-c14n.")
    return signature


def _verify_signxml(data: bytes, jwk: dict, alg: str) -> None:
    """ECDSA and RSA through signxml, then: was it the trusted key that verified?"""
    config = signxml.SignatureConfiguration(
        require_x509=False, location="./", expect_references=1,
        signature_methods=frozenset({signxml.SignatureMethod(PROFILES[alg].signature_method)}),
        digest_algorithms=frozenset({signxml.DigestAlgorithm.SHA256}))
    try:
        result = signxml.XMLVerifier().verify(data, expect_config=config)
    except (signxml.exceptions.SignXMLException, cryptography.exceptions.InvalidSignature,
            etree.DocumentInvalid, ValueError, KeyError) as exc:
        raise _broken(str(exc)) from exc
    assert isinstance(result, signxml.VerifyResult)
    if result.signature_key != _public_pem(jwk):
        raise _mismatch()


def _verify_own(root: etree._Element, signature: etree._Element, jwk: dict,
                profile: Profile) -> None:
    """The same two checks signxml makes, for GOST: the digest, then the SignatureValue."""
    signed_info = signature.find(_ds("SignedInfo"))
    canonical_signed_info = etree.tostring(signed_info, method="c14n", exclusive=True)
    try:
        expected = base64.b64decode(_text(signed_info.find(f".//{_ds('DigestValue')}")),
                                    validate=True)
        value = base64.b64decode(_text(signature.find(_ds("SignatureValue"))), validate=True)
    except ValueError as exc:
        raise _broken("DigestValue or SignatureValue is not base64") from exc
    if signed_info.find(f".//{_ds('DigestMethod')}").get("Algorithm") != profile.digest_method:
        raise _broken("unexpected DigestMethod")
    _remove_keeping_tail(signature)
    digest = profile.new_hash()
    digest.update(etree.tostring(root.getroottree(), method="c14n", exclusive=True))
    if digest.digest() != expected:
        raise _broken("digest mismatch: the document was changed after signing")
    if not signing.verify_raw(jwk, canonical_signed_info, value):
        raise _mismatch()


def _remove_keeping_tail(element: etree._Element) -> None:
    """Remove `element` as the enveloped-signature transform does: its tail text stays."""
    parent, previous, tail = element.getparent(), element.getprevious(), element.tail
    parent.remove(element)
    if tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail


# --- small helpers ---------------------------------------------------------------------

def _read(source: bytes | str | Path | IO[bytes]) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, (str, Path)):
        return Path(source).read_bytes()
    return source.read()


def _parse(data: bytes) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=True, remove_blank_text=False)
    try:
        tree = etree.ElementTree(etree.fromstring(data, parser))
    except etree.XMLSyntaxError as exc:
        raise SignatureInvalid("Документ не является корректным XML.",
                               f"The document is not well-formed XML: {exc}.") from exc
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise SignatureInvalid("Объявления DOCTYPE в документе не допускаются.",
                               "DOCTYPE declarations are not accepted.")
    return tree.getroot()


def _public_pem(jwk: dict) -> bytes:
    key_class = RSAKey if jwk.get("kty") == "RSA" else ECKey
    members = {name: jwk[name] for name in ("kty", "crv", "x", "y", "n", "e") if name in jwk}
    public = key_class.import_key(members).public_key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def _broken(detail: str) -> SignatureInvalid:
    return SignatureInvalid(
        "Подпись документа не сходится: содержимое изменено после подписания.",
        f"The document's signature does not verify: {detail}")


def _mismatch() -> SignatureInvalid:
    return SignatureInvalid(
        "Документ подписан не доверенным ключом.",
        "The document was not signed with the trusted key.")


def _ds(name: str) -> str:
    return f"{{{DS}}}{name}"


def _text(element: etree._Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
