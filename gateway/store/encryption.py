"""Encryption at rest of the stored resource bodies (`resource_versions.content`).

With keys configured (`encryption_keys`), every body is sealed with AES-256-GCM under
the active key before it is written, and the same INSERT names that key in
`resource_versions.key_id`. Stored text: base64 of nonce (12 random bytes) +
ciphertext + tag. The associated data binds the key id and the row (type/id/version),
so a body copied into another row, or relabelled with another key id, fails the tag
check instead of being served as another resource.

Rows with `key_id` NULL are plain: written with encryption off, or before it was
switched on; they stay readable. Rotation: add the new key in front (or name it in
`encryption_active_key`) and keep the old one; rows under the old key stay readable,
new ones are sealed under the new key; `gateway keys reencrypt` (`reencrypt()`) moves
every row to the active key in batches, after which the old key can be removed.

How the keyring reaches the code, without module globals: `make_engine` calls
`attach()`, which puts it into the `info` of every pooled DBAPI connection (set again
whenever the pool reconnects), and whoever holds a `Connection` asks `keyring_of(conn)`.
An engine made without keys (the mock upstream, a test's own engine) writes plain rows
and refuses sealed ones with an error naming the missing key id.

Not covered: the search index tables (`search_*`, extracted from the plain resource
at write time, so search works as before: they hold names and identifiers in the
clear), the signed Bundles waiting in the outbox (`outbox_bundles.body`), and export
files written to disk.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import bindparam, event, or_, select, update
from sqlalchemy.engine import Connection, Engine

from gateway.errors import GatewayError
from gateway.store.schema import resource_versions

INFO_KEY = "gateway.keyring"          # conn.info: the engine's Keyring
KEY_BYTES = 32                        # AES-256
NONCE_BYTES = 12
KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")   # fits resource_versions.key_id
AAD_PREFIX = b"egisz-gateway/resource-body/v1\x00"


class KeyringError(ValueError):
    """The encryption settings are unusable (raised at start-up, before any request)."""


class StoredBodyUnreadable(GatewayError):
    """A stored body could not be decrypted. Names the row and key id, never the content."""


class UnknownKey(StoredBodyUnreadable):
    """The row was sealed with a key that is not configured."""


class BrokenSeal(StoredBodyUnreadable):
    """The GCM tag did not verify: the body was altered, moved, or the key is wrong."""


class Keyring:
    """Named 32-byte AES keys and the active one; with no keys, the identity."""

    def __init__(self, keys: Mapping[str, bytes] | None = None, active: str | None = None):
        keys = dict(keys or {})
        for kid, key in keys.items():
            if not KEY_ID.match(kid):
                raise KeyringError(f"encryption_keys: key id {kid!r} must be 1-64 characters "
                                   "[A-Za-z0-9._-].")
            if len(key) != KEY_BYTES:
                raise KeyringError(f"encryption_keys: key {kid!r} is {len(key)} bytes after "
                                   f"base64 decoding; AES-256-GCM needs exactly {KEY_BYTES} "
                                   "(make one with `gateway keys new-encryption-key`).")
        if active and active not in keys:
            raise KeyringError(f"encryption_active_key names {active!r}, which is not in "
                               f"encryption_keys ({', '.join(keys) or 'none configured'}).")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active: str | None = (active or next(iter(keys))) if keys else None

    @classmethod
    def parse(cls, spec: str, active: str = "") -> Keyring:
        """`kid1:base64key,kid2:base64key` (the first is active unless `active` names one)."""
        keys: dict[str, bytes] = {}
        for number, entry in enumerate(filter(None, (e.strip() for e in spec.split(","))), 1):
            kid, sep, encoded = (part.strip() for part in entry.partition(":"))
            if not sep or not kid or not encoded:
                raise KeyringError(f"encryption_keys: entry {number} is not `kid:base64key`.")
            if kid in keys:
                raise KeyringError(f"encryption_keys: key id {kid!r} is listed twice.")
            try:
                keys[kid] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(f"encryption_keys: key {kid!r} is not valid base64.") \
                    from None
        return cls(keys, active.strip() or None)

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    def seal(self, text: str, context: str = "") -> tuple[str, str | None]:
        """(stored text, key id) of a body; (text, None) when encryption is off."""
        if self.active is None:
            return text, None
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.active].encrypt(
            nonce, text.encode("utf-8"), _aad(self.active, context))
        return base64.b64encode(nonce + sealed).decode("ascii"), self.active

    def open(self, stored: str, key_id: str | None, context: str = "") -> str:
        """The plain text of a stored body (`key_id` None: stored plain)."""
        if key_id is None:
            return stored
        where = f" ({context})" if context else ""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownKey(
                f"Хранимая версия ресурса{where} зашифрована ключом «{key_id}», которого нет "
                "в настройках (encryption_keys).",
                f"The stored body{where} is encrypted with key {key_id!r}, which is not "
                "configured in encryption_keys.")
        try:
            raw = base64.b64decode(stored, validate=True)
            if len(raw) <= NONCE_BYTES:
                raise ValueError("too short")
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                  _aad(key_id, context)).decode("utf-8")
        except (InvalidTag, binascii.Error, ValueError):
            raise BrokenSeal(
                f"Хранимая версия ресурса{where} не прошла проверку подлинности с ключом "
                f"«{key_id}»: она изменена, перенесена из другой строки или ключ неверен.",
                f"The stored body{where} fails authentication under key {key_id!r}: it was "
                "altered, moved from another row, or the key is wrong.") from None

    # --- rows of resource_versions ------------------------------------------------------

    def sealed(self, text: str, resource_type: str, rid: str, version: int) -> dict:
        """`content` and `key_id` of a row, to go into the row's INSERT."""
        content, key_id = self.seal(text, row_context(resource_type, rid, version))
        return {"content": content, "key_id": key_id}

    def open_row(self, row) -> str | None:
        """The plain JSON text of a row with content, key_id, resource_type, id, version."""
        if row.content is None:
            return None
        return self.open(row.content, row.key_id,
                         row_context(row.resource_type, row.id, row.version))

    def load_row(self, row) -> dict | None:
        text = self.open_row(row)
        return json.loads(text) if text else None


PLAIN = Keyring()


def row_context(resource_type: str, rid: str, version: int) -> str:
    return f"{resource_type}/{rid}/_history/{version}"


def _aad(key_id: str, context: str) -> bytes:
    return AAD_PREFIX + key_id.encode("ascii") + b"\x00" + context.encode("utf-8")


def keyring_from(settings) -> Keyring:
    """The keyring the settings describe (KeyringError, naming the problem, if unusable)."""
    return Keyring.parse(settings.encryption_keys, settings.encryption_active_key)


def new_key_line(kid: str | None = None) -> str:
    """A fresh `kid:base64key` entry for encryption_keys."""
    kid = kid or datetime.now(UTC).strftime("k%Y%m%d%H%M%S")
    if not KEY_ID.match(kid):
        raise KeyringError(f"Key id {kid!r} must be 1-64 characters [A-Za-z0-9._-].")
    return f"{kid}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode('ascii')}"


# --- reaching the keyring through a connection --------------------------------------------

def attach(engine: Engine, keyring: Keyring) -> None:
    """Every connection of `engine` carries `keyring` (see the module docstring)."""
    @event.listens_for(engine, "connect")
    def _with_keyring(_dbapi_connection, record):
        record.info[INFO_KEY] = keyring


def keyring_of(conn: Connection) -> Keyring:
    return conn.info.get(INFO_KEY, PLAIN)


# --- rotation -------------------------------------------------------------------------------

def reencrypt(engine: Engine, batch_size: int = 500, progress=None) -> int:
    """Seal every body not under the active key (plain ones too) with it; rows moved.

    Batches in `seq` order, one short write transaction each, so writers are held up
    for one batch at most. Stored rows never change otherwise, so nothing is lost to a
    concurrent writer; an interrupted run is simply run again.
    """
    rv = resource_versions
    moved, after = 0, 0
    while True:
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            keyring = keyring_of(conn)
            if keyring.active is None:
                raise KeyringError("No encryption key is configured (encryption_keys): "
                                   "nothing to re-encrypt with.")
            rows = conn.execute(
                select(rv.c.seq, rv.c.resource_type, rv.c.id, rv.c.version, rv.c.content,
                       rv.c.key_id)
                .where(rv.c.seq > after, rv.c.content.is_not(None),
                       or_(rv.c.key_id.is_(None), rv.c.key_id != keyring.active))
                .order_by(rv.c.seq).limit(batch_size)).all()
            if rows:
                conn.execute(
                    update(rv).where(rv.c.seq == bindparam("row_seq"))
                    .values(content=bindparam("new_content"), key_id=bindparam("new_key_id")),
                    [{"row_seq": row.seq,
                      **{f"new_{k}": v for k, v in keyring.sealed(
                          keyring.open_row(row), row.resource_type, row.id,
                          row.version).items()}}
                     for row in rows])
        moved += len(rows)
        if progress is not None:
            progress(moved)
        if len(rows) < batch_size:
            return moved
        after = rows[-1].seq
