"""API clients: who they are, what they may touch, and their credentials.

A client has a role:
- `mis`: a clinic's information system, bound to one or more ФРМО organization
  OIDs; it reads and writes only those organizations' data;
- `region`: a regional system bound to a region code (two digits, as in
  address.state); it reads the data of organizations in that region, never writes;
- `admin`: manages clients and sees everything.
`access` may narrow a client further to `read` or `write`; `scopes` are the
SMART scopes (`system/Practitioner.rs`) it may ask for when it takes OAuth tokens.

Credentials. A static bearer token is 32 random bytes, shown once; only its
SHA-256 is stored, so a leaked database does not leak working tokens (a slow
password hash is unnecessary: the token has 256 bits of entropy, not a person's
memory behind it). `rotate` replaces it, `revoke` disables the client and every
token it holds. OAuth access tokens (gateway.oauth) are kept the same way in
`access_tokens`, with their scopes and expiry.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from gateway.store.clock import instant, optional_instant, utcnow
from gateway.store.schema import access_tokens, clients

ROLES = ("mis", "region", "admin")
ACCESS = ("read", "write", "read-write")
TOKEN_PREFIX = "gw_"
OID_PATTERN = re.compile(r"^[0-2](\.(0|[1-9][0-9]*)){2,40}$")
REGION_PATTERN = re.compile(r"^[0-9]{2}$")
ALL_SCOPES = "system/*.cruds"


@dataclass(frozen=True)
class Client:
    pk: int
    name: str
    role: str
    organizations: tuple[str, ...] = ()
    region: str | None = None
    access: str = "read-write"
    scopes: str = ALL_SCOPES
    active: bool = True
    # Set when the request came with an OAuth access token: the scopes granted to it.
    granted: str | None = field(default=None, compare=False)

    @property
    def can_read(self) -> bool:
        return self.access in ("read", "read-write")

    @property
    def can_write(self) -> bool:
        return self.role != "region" and self.access in ("write", "read-write")

    @property
    def organization(self) -> str | None:
        """The first organization (where one is enough: a label, a default)."""
        return self.organizations[0] if self.organizations else None


class ClientError(ValueError):
    """A client definition that cannot be accepted (a wrong role, OID or region)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_definition(role: str, organizations: list[str] | tuple[str, ...],
                     region: str | None, access: str) -> None:
    """Refuse definitions that would make a client see more (or less) than meant."""
    if role not in ROLES:
        raise ClientError(f"role must be one of {', '.join(ROLES)}")
    if access not in ACCESS:
        raise ClientError(f"access must be one of {', '.join(ACCESS)}")
    if role == "mis" and not organizations:
        raise ClientError("an mis client needs at least one ФРМО organization OID")
    if role != "mis" and organizations:
        raise ClientError("only an mis client is bound to organizations")
    for oid in organizations:
        if not OID_PATTERN.match(oid):
            raise ClientError(f"{oid!r} is not an OID (digits and dots, e.g. 1.2.643.5.1.13...)")
    if role == "region" and not (region and REGION_PATTERN.match(region)):
        raise ClientError("a region client needs a two-digit region code (e.g. 77)")
    if role != "region" and region:
        raise ClientError("only a region client is bound to a region")


def create_client(engine: Engine, name: str, role: str, organizations=(),
                  region: str | None = None, access: str = "read-write",
                  scopes: str | None = None, jwks: dict | None = None) -> tuple[Client, str]:
    """Register a client; returns it with its token (the only time the token exists)."""
    if isinstance(organizations, str):
        organizations = [organizations]
    organizations = tuple(dict.fromkeys(o.strip() for o in organizations or () if o.strip()))
    check_definition(role, organizations, region, access)
    token = new_token()
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        pk = conn.execute(insert(clients).values(
            name=name, role=role, organization=organizations[0] if organizations else None,
            organizations=json.dumps(list(organizations)), region=region, access=access,
            scopes=scopes or ALL_SCOPES, jwks=json.dumps(jwks) if jwks else None,
            token_hash=hash_token(token), created_at=utcnow(), active=True,
        ).returning(clients.c.pk)).scalar_one()
    return Client(pk, name, role, organizations, region, access, scopes or ALL_SCOPES), token


def client_for_token(engine: Engine, token: str, now: datetime | None = None) -> Client | None:
    """The active client holding `token`: a static token or an unexpired OAuth token.

    The lookup is by the token's SHA-256, so timing reveals nothing about stored
    tokens; the final comparison is constant-time all the same.
    """
    digest = hash_token(token)
    with engine.connect() as conn:
        row = conn.execute(select(clients).where(
            clients.c.token_hash == digest, clients.c.active.is_(True))).first()
        if row is not None and hmac.compare_digest(row.token_hash, digest):
            return client_from_row(row)
        issued = conn.execute(
            select(clients, access_tokens.c.scopes.label("granted"),
                   access_tokens.c.token_hash.label("access_hash"))
            .join(access_tokens, access_tokens.c.client_pk == clients.c.pk)
            .where(access_tokens.c.token_hash == digest, clients.c.active.is_(True),
                   access_tokens.c.expires_at > (now or utcnow()))).first()
    if issued is None or not hmac.compare_digest(issued.access_hash, digest):
        return None
    return client_from_row(issued, granted=issued.granted)


def client_from_row(row, granted: str | None = None) -> Client:
    organizations = tuple(json.loads(row.organizations)) if row.organizations else (
        (row.organization,) if row.organization else ())
    return Client(row.pk, row.name, row.role, organizations, row.region,
                  row.access or "read-write", row.scopes or ALL_SCOPES, row.active, granted)


def get(engine: Engine, pk: int) -> Client | None:
    with engine.connect() as conn:
        row = conn.execute(select(clients).where(clients.c.pk == pk)).first()
    return client_from_row(row) if row is not None else None


def jwks_of(engine: Engine, pk: int) -> dict | None:
    with engine.connect() as conn:
        raw = conn.execute(select(clients.c.jwks).where(clients.c.pk == pk)).scalar()
    return json.loads(raw) if raw else None


def set_jwks(engine: Engine, pk: int, jwks: dict | None) -> bool:
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        return conn.execute(update(clients).where(clients.c.pk == pk).values(
            jwks=json.dumps(jwks) if jwks else None)).rowcount == 1


def list_clients(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(clients).order_by(clients.c.pk)).all()
    return [describe(row) for row in rows]


def describe(row) -> dict:
    """A client as the admin API and `gateway clients list` show it (never a token)."""
    client = client_from_row(row)
    return {"id": client.pk, "name": client.name, "role": client.role,
            "organizations": list(client.organizations), "region": client.region,
            "access": client.access, "scopes": client.scopes, "active": client.active,
            "oauth": bool(row.jwks), "created": instant(row.created_at),
            "revoked": optional_instant(row.revoked_at),
            "rotated": optional_instant(row.rotated_at)}


def describe_pk(engine: Engine, pk: int) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(clients).where(clients.c.pk == pk)).first()
    return describe(row) if row is not None else None


def revoke(engine: Engine, pk: int) -> bool:
    """Disable a client for good: its static token and every OAuth token stop working."""
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        changed = conn.execute(update(clients).where(
            clients.c.pk == pk, clients.c.active.is_(True)).values(
            active=False, revoked_at=utcnow())).rowcount
        conn.execute(delete(access_tokens).where(access_tokens.c.client_pk == pk))
    return changed == 1


def rotate(engine: Engine, pk: int) -> str | None:
    """A new static token for an active client; the old one stops working at once."""
    token = new_token()
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        changed = conn.execute(update(clients).where(
            clients.c.pk == pk, clients.c.active.is_(True)).values(
            token_hash=hash_token(token), rotated_at=utcnow())).rowcount
    return token if changed == 1 else None


def store_access_token(conn: Connection, client_pk: int, token: str, scopes: str,
                       issued: datetime, expires: datetime) -> None:
    conn.execute(insert(access_tokens).values(
        token_hash=hash_token(token), client_pk=client_pk, scopes=scopes,
        issued_at=issued, expires_at=expires))
    conn.execute(delete(access_tokens).where(access_tokens.c.expires_at < issued))


def any_client(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(clients.c.pk).limit(1)).first() is not None
