"""Talking to the upstream over HTTP, and knowing when to stop talking.

`Upstream` turns every answer (or the lack of one) into an `Answer` of one of a
few kinds, so the worker decides what to do without looking at HTTP details:

- accepted: the upstream took the Bundle and gave a ticket to poll;
- rejected: the Bundle is unacceptable as it is; retrying cannot help;
- retry: a timeout, a dropped connection, 401 (keys may be rotating), 429, 5xx;
- processing / completed: what a poll of the ticket says;
- unknown_ticket: the upstream lost the ticket; resend under the same identifier.

`CircuitBreaker` stops the worker from hammering an upstream that keeps failing:
after N failures in a row it opens for a while, then lets one request probe.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests

ACCEPTED = "accepted"
REJECTED = "rejected"
RETRY = "retry"
PROCESSING = "processing"
COMPLETED = "completed"
UNKNOWN_TICKET = "unknown_ticket"


@dataclass(frozen=True)
class Answer:
    kind: str
    status: int | None = None
    body: dict | None = None
    retry_after: float | None = None
    error: str | None = None


class Upstream:
    """The upstream at `base_url`; each destination is `{base_url}/{destination}`."""

    def __init__(self, base_url: str, timeout: float):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def send(self, destination: str, body: bytes) -> Answer:
        try:
            response = self.session.post(
                f"{self.base_url}/{destination}", data=body, timeout=self.timeout,
                headers={"Content-Type": "application/fhir+json",
                         "Accept": "application/fhir+json"})
        except requests.RequestException as exc:
            return Answer(RETRY, error=_describe(exc))
        if response.status_code == 202:
            body_json = _json(response)
            if not body_json or not body_json.get("ticket"):
                return Answer(RETRY, 202, error="202 without a ticket")
            return Answer(ACCEPTED, 202, body_json)
        return _failure(response)

    def poll(self, ticket: str) -> Answer:
        try:
            response = self.session.get(f"{self.base_url}/_tickets/{ticket}",
                                        timeout=self.timeout,
                                        headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            return Answer(RETRY, error=_describe(exc))
        if response.status_code == 404:
            return Answer(UNKNOWN_TICKET, 404, error="ticket unknown to the upstream")
        if response.status_code == 200:
            body = _json(response)
            if body and body.get("status") == "completed":
                return Answer(COMPLETED, 200, body)
            if body and body.get("status") == "processing":
                return Answer(PROCESSING, 200, body, _retry_after(response))
            return Answer(RETRY, 200, error="unreadable ticket answer")
        answer = _failure(response)
        # A poll is never final: a 4xx on a poll is the upstream's problem, not the data's.
        return answer if answer.kind == RETRY else Answer(RETRY, answer.status,
                                                          answer.body, error=answer.error)


def _failure(response: requests.Response) -> Answer:
    status = response.status_code
    error = f"HTTP {status}"
    if status in (400, 422):
        return Answer(REJECTED, status, _json(response), error=error)
    return Answer(RETRY, status, _json(response), _retry_after(response), error)


def _json(response: requests.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _retry_after(response: requests.Response) -> float | None:
    """Retry-After in seconds: either a number or an HTTP date."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed or dropped"
    return type(exc).__name__


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None,
            rng: random.Random | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential with jitter, at least Retry-After.

    Half the delay is fixed and half random ("equal jitter"), so workers that failed
    together do not come back together, and none comes back at once.
    """
    rng = rng or random
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


@dataclass
class CircuitBreaker:
    """Per destination: closed → (N failures in a row) → open → (after a pause) half-open."""

    failures: int
    open_seconds: float
    clock: object = time.monotonic
    _failed: dict[str, int] = field(default_factory=dict)
    _opened_at: dict[str, float] = field(default_factory=dict)

    def allows(self, key: str) -> bool:
        """May a request go to `key` now? While half-open, one probe at a time."""
        opened = self._opened_at.get(key)
        if opened is None:
            return True
        if self.clock() - opened >= self.open_seconds:
            self._opened_at[key] = self.clock()      # the probe; re-opens unless it succeeds
            return True
        return False

    def is_open(self, key: str) -> bool:
        opened = self._opened_at.get(key)
        return opened is not None and self.clock() - opened < self.open_seconds

    def succeeded(self, key: str) -> None:
        self._failed.pop(key, None)
        self._opened_at.pop(key, None)

    def failed(self, key: str) -> None:
        self._failed[key] = self._failed.get(key, 0) + 1
        if self._failed[key] >= self.failures:
            self._opened_at[key] = self.clock()
