"""The mock ЕГИСЗ's front desk: what it answers to a POST and to a poll.

`MockUpstream` holds everything one mock app needs (its store, its key source,
its processor thread, the fault dice) and turns a request into a `Reply`; the
Flask views in app.py only translate Replies to HTTP. The order of a POST:

    latency → fault? → JSON Bundle? → signature (401) → seen identifier? (202 again)
            → acceptable Bundle? (400) → store + ticket (202) → maybe drop the line

Faults come before anything is stored, so a faulted POST leaves no trace but the
fault counter; a dropped connection comes after, so the Bundle IS stored and will
be processed although the client saw no answer. Only a first receipt is dropped:
the resend of the same identifier is how a client finds out, so it is answered.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError

from gateway import signing
from gateway.issues import Issue, operation_outcome
from gateway.mock_upstream import faults, receipt
from gateway.mock_upstream.config import MockConfig
from gateway.mock_upstream.keys import KeySource, KeysUnavailable
from gateway.mock_upstream.processing import Processor
from gateway.mock_upstream.store import PROCESSING, MockStore, make_engine

log = logging.getLogger("gateway.mock_upstream")

POST, POLL = "post", "poll"


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict = field(default_factory=dict)
    drop: bool = False          # close the connection instead of answering


def outcome_reply(status: int, issue: Issue, headers: dict | None = None) -> Reply:
    return Reply(status, operation_outcome([issue]), headers or {})


class MockUpstream:
    """One mock ЕГИСЗ: state and behaviour, no HTTP."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.store = MockStore(make_engine(config.database_url), faults.KINDS)
        self.keys = KeySource(config.jwks, config.jwks_fetch_timeout, config.jwks_cache_seconds)
        self.processor = Processor(self.store, config)
        self.sightings = faults.Sightings()
        self._closing = threading.Event()

    def start(self) -> None:
        """Start the processing thread (create_mock_app does, unless told not to)."""
        self._closing.clear()
        self.processor.start()

    def stop(self) -> None:
        """Stop processing and wake every request sleeping in a timeout fault."""
        self._closing.set()
        self.processor.stop()

    def close(self) -> None:
        self.stop()
        self.store.engine.dispose()

    # --- latency and faults -----------------------------------------------------------

    def add_latency(self) -> None:
        if self.config.latency_ms:
            self._sleep(self.config.latency_ms / 1000)

    def fault(self, kind: str, key: str) -> Reply | None:
        """The injected failure for this request, if any (a "slow" one just sleeps)."""
        nth = self.sightings.next(kind, key)
        chosen = faults.choose_fault(self.config.seed, kind, key, nth, self.config.fault_rate,
                                     self.config.timeout_share)
        if chosen is None:
            return None
        self.store.bump(f"fault_{chosen}")
        log.info("Injecting fault %s into %s #%d of %s", chosen, kind, nth, key)
        if chosen == faults.SLOW:
            self._sleep(2 * self.config.latency_ms / 1000)
            return None
        if chosen == faults.TIMEOUT:
            self._sleep(self.config.timeout_seconds)
            return outcome_reply(504, Issue("timeout", "ЕГИСЗ не ответила вовремя (имитация).",
                                            "Injected fault: gateway timeout."))
        if chosen == faults.ERROR_500:
            return outcome_reply(500, Issue("exception", "Внутренняя ошибка ЕГИСЗ (имитация).",
                                            "Injected fault: internal server error."))
        status = 503 if chosen == faults.UNAVAILABLE_503 else 429
        text_ru = ("Сервис ЕГИСЗ временно недоступен (имитация)." if status == 503 else
                   "Слишком много запросов к ЕГИСЗ (имитация).")
        return outcome_reply(status, Issue("transient" if status == 503 else "throttled",
                                           text_ru + " Повторите через секунду.",
                                           f"Injected fault: {status}."),
                             {"Retry-After": "1"})

    def _sleep(self, seconds: float) -> None:
        # Wakes early when the mock stops, so a stopping test never waits out a timeout.
        self._closing.wait(seconds)

    # --- POST {base}/{destination} ----------------------------------------------------

    def receive(self, destination: str, raw: bytes) -> Reply:
        try:
            bundle = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            bundle = None
        identifier = receipt.identifier_of(bundle)
        injected = self.fault(POST, identifier or "-")
        self.store.bump("bundles_received")
        if injected is not None:
            return injected
        problem = receipt.not_a_bundle(bundle)
        if problem is not None:
            self.store.bump("bundles_invalid")
            return outcome_reply(400, problem)
        assert isinstance(bundle, dict)
        refused = self._signature_refusal(bundle)
        if refused is not None:
            return refused
        if identifier is not None:
            original = self.store.bundle_by_identifier(identifier)
            if original is not None:
                return self._repeat(original, bundle)
        issues = receipt.bundle_problems(bundle)
        if issues:
            self.store.bump("bundles_invalid")
            return Reply(400, operation_outcome(issues))
        assert identifier is not None
        return self._accept(destination, identifier, bundle)

    def _signature_refusal(self, bundle: dict) -> Reply | None:
        try:
            signing.verify_bundle(bundle, self.keys.keys_for(bundle))
        except KeysUnavailable as exc:
            log.warning("Gateway keys unavailable: %s", exc)
            return outcome_reply(503, Issue(
                "transient", "ЕГИСЗ не может получить открытые ключи шлюза для проверки "
                "подписи. Повторите позже.", f"Mock upstream cannot read the JWKS: {exc}."),
                {"Retry-After": "5"})
        except signing.SignatureInvalid as bad:
            self.store.bump("signature_failures")
            log.info("Signature refused: %s", bad.reason_en)
            return outcome_reply(401, Issue("security", bad.reason_ru, bad.reason_en,
                                            "Bundle.signature"))
        return None

    def _repeat(self, original: dict, bundle: dict) -> Reply:
        self.store.bump("duplicates_ignored")
        if receipt.entries_digest(bundle) != original["entries_digest"]:
            # A retry must carry the same entries; the client has a bug worth seeing.
            self.store.bump("duplicates_conflicting")
            log.warning("Bundle %s resent with different entries; the original stands",
                        original["identifier"])
        return self._accepted_reply(original["ticket"])

    def _accept(self, destination: str, identifier: str, bundle: dict) -> Reply:
        ticket = uuid.uuid5(uuid.NAMESPACE_URL, f"mock-upstream:{self.config.seed}:"
                                                f"{identifier}").hex
        try:
            self.store.add_bundle({
                "ticket": ticket, "identifier": identifier, "destination": destination,
                "received_at": time.time(), "content": bundle,
                "entries_digest": receipt.entries_digest(bundle)})
        except IntegrityError:  # the same identifier arrived on another thread meanwhile
            original = self.store.bundle_by_identifier(identifier)
            if original is None:
                raise
            return self._repeat(original, bundle)
        log.info("Bundle %s → %s: ticket %s, %d entries", identifier, destination, ticket,
                 len(bundle["entry"]))
        self.processor.notify()
        reply = self._accepted_reply(ticket)
        if faults.draw(self.config.seed, "drop", identifier) < self.config.drop_after_receive:
            reply.drop = True
        return reply

    @staticmethod
    def _accepted_reply(ticket: str) -> Reply:
        # The Content-Location header is added by the view, which knows the base URL.
        return Reply(202, {"ticket": ticket, "status": PROCESSING})

    # --- GET {base}/_tickets/{ticket} ---------------------------------------------------

    def poll(self, ticket: str) -> Reply:
        injected = self.fault(POLL, ticket)
        if injected is not None:
            return injected
        bundle = self.store.bundle_by_ticket(ticket)
        if bundle is None:
            return outcome_reply(404, Issue("not-found", "Квитанция не найдена. Отправьте "
                                            "пакет повторно с тем же идентификатором.",
                                            "Unknown ticket."))
        answer = {"ticket": ticket, "identifier": bundle["identifier"],
                  "status": bundle["status"]}
        if bundle["status"] == PROCESSING:
            remaining = bundle["received_at"] + self.config.processing_delay_seconds \
                - time.time()
            return Reply(200, answer, {"Retry-After": str(max(1, math.ceil(remaining)))})
        answer["entries"] = bundle["result"]
        return Reply(200, answer)
