"""The gateway's public keys, as the mock knows them, and the signature check.

The keys come from a URL (the gateway's `/.well-known/jwks.json`), a file, or a
dict. A URL or file is read on first use and cached; when a Bundle's signature
names a `kid` the cache does not hold, the source is read once more before the
Bundle is refused, so the gateway can rotate its key while the mock runs; it is
also reread after `cache_seconds`, so a key the gateway retired stops verifying.

The cryptography is `gateway.signing.verify_bundle`; the mock only reads the
`kid` out of the JWS header to know whether the cache is stale.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from pathlib import Path

import requests

log = logging.getLogger("gateway.mock_upstream")


class KeysUnavailable(Exception):
    """The key source could not be read (the gateway is down, the file is missing)."""


class KeySource:
    """A cached JWKS with one refetch per unknown `kid`."""

    def __init__(self, source: str | Path | dict, fetch_timeout: float = 5.0,
                 cache_seconds: float = 300.0) -> None:
        self._source = source
        self._timeout = fetch_timeout
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._jwks: dict | None = dict(source) if isinstance(source, dict) else None
        self._loaded_at = time.monotonic()

    def keys_for(self, bundle: dict) -> dict:
        """The JWKS to verify this Bundle with, refreshed if its `kid` is new to us.

        Raises KeysUnavailable when there is no key set at all to verify with.
        """
        with self._lock:
            if isinstance(self._source, dict) and self._jwks is not None:
                return self._jwks
            stale = time.monotonic() - self._loaded_at > self._cache_seconds
            if self._jwks is None or stale:
                self._reload(keep_cached=self._jwks is not None)
            kid = signature_kid(bundle)
            if kid is not None and kid not in _kids(self._jwks or {}):
                log.info("Unknown key id %s: reading the key set again", kid)
                self._reload(keep_cached=True)
            assert self._jwks is not None
            return self._jwks

    def _reload(self, keep_cached: bool) -> None:
        try:
            self._jwks = self._load()
            self._loaded_at = time.monotonic()
        except KeysUnavailable:
            if not keep_cached:
                raise
            log.warning("Could not reread the key set; keeping the cached one")

    def _load(self) -> dict:
        source = str(self._source)
        try:
            if source.startswith(("http://", "https://")):
                response = requests.get(source, timeout=self._timeout)
                response.raise_for_status()
                jwks = response.json()
            else:
                jwks = json.loads(Path(source).read_text(encoding="utf-8"))
        except (requests.RequestException, OSError, ValueError) as exc:
            raise KeysUnavailable(f"{type(exc).__name__} reading {source}") from exc
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise KeysUnavailable(f"{source} is not a JWKS (no 'keys' list)")
        return jwks


def _kids(jwks: dict) -> set[str]:
    return {k.get("kid") for k in jwks.get("keys", []) if isinstance(k, dict)}


def signature_kid(bundle: dict) -> str | None:
    """The `kid` in the header of the Bundle's detached JWS, if it can be read at all."""
    signature = bundle.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("data"), str):
        return None
    try:
        compact = base64.b64decode(signature["data"], validate=False).decode("ascii")
        encoded_header = compact.split(".")[0]
        padded = encoded_header + "=" * (-len(encoded_header) % 4)
        header = json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None
