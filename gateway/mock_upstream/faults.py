"""Deterministic misbehaviour: which request gets a fault, and dropping a connection.

Every decision is a number in [0, 1) drawn from a SHA-256 of the seed and of
what identifies the request: its kind ("post", "poll"), the Bundle identifier or
ticket, and how many times the mock has seen that identifier or ticket before.
There is no shared random generator, so the answers a given request gets do not
depend on which thread ran first: the third POST of Bundle X under seed 7 meets
the same fault in every run.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator

log = logging.getLogger("gateway.mock_upstream")

ERROR_500 = "500"
UNAVAILABLE_503 = "503"
TOO_MANY_429 = "429"
TIMEOUT = "timeout"
SLOW = "slow"
KINDS = (ERROR_500, UNAVAILABLE_503, TOO_MANY_429, TIMEOUT, SLOW)
_NOT_TIMEOUT = (ERROR_500, UNAVAILABLE_503, TOO_MANY_429, SLOW)


def draw(seed: int, *parts: object) -> float:
    """A number in [0, 1) fixed by the seed and the parts."""
    text = "|".join([str(seed), *(str(p) for p in parts)])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def choose_fault(seed: int, kind: str, key: str, nth: int, fault_rate: float,
                 timeout_share: float) -> str | None:
    """The fault for the nth sighting of `key` in requests of `kind`, or None."""
    if fault_rate <= 0 or draw(seed, "fault", kind, key, nth) >= fault_rate:
        return None
    which = draw(seed, "fault-kind", kind, key, nth)
    if which < timeout_share:
        return TIMEOUT
    rest = (which - timeout_share) / (1.0 - timeout_share)
    return _NOT_TIMEOUT[min(int(rest * len(_NOT_TIMEOUT)), len(_NOT_TIMEOUT) - 1)]


class Sightings:
    """How many times each (kind, key) has been seen so far, thread-safe.

    Kept in memory: the fault sequence starts afresh with each mock process, which
    is what a test run wants.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: Counter[tuple[str, str]] = Counter()

    def next(self, kind: str, key: str) -> int:
        """0 for the first sighting, 1 for the second, …"""
        with self._lock:
            nth = self._seen[(kind, key)]
            self._seen[(kind, key)] += 1
        return nth


def connection_socket(environ: dict) -> socket.socket | None:
    """The client's socket, where the server exposes it (werkzeug's and gunicorn's do)."""
    for key in ("werkzeug.socket", "gunicorn.socket"):
        sock = environ.get(key)
        if isinstance(sock, socket.socket):
            return sock
    return None


def drop_connection(environ: dict) -> bool:
    """Close the client's connection without an answer; False if the server hides it.

    `shutdown` sends the FIN at once, whatever the server still holds a reference
    to; the client sees the connection end before any status line arrives.
    """
    sock = connection_socket(environ)
    if sock is None:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    return True


def dropped_body() -> Iterator[bytes]:
    """A response body that tells the server the connection is gone, before any byte.

    werkzeug's server treats a ConnectionError raised while iterating the body as a
    client that went away: it writes nothing and logs nothing.
    """
    raise ConnectionAbortedError("connection dropped on purpose by the mock upstream")
    yield b""  # pragma: no cover - makes this a generator
