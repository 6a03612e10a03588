"""Sending webhook notifications: HMAC-signed POSTs, retried with back-off.

The receiver checks `X-Gateway-Signature: sha256=<hex>`, the HMAC-SHA256 of
`<X-Gateway-Timestamp>.<body>` under the shared secret (the timestamp is signed
too, so an old notification cannot be replayed as new). Any 2xx is success;
anything else is retried with back-off, and given up after the configured
number of attempts. Never raises: a broken endpoint is the receiver's problem.
"""
from __future__ import annotations

import hashlib
import hmac
import random
import threading
import time
from datetime import timedelta

import requests
from sqlalchemy.engine import Engine

from gateway.delivery.upstream import backoff
from gateway.rounds import run_rounds
from gateway.settings import Settings
from gateway.store import webhooks
from gateway.store.repository import utcnow

TIMEOUT = 5.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body,
                      hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookSender:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings
        self.session = requests.Session()
        self.rng = random.Random()

    def run(self, stop: threading.Event) -> None:
        run_rounds(self.send_due, stop, self.settings.delivery_idle, "webhook")

    def send_due(self) -> int:
        rows = webhooks.claim_due(self.engine, utcnow(), timedelta(seconds=TIMEOUT * 2 + 5))
        for row in rows:
            self._deliver(row)
        return len(rows)

    def _deliver(self, row) -> None:
        body = row.payload.encode("utf-8")
        timestamp = str(int(time.time()))
        error = None
        try:
            response = self.session.post(row.url, data=body, timeout=TIMEOUT, headers={
                "Content-Type": "application/json",
                "X-Gateway-Timestamp": timestamp,
                "X-Gateway-Signature": signature(row.secret, timestamp, body)})
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            error = type(exc).__name__
        attempts = row.attempts + 1
        retry_at = None
        if error and attempts < self.settings.delivery_max_attempts:
            retry_at = utcnow() + timedelta(seconds=backoff(
                attempts, self.settings.delivery_backoff_base,
                self.settings.delivery_backoff_max, rng=self.rng))
        webhooks.finish(self.engine, row.pk, utcnow(), error, retry_at)
