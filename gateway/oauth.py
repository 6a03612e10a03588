"""OAuth 2.0 client credentials with signed JWT assertions (SMART Backend Services).

A backend client proves who it is with a JWT it signs with its own private key
(RFC 7523 `private_key_jwt`), and gets a short-lived opaque access token whose
scopes say what it may do. No Flask here: gateway.api.oauth is the HTTP side.

Client id. The `client_id` of a client is its primary key as a decimal string
(`gateway clients list` shows it as `id`): the assertion's `iss` and `sub` carry it.
The client's public keys are its registered JWKS (`clients.jwks`); every key needs a
`kid`, which the assertion's header names.

Scopes. Only `system/` scopes exist here (no patient or user context in a backend
service). SMART v2 `system/Type.cruds` takes any non-empty subset of the letters
c(reate) r(ead) u(pdate) d(elete) s(earch), written back in that order; SMART v1
`system/Type.read|write|*` is read as `rs`, `cud` and `cruds`. `Type` is a FHIR type
or `*` (every type). A scope set is kept as {type: letters}; its canonical text lists
`system/*` first, then types in registry order, and leaves out a type whose letters
`*` already gives.

The assertion (`verify_assertion`) must have: `alg` RS384 or ES384 (what SMART
requires servers to support) or RS256/ES256; a `kid` of the client's JWKS whose key
fits the algorithm; `iss == sub == client_id`; `aud` the token endpoint's URL; `exp`
not past and at most `oauth_assertion_max_seconds` ahead (with LEEWAY seconds for
clock skew); a `jti` not used before; a valid signature. Until the signature is
checked every failure reads alike, so the endpoint never tells whether a client
id exists. The `jti` is recorded (`oauth_assertions`, keyed `<client>:<jti>`, so one
client's nonces never collide with another's) in the transaction that issues the
token, and kept until the assertion has expired for good; a replay in flight loses
on the primary key.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, RSAKey
from joserfc.jws import extract_compact
from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.registry import RESOURCE_TYPES
from gateway.store import clients
from gateway.store.clock import utcnow
from gateway.store.schema import oauth_assertions

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPE = "client_credentials"
ALGORITHMS = ("RS384", "ES384", "RS256", "ES256")
LETTERS = "cruds"
ALL = "*"
LEEWAY = 60                   # seconds of clock skew allowed on exp, nbf and iat
MAX_JTI = 200
MIN_RSA_BITS = 2048
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(system|patient|user)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)$")
_CLIENT_ID = re.compile(r"^[1-9][0-9]{0,17}$")
# One description for every failure before the signature is verified: the answer to
# an unknown client, a revoked one, an unknown kid and a forged signature is the same.
UNVERIFIABLE = ("The client assertion could not be verified: the client is unknown or "
                "inactive, no registered key has its kid, or the signature is invalid.")

Scopes = dict[str, str]        # resource type or "*" → letters in LETTERS order
Need = tuple[str, str]          # what a request needs: (resource type or "*", letters)


class OAuthError(Exception):
    """An RFC 6749 error response: `error` code and a human `description`."""

    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error = error
        self.description = description

    @property
    def status(self) -> int:
        return 401 if self.error == "invalid_client" else 400

    def to_json(self) -> dict:
        return {"error": self.error, "error_description": self.description}


# --- scopes ---------------------------------------------------------------------------

def parse_scopes(text: str, strict: bool = True) -> Scopes:
    """Space-separated scopes as {type: letters}; an unusable one is an `invalid_scope`
    error, or skipped when not `strict` (a client's stored allowance)."""
    found: dict[str, set[str]] = {}
    for scope in (text or "").split():
        try:
            rtype, letters = _parse_one(scope)
        except OAuthError:
            if strict:
                raise
            continue
        found.setdefault(rtype, set()).update(letters)
    return {rtype: _ordered(letters) for rtype, letters in found.items()}


def _parse_one(scope: str) -> tuple[str, str]:
    if "?" in scope:
        raise OAuthError("invalid_scope", f"Scope {scope[:100]!r}: scopes with query "
                                          "parameters are not supported.")
    match = _SCOPE.match(scope)
    if match is None:
        raise OAuthError("invalid_scope", f"Scope {scope[:100]!r} is not a SMART scope "
                                          "such as system/Practitioner.rs.")
    context, rtype, permissions = match.groups()
    if context != "system":
        raise OAuthError("invalid_scope", f"Scope {scope!r}: {context}/ scopes are not "
                                          "available to backend services; use system/.")
    letters = V1.get(permissions, permissions)
    if any(c not in LETTERS for c in letters) or len(set(letters)) != len(letters):
        raise OAuthError("invalid_scope", f"Scope {scope!r}: permissions are a subset of "
                                          "c, r, u, d, s (or read, write, *).")
    return rtype, letters


def _ordered(letters: Iterable[str]) -> str:
    chosen = set(letters)
    return "".join(c for c in LETTERS if c in chosen)


def format_scopes(scopes: Scopes) -> str:
    """The canonical text: `*` first, then types in registry order, redundant ones left out."""
    star = scopes.get(ALL, "")
    order = [ALL, *RESOURCE_TYPES, *sorted(set(scopes) - set(RESOURCE_TYPES) - {ALL})]
    parts = []
    for rtype in order:
        letters = _ordered(scopes.get(rtype, ""))
        if rtype != ALL:
            letters = _ordered(set(letters) - set(star))
            letters = _ordered(set(letters) | set(star)) if letters else ""
        if letters:
            parts.append(f"system/{rtype}.{letters}")
    return " ".join(parts)


def normalise(text: str) -> str:
    return format_scopes(parse_scopes(text))


def _held(scopes: Scopes, rtype: str) -> set[str]:
    return set(scopes.get(rtype, "")) | set(scopes.get(ALL, ""))


def grant(requested: str, allowed: str) -> str:
    """What may be granted of `requested` given the client's `allowed` scopes.

    A type's letters are those requested for it or for `*`, kept where the client
    is allowed them for that type or for `*`. Nothing left is `invalid_scope`.
    """
    asked = parse_scopes(requested)
    if not asked:
        raise OAuthError("invalid_request", "The scope parameter is required "
                                            "(e.g. scope=system/Practitioner.rs).")
    may = parse_scopes(allowed, strict=False)
    result: dict[str, set[str]] = {ALL: set(asked.get(ALL, "")) & set(may.get(ALL, ""))}
    for rtype in (set(asked) | set(may)) - {ALL}:
        result[rtype] = _held(asked, rtype) & _held(may, rtype)
    granted = format_scopes({t: _ordered(v) for t, v in result.items() if v})
    if not granted:
        raise OAuthError("invalid_scope", f"None of the requested scopes is allowed to this "
                                          f"client (allowed: {format_scopes(may) or 'none'}).")
    return granted


def permits(granted: str, resource_type: str, letter: str) -> bool:
    """Does `granted` allow `letter` on `resource_type`? `*` asks for every served type."""
    scopes = parse_scopes(granted, strict=False)
    if resource_type == ALL:
        return all(letter in _held(scopes, t) for t in RESOURCE_TYPES)
    return letter in _held(scopes, resource_type)


def missing(granted: str, needs: Iterable[Need]) -> list[str]:
    """The scopes `granted` lacks for `needs`, as scope texts (empty: all permitted).

    A need on `*` is a need on every served type; when every type lacks the same
    letters the answer is one `system/*.<letters>`.
    """
    scopes = parse_scopes(granted, strict=False)
    lacking: dict[str, set[str]] = {}
    for rtype, letters in needs:
        for each in (RESOURCE_TYPES if rtype == ALL else (rtype,)):
            absent = set(letters) - _held(scopes, each)
            if absent:
                lacking.setdefault(each, set()).update(absent)
    sets = {frozenset(v) for v in lacking.values()}
    if set(lacking) >= set(RESOURCE_TYPES) and len(sets) == 1:
        return [f"system/*.{_ordered(next(iter(sets)))}"]
    order = [t for t in RESOURCE_TYPES if t in lacking] + sorted(set(lacking) - set(RESOURCE_TYPES))
    return [f"system/{t}.{_ordered(lacking[t])}" for t in order]


# --- what FHIR requests need (pure; the table itself is in gateway.api.oauth) -----------

def search_needs(resource_type: str, pairs: Iterable[tuple[str, str]]) -> list[Need]:
    """`s` on the type, plus what its includes bring back: `_include=T:param[:Target]`
    needs `r` on the targets (every type when the parameter has no fixed target),
    `_revinclude=T:param` needs `s` on T (those resources are found by a search)."""
    needs: list[Need] = [(resource_type, "s")]
    for name, value in pairs:
        base = name.split(":")[0]
        if base not in ("_include", "_revinclude"):
            continue
        for item in value.split(","):
            source, _, rest = item.strip().partition(":")
            param, _, target = rest.partition(":")
            spec = RESOURCE_TYPES.get(source)
            if base == "_revinclude":
                if spec is not None:
                    needs.append((source, "s"))
                continue
            if item.strip() == ALL:
                needs.append((ALL, "r"))
                continue
            found = spec.param(param) if spec is not None else None
            if target in RESOURCE_TYPES:
                needs.append((target, "r"))
            elif found is not None and found.kind == "reference":
                needs.extend((t, "r") for t in found.targets or (ALL,))
    return needs


def bundle_needs(bundle: dict) -> list[Need]:
    """A transaction or batch: per entry `c` for POST (`cs` with ifNoneExist, which runs a
    search and may return the match), `u` for PUT (`us` when conditional), `d` for DELETE,
    on the type in request.url and on the resource's own type. Entries the write path
    will refuse anyway (unknown method or type) need nothing here."""
    needs: list[Need] = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            continue
        request = entry["request"]
        method = str(request.get("method", "")).upper()
        url, _, query = str(request.get("url", "")).partition("?")
        letters = {"POST": "cs" if request.get("ifNoneExist") else "c",
                   "PUT": "us" if query else "u", "DELETE": "d"}.get(method)
        if letters is None:
            continue
        resource = entry.get("resource")
        types = {url.strip("/").split("/")[0]}
        if isinstance(resource, dict) and method != "DELETE":
            types.add(str(resource.get("resourceType")))
        needs.extend((t, letters) for t in sorted(types) if t in RESOURCE_TYPES)
    return needs


# --- the client assertion ---------------------------------------------------------------

@dataclass(frozen=True)
class Assertion:
    """A verified client assertion: whose it is, and the jti to record until it expires."""

    client: clients.Client
    jti: str
    expires_at: datetime          # naive UTC: exp plus LEEWAY


def verify_assertion(engine: Engine, assertion: str, audience: str, *,
                     now: datetime | None = None, max_seconds: int = 300) -> Assertion:
    """Check a client assertion (see the module docstring); OAuthError `invalid_client`."""
    now = now or utcnow()
    header, claims = _unverified(assertion)
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise _client_error(f"The assertion's alg must be one of {', '.join(ALGORITHMS)}.")
    if not isinstance(kid, str) or not kid:
        raise _client_error("The assertion's header needs the kid of a registered key.")
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not isinstance(issuer, str) or issuer != subject:
        raise _client_error("The assertion's iss and sub must both be the client_id.")
    client = clients.get(engine, int(issuer)) if _CLIENT_ID.match(issuer) else None
    jwks = clients.jwks_of(engine, client.pk) if client is not None and client.active else None
    key = _key(jwks, kid, alg) if jwks else None
    if key is None:
        raise _client_error(UNVERIFIABLE)
    try:
        jwt.decode(assertion, key, algorithms=[alg])
    except (JoseError, ValueError):
        raise _client_error(UNVERIFIABLE) from None
    assert client is not None
    return Assertion(client, _checked_jti(claims),
                     _checked_times(claims, audience, now, max_seconds))


def _unverified(assertion: str) -> tuple[dict, dict]:
    try:
        token = extract_compact(assertion.encode("ascii"))
        claims = json.loads(token.payload or b"")
        header = token.headers()
    except (JoseError, ValueError, UnicodeError):
        raise _client_error("The client assertion is not a signed JWT (JWS compact "
                            "serialization).") from None
    if not isinstance(claims, dict) or not isinstance(header, dict):
        raise _client_error("The client assertion's claims are not a JSON object.")
    return header, claims


def _key(jwks: dict, kid: str, alg: str) -> Key | None:
    """The registered key with `kid` that can verify `alg` (RSA of 2048+ bits for RS*, the
    matching EC curve for ES*), honouring the key's own `alg` and `use` where stated."""
    try:
        keys = KeySet.import_key_set(jwks)        # type: ignore[arg-type]
    except (JoseError, ValueError, KeyError, TypeError):
        return None
    curve = {"ES256": "P-256", "ES384": "P-384"}.get(alg)
    for key in keys:
        if key.kid != kid or key.get("alg", alg) != alg or key.get("use", "sig") != "sig":
            continue
        if alg.startswith("RS") and isinstance(key, RSAKey) \
                and key.raw_value.key_size >= MIN_RSA_BITS:
            return key
        if curve and isinstance(key, ECKey) and key.get("crv") == curve:
            return key
    return None


def _checked_jti(claims: dict) -> str:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI:
        raise _client_error(f"The assertion needs a jti: a unique string of at most "
                            f"{MAX_JTI} characters.")
    return jti


def _checked_times(claims: dict, audience: str, now: datetime, max_seconds: int) -> datetime:
    """Check aud, exp, nbf and iat; the instant after which the jti may be forgotten."""
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise _client_error(f"The assertion's aud must be the token endpoint, {audience}.")
    moment = now.replace(tzinfo=UTC).timestamp()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _client_error("The assertion needs exp (seconds since the epoch).")
    if exp + LEEWAY < moment:
        raise _client_error("The assertion has expired.")
    if exp - moment > max_seconds + LEEWAY:
        raise _client_error(f"The assertion's exp is more than {max_seconds} seconds ahead.")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and value - LEEWAY > moment:
            raise _client_error(f"The assertion's {name} is in the future.")
    return datetime.fromtimestamp(exp + LEEWAY, UTC).replace(tzinfo=None)


def _client_error(description: str) -> OAuthError:
    return OAuthError("invalid_client", description)


# --- tokens ---------------------------------------------------------------------------

def issue(engine: Engine, client: clients.Client, scope: str, *, seconds: int = 300,
          now: datetime | None = None, assertion: Assertion | None = None) -> dict:
    """A new opaque access token (only its hash is stored) with `scope`, as the SMART
    token response. With `assertion`, its jti is recorded in the same transaction, so a
    replay — even one racing this request — gets no token."""
    now = now or utcnow()
    token = clients.new_token()
    try:
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            if assertion is not None:
                conn.execute(delete(oauth_assertions)
                             .where(oauth_assertions.c.expires_at < utcnow()))
                conn.execute(insert(oauth_assertions).values(
                    jti=f"{client.pk}:{assertion.jti}", client_pk=client.pk,
                    expires_at=assertion.expires_at))
            clients.store_access_token(conn, client.pk, token, scope, now,
                                       now + timedelta(seconds=seconds))
    except IntegrityError:
        raise _client_error("The client assertion was already used (its jti is "
                            "not new); sign a new one for every token request.") from None
    return {"access_token": token, "token_type": "bearer", "expires_in": seconds,
            "scope": scope}
