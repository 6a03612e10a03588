"""The mock upstream's settings: one dataclass, filled by the CLI or by a test.

Every knob that makes the mock misbehave is here, with a default that makes it
behave: no faults, no latency, every bundle answered. A test turns on exactly the
misbehaviour it is about.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///var/mock-upstream.sqlite"
DEFAULT_JWKS_URL = "http://127.0.0.1:8080/.well-known/jwks.json"


@dataclass
class MockConfig:
    """How the mock ЕГИСЗ behaves.

    `jwks` is where the gateway's public keys are: an http(s) URL (fetched with
    `requests`), a file path, or the JWKS itself as a dict. URL and file are read
    lazily and again whenever a Bundle names a `kid` the mock does not know, so a
    key rotation on the gateway's side needs no restart here.

    Shares (`fault_rate`, `drop_after_receive`, `clarification_rate`) are 0..1 and
    are drawn from hashes of `seed` and the request, never from a shared random
    generator, so a given seed gives the same answers whatever the thread timing.
    `timeout_share` is the part of injected faults that are timeouts (they hold a
    server thread for `timeout_seconds`); the rest are 500, 503, 429 and "slow" in
    equal parts.
    """

    database_url: str = DEFAULT_DATABASE_URL
    jwks: str | Path | dict = DEFAULT_JWKS_URL
    fault_rate: float = 0.0
    latency_ms: int = 0
    drop_after_receive: float = 0.0
    timeout_share: float = 0.2
    timeout_seconds: float = 30.0
    clarification_rate: float = 0.0
    processing_delay_seconds: float = 0.5
    seed: int = 0
    jwks_fetch_timeout: float = 5.0
    jwks_cache_seconds: float = 300.0
    start_processor: bool = True

    def __post_init__(self) -> None:
        for name in ("fault_rate", "drop_after_receive", "timeout_share",
                     "clarification_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MockConfig.{name} must be within 0..1, got {value!r}")
        for name in ("latency_ms", "timeout_seconds", "processing_delay_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"MockConfig.{name} must not be negative")
