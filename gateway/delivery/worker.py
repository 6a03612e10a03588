"""The delivery worker: outbox → signed Bundles → upstream → statuses.

One round (`run_once`) polls tickets that are due, forms Bundles of ready
submissions, sends what is due, and hands status changes to webhooks. `run`
repeats rounds until told to stop, sleeping only when a round found nothing to do.

All state is in the database (see `outbox`), so any number of workers may run
against PostgreSQL, a killed worker loses nothing, and a restarted one carries on.
What a worker keeps in memory is only its circuit breaker: while an upstream
service keeps failing, the worker leaves it alone for a while instead of
spending every Bundle's attempts on it.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from gateway import signing
from gateway.delivery import outbox, routing, upstream
from gateway.delivery.webhooks import WebhookSender
from gateway.export.bulk import Runner as ExportRunner
from gateway.rounds import run_rounds
from gateway.settings import Settings
from gateway.store.repository import utcnow

log = logging.getLogger("gateway.delivery")


@dataclass
class Round:
    """What one round did (for logs, tests and `gateway worker --once`)."""

    formed: int = 0
    sent: int = 0
    polled: int = 0
    notified: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.formed or self.sent or self.polled or self.notified)


class Worker:
    def __init__(self, engine: Engine, settings: Settings, upstream_url: str | None = None,
                 name: str | None = None):
        self.engine = engine
        self.settings = settings
        self.signer = signing.ensure_signer(settings.keys_path, settings.signing_alg) \
            if not settings.signing_kid else signing.load_signer(
                settings.keys_path, kid=settings.signing_kid)
        self.upstream = upstream.Upstream(upstream_url or settings.upstream_url,
                                          settings.delivery_timeout)
        self.breaker = upstream.CircuitBreaker(settings.circuit_failures,
                                               settings.circuit_open_seconds)
        # Fits outbox_bundles.lease_owner (64 characters) whatever the host: a name may
        # have 63 (a Kubernetes pod's), and its end is what tells replicas apart.
        self.name = name or f"{socket.gethostname()[-38:]}:{os.getpid()}:{id(self):x}"
        self.lease = timedelta(seconds=settings.delivery_timeout * 2 + 10)
        self.rng = random.Random()
        self.webhooks = WebhookSender(engine, settings)
        self.waiting_after = 0              # where the next look at waiting records starts

    # --- rounds -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("delivery worker %s → %s (key %s, %s)", self.name, self.upstream.base_url,
                 self.signer.kid, self.signer.alg)
        # Webhooks go out from their own thread: a slow MIS endpoint never delays ЕГИСЗ.
        threading.Thread(target=self.webhooks.run, args=(stop,), name="webhooks",
                         daemon=True).start()
        # Bulk exports too: one can take minutes, and delivery must not wait for it.
        threading.Thread(target=ExportRunner(self.engine, self.settings, self.name).run,
                         args=(stop,), name="bulk-export", daemon=True).start()
        run_rounds(lambda: self.run_once().busy, stop, self.settings.delivery_idle, "delivery")

    def run_once(self) -> Round:
        done = Round()
        done.polled = self.poll_due()
        done.formed, self.waiting_after = outbox.form(
            self.engine, utcnow(), self.settings.delivery_batch_size, self.sign,
            self.waiting_after)
        done.sent = self.send_due()
        return done

    def drain(self, rounds: int = 1000) -> None:
        """Rounds (webhooks, bulk exports) until nothing is left to do now (`worker --once`)."""
        exports = ExportRunner(self.engine, self.settings, self.name)
        while exports.run_once():
            pass
        for _ in range(rounds):
            done = self.run_once()
            done.notified = self.webhooks.send_due()
            if not done.busy:
                return

    # --- signing ------------------------------------------------------------------

    def sign(self, bundle: dict, organization: str | None) -> dict:
        who = {"reference": f"Organization/{organization}"} if organization else \
            {"identifier": {"system": "urn:ietf:rfc:3986",
                            "value": f"urn:egisz-gateway:{self.settings.sender_id}"},
             "display": "ЕГИСЗ FHIR-шлюз"}
        return signing.sign_bundle(bundle, self.signer, who, datetime.now(UTC))

    # --- sending ------------------------------------------------------------------

    def send_due(self) -> int:
        sent = 0
        for destination in routing.DESTINATIONS:
            while self.breaker.allows(destination):
                bundle = outbox.claim_send(self.engine, destination, self.name, utcnow(),
                                           self.lease)
                if bundle is None:
                    break
                sent += 1
                if not self._send(bundle):
                    break
        return sent

    def _send(self, bundle) -> bool:
        """Post one leased Bundle and record the outcome; False when the upstream failed."""
        answer = self.upstream.send(bundle.destination, bundle.body.encode("utf-8"))
        now = utcnow()
        if answer.kind == upstream.ACCEPTED:
            self.breaker.succeeded(bundle.destination)
            outbox.sent(self.engine, bundle, self.name, str(answer.body["ticket"]), now,
                        self.settings.delivery_poll_interval)
            return True
        if answer.kind == upstream.REJECTED:
            self.breaker.succeeded(bundle.destination)
            outbox.rejected(self.engine, bundle, self.name, answer.body, answer.error, now)
            return True
        self.breaker.failed(bundle.destination)
        attempts = bundle.attempts + 1
        retry_in = None if attempts >= self.settings.delivery_max_attempts else \
            upstream.backoff(attempts, self.settings.delivery_backoff_base,
                             self.settings.delivery_backoff_max, answer.retry_after, self.rng)
        log.warning("bundle %s to %s: attempt %d failed (%s)%s", bundle.identifier,
                    bundle.destination, attempts, answer.error,
                    "; dead" if retry_in is None else f"; next in {retry_in:.1f}s")
        outbox.failed(self.engine, bundle, self.name, answer.error or "error", now, retry_in)
        return False

    # --- polling ------------------------------------------------------------------

    def poll_due(self) -> int:
        polled = 0
        while True:
            open_to = tuple(d for d in routing.DESTINATIONS
                            if not self.breaker.is_open(d))
            if not open_to:
                return polled
            bundle = outbox.claim_poll(self.engine, self.name, utcnow(), self.lease, open_to)
            if bundle is None:
                return polled
            polled += 1
            self._poll(bundle)

    def _poll(self, bundle) -> None:
        answer = self.upstream.poll(bundle.ticket)
        now = utcnow()
        if answer.kind == upstream.RETRY:
            self.breaker.failed(bundle.destination)
            retry_in = upstream.backoff(bundle.attempts + 1, self.settings.delivery_backoff_base,
                                        self.settings.delivery_backoff_max, answer.retry_after,
                                        self.rng)
            outbox.poll_failed(self.engine, bundle, answer.error or "error", now, retry_in)
            return
        self.breaker.succeeded(bundle.destination)
        if answer.kind == upstream.PROCESSING:
            outbox.processing(self.engine, bundle, now,
                              max(self.settings.delivery_poll_interval, answer.retry_after or 0))
        elif answer.kind == upstream.COMPLETED:
            outbox.completed(self.engine, bundle, answer.body, now)
        elif answer.kind == upstream.UNKNOWN_TICKET:
            outbox.resend(self.engine, bundle, now)


def start_in_thread(engine: Engine, settings: Settings,
                    upstream_url: str | None = None) -> tuple[threading.Thread, threading.Event]:
    """The embedded worker of `gateway serve`: one daemon thread, stopped by the event."""
    stop = threading.Event()
    worker = Worker(engine, settings, upstream_url)
    thread = threading.Thread(target=worker.run, args=(stop,), name="delivery-worker",
                              daemon=True)
    thread.start()
    return thread, stop

