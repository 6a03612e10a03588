"""API clients and their bearer tokens.

A token is 32 random bytes, shown once when the client is created; only its
SHA-256 is stored, so a leaked database does not leak working tokens. (A slow
password hash is unnecessary: the token has 256 bits of entropy, not a person's
memory behind it.)
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from gateway.store.repository import utcnow
from gateway.store.schema import clients

ROLES = ("mis", "region", "admin")
TOKEN_PREFIX = "gw_"


@dataclass(frozen=True)
class Client:
    pk: int
    name: str
    role: str
    organization: str | None
    region: str | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_client(engine: Engine, name: str, role: str, organization: str | None = None,
                  region: str | None = None) -> tuple[Client, str]:
    """Register a client; returns it with its token (the only time the token exists)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        pk = conn.execute(insert(clients).values(
            name=name, role=role, organization=organization, region=region,
            token_hash=hash_token(token), created_at=utcnow(), active=True,
        ).returning(clients.c.pk)).scalar_one()
    return Client(pk, name, role, organization, region), token


def client_for_token(engine: Engine, token: str) -> Client | None:
    with engine.connect() as conn:
        row = conn.execute(select(clients).where(
            clients.c.token_hash == hash_token(token), clients.c.active.is_(True))).first()
    if row is None:
        return None
    return Client(row.pk, row.name, row.role, row.organization, row.region)


def any_client(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(clients.c.pk).limit(1)).first() is not None
