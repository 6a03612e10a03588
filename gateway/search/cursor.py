"""Opaque, signed paging cursors (pure, apart from `load_secret`).

A cursor carries everything the next page needs: the resource type, the query as
understood (`SearchRequest.query`), the direction, and the keyset position, that
is the sort-key values and the row key (`resources.pk`) of the row the page
continues from. It is compressed JSON, base64url, followed by an HMAC-SHA256 tag
under the gateway's secret: a cursor changed by one bit is refused (400), and a
cursor reveals nothing a client could edit to reach other data.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.errors import InvalidRequest

VERSION = 1
TAG_BYTES = 16


@dataclass(frozen=True)
class Position:
    """Where a page starts: after (`next`) or before (`previous`) a row."""

    direction: str                  # next | previous
    keys: tuple                     # the row's sort-key values, in sort order
    pk: int
    inclusive: bool = False         # the row itself belongs to the page


@dataclass(frozen=True)
class Cursor:
    resource_type: str
    query: tuple[tuple[str, str], ...]
    position: Position


def encode(cursor: Cursor, secret: bytes) -> str:
    position = cursor.position
    return seal({"v": VERSION, "t": cursor.resource_type,
                 "q": [list(p) for p in cursor.query], "d": position.direction,
                 "k": [_key_out(k) for k in position.keys], "p": position.pk,
                 "i": position.inclusive}, secret)


def decode(token: str, secret: bytes, resource_type: str) -> Cursor:
    """The cursor, or InvalidRequest if it was altered, truncated or is for another type."""
    payload = unseal(token, secret)
    try:
        cursor = Cursor(payload["t"], tuple((str(n), str(v)) for n, v in payload["q"]),
                        Position(payload["d"], tuple(_key_in(k) for k in payload["k"]),
                                 int(payload["p"]), bool(payload["i"])))
    except (ValueError, KeyError, TypeError):
        raise refused() from None
    if payload.get("v") != VERSION or cursor.position.direction not in ("next", "previous"):
        raise refused()
    if cursor.resource_type != resource_type:
        raise InvalidRequest("Курсор страницы относится к поиску другого типа ресурсов.",
                             f"The cursor belongs to a search of {cursor.resource_type}, "
                             f"not {resource_type}.", expression="_cursor")
    return cursor


def seal(payload: dict, secret: bytes) -> str:
    """A JSON payload as an opaque token: compressed, base64url, HMAC-tagged."""
    body = zlib.compress(json.dumps(payload, ensure_ascii=False,
                                    separators=(",", ":")).encode("utf-8"))
    return _b64(body) + "." + _b64(_tag(secret, body))


def unseal(token: str, secret: bytes) -> dict:
    """The payload of a token `seal` made, or InvalidRequest if anything was altered."""
    if len(token) > 16000:
        raise InvalidRequest("Курсор страницы слишком длинный.", "Cursor too long.",
                             expression="_cursor")
    body_text, _, tag_text = token.partition(".")
    try:
        body, tag = _unb64(body_text), _unb64(tag_text)
    except (binascii.Error, ValueError):
        raise refused() from None
    if not hmac.compare_digest(tag, _tag(secret, body)):
        raise refused()
    try:
        payload = json.loads(zlib.decompress(body))
    except (zlib.error, ValueError):
        raise refused() from None
    if not isinstance(payload, dict):
        raise refused()
    return payload


def load_secret(path: Path) -> bytes:
    """The key of the HMAC, made once per data directory and shared by every process.

    The first process to start writes it atomically (link of a finished temporary
    file); the others read that one.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        temporary.write_text(secrets.token_hex(32), encoding="ascii")
        os.chmod(temporary, 0o600)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def _tag(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, b"gateway-search-cursor:" + body, hashlib.sha256).digest()[:TAG_BYTES]


def _key_out(value):
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    return value


def _key_in(value):
    if isinstance(value, dict):
        return datetime.fromisoformat(value["dt"])
    if value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value
    raise ValueError("unexpected key value")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("empty")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def refused() -> InvalidRequest:
    return InvalidRequest("Курсор страницы повреждён или изменён: начните поиск заново.",
                          "The paging cursor is damaged or was altered; start the search again.",
                          expression="_cursor")
