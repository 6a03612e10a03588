"""A stand-in for ЕГИСЗ (ФРМО, ФРМР, ЭЛМК) that speaks docs/upstream-protocol.md.

Integration testers point the gateway at it and watch the whole flow: signed
transaction Bundles are received (202 + ticket), processed a moment later in
order of receipt by a single thread, and answered per entry approved, rejected
(with the field named) or clarification required. It can misbehave on purpose,
deterministically for a seed: 500, 503, 429, timeouts, slow answers, and
connections dropped after the Bundle was stored. Its own database records every
applied (reference, version) with a count, which must stay 1.

    serve_mock(config, host, port) -> MockServer   background thread (.url, .port, .stop())
    run_mock(host, port, config)                   foreground, blocking
    create_mock_app(config) -> Flask               the app; state in app.extensions["mock"]

Layout: config.py (MockConfig), app.py (routes), upstream.py (what a request gets),
receipt.py (Bundle shape), keys.py (the gateway's JWKS), processing.py (the
back-office thread), rules.py (business rules), faults.py, store.py (tables),
server.py (running it).
"""
from __future__ import annotations

from gateway.mock_upstream.app import create_mock_app
from gateway.mock_upstream.config import MockConfig
from gateway.mock_upstream.server import MockServer, run_mock, serve_mock

__all__ = ["MockConfig", "MockServer", "create_mock_app", "run_mock", "serve_mock"]
