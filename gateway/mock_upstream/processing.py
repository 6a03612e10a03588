"""The mock's back office: one thread that works through the tickets in order.

A real register answers "принято" at once and decides later. The mock does the
same: a received Bundle waits `processing_delay_seconds`, then a single thread
applies its entries, in Bundle order, in one transaction. One thread taking
tickets strictly in order of receipt keeps the business rules deterministic: a
role sent after its organization is checked after it, whatever the request
threads did meanwhile. Several processors on one database (two mock processes)
stay safe too: a ticket is taken inside a write transaction and completed only
if it is still "processing".

Every processed entry is written to `applied`; a (reference, version) that comes
round a second time raises its count and is logged as an error, which is what an
"applied exactly once" test looks for.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from gateway.issues import Issue, operation_outcome
from gateway.mock_upstream import rules
from gateway.mock_upstream.config import MockConfig
from gateway.mock_upstream.store import COMPLETED, PROCESSING, MockStore, applied, bundles, registry

log = logging.getLogger("gateway.mock_upstream")

# Moscow has kept UTC+3 all year since 2014; a fixed offset needs no tz database.
MOSCOW = timezone(timedelta(hours=3), "MSK")
_IDLE_WAIT = 1.0


class _TakenElsewhere(Exception):
    """Rolls back a ticket that another processor completed meanwhile."""


class Processor:
    """The background thread, plus `process_due()` for callers that want no thread."""

    def __init__(self, store: MockStore, config: MockConfig) -> None:
        self.store = store
        self.config = config
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- the thread -----------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="mock-upstream-processor",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after the ticket in hand (a ticket is never half applied)."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify(self) -> None:
        """A Bundle arrived: look at the queue again."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = self.process_due()
            except Exception:  # keep the back office alive; the ticket stays queued
                log.exception("Processing failed; retrying shortly")
                wait = _IDLE_WAIT
            self._wake.wait(_IDLE_WAIT if wait is None else min(wait, _IDLE_WAIT))

    # --- the work -------------------------------------------------------------------

    def process_due(self) -> float | None:
        """Process every ticket whose delay is over; seconds until the next one, or None."""
        while not self._stopping.is_set():
            head = self.store.oldest_processing()
            if head is None:
                return None
            remaining = head["received_at"] + self.config.processing_delay_seconds - time.time()
            if remaining > 0:
                return remaining
            self._process_head()
        return None

    def _process_head(self) -> None:
        try:
            with self.store.write() as conn:
                bundle = self.store.oldest_processing(conn)
                if bundle is None or bundle["received_at"] + \
                        self.config.processing_delay_seconds > time.time():
                    return
                results = self._apply(conn, bundle)
                done = conn.execute(
                    update(bundles)
                    .where(bundles.c.seq == bundle["seq"], bundles.c.status == PROCESSING)
                    .values(status=COMPLETED, completed_at=time.time(), result=results))
                if done.rowcount != 1:
                    raise _TakenElsewhere
        except _TakenElsewhere:  # another processor completed it first: ours is rolled back
            return
        log.info("Ticket %s completed: %s", bundle["ticket"],
                 _summary([r["status"] for r in results]))

    def _apply(self, conn: Connection, bundle: dict) -> list[dict]:
        lookup = _DatabaseLookup(conn)
        today = datetime.now(MOSCOW).date()
        results = []
        for raw in bundle["content"]["entry"]:
            entry = entry_of(raw)
            decision = self._decide(entry, bundle["destination"], lookup, today)
            if decision.status == rules.APPROVED:
                if entry.method == "DELETE":
                    _unregister(conn, entry)
                else:
                    _register(conn, bundle["destination"], entry)
            _record(conn, bundle, entry, decision.status)
            answer: dict = {"reference": entry.reference, "version": entry.version,
                            "status": decision.status}
            if decision.issues:
                answer["outcome"] = operation_outcome(decision.issues)
            if decision.clarification_due is not None:
                answer["clarification_due"] = decision.clarification_due.isoformat()
            results.append(answer)
        return results


    def _decide(self, entry: rules.Entry, destination: str, lookup: _DatabaseLookup,
                today: date) -> rules.Decision:
        try:
            return rules.decide(entry, destination, lookup, seed=self.config.seed,
                                clarification_rate=self.config.clarification_rate, today=today)
        except Exception:
            # A rule tripping over an odd resource is the mock's bug: say so in the log
            # and in the answer, and keep the queue moving for the tickets behind it.
            log.exception("Rules failed on %s", entry.reference)
            return rules.Decision(rules.REJECTED, [Issue(
                "exception", "Внутренняя ошибка имитатора ЕГИСЗ при проверке записи.",
                "The mock upstream's rules failed on this entry; see its log.")])


def entry_of(raw: dict) -> rules.Entry:
    """An entry of a Bundle that passed `receipt.bundle_problems`."""
    request = raw["request"]
    method = request["method"]
    resource = raw.get("resource") if method == "PUT" else None
    return rules.Entry(method=method, reference=request["url"],
                       version=entry_version(raw), resource=resource)


def entry_version(raw: dict) -> str | None:
    """`meta.versionId` of the resource; for a DELETE, `request.ifMatch` (W/"n") if given."""
    resource = raw.get("resource")
    meta = resource.get("meta") if isinstance(resource, dict) else None
    version = meta.get("versionId") if isinstance(meta, dict) else None
    if isinstance(version, str) and version:
        return version
    if_match = (raw.get("request") or {}).get("ifMatch")
    if isinstance(if_match, str) and if_match:
        return if_match.removeprefix("W/").strip('"') or None
    return None


class _DatabaseLookup:
    """The rules' view of the registers, inside the ticket's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def is_registered(self, destination: str, reference: str) -> bool:
        return self.conn.scalar(select(registry.c.reference).where(
            registry.c.destination == destination,
            registry.c.reference == reference)) is not None

    def organization_by_oid(self, oid: str) -> str | None:
        rows = self.conn.execute(select(registry.c.reference, registry.c.content).where(
            registry.c.destination == rules.FRMO)).all()
        for reference, content in rows:
            if any(i.get("system") == rules.FRMO_SYSTEM and i.get("value") == oid
                   for i in (content or {}).get("identifier") or [] if isinstance(i, dict)):
                return reference
        return None

    def roles_holding(self, practitioner: str, organization: str, position: str) -> list[str]:
        return list(self.conn.scalars(select(registry.c.reference).where(
            registry.c.destination == rules.FRMR,
            registry.c.practitioner == practitioner,
            registry.c.organization == organization,
            registry.c.position == position)))

    def asked_to_clarify(self, reference: str, other_than_version: str | None) -> bool:
        query = select(applied.c.id).where(applied.c.reference == reference,
                                           applied.c.status == rules.CLARIFICATION)
        if other_than_version is not None:
            query = query.where(applied.c.version != other_than_version)
        return self.conn.scalar(query.limit(1)) is not None


def _register(conn: Connection, destination: str, entry: rules.Entry) -> None:
    keys = rules.role_keys(entry, _DatabaseLookup(conn)) \
        if entry.resource_type == "PractitionerRole" else {}
    conn.execute(delete(registry).where(registry.c.destination == destination,
                                        registry.c.reference == entry.reference))
    conn.execute(insert(registry).values(
        destination=destination, reference=entry.reference, version=entry.version,
        content=entry.resource, registered_at=time.time(), **keys))


def _unregister(conn: Connection, entry: rules.Entry) -> None:
    # Wherever it is: a deleted employer Organization is routed like any Organization.
    conn.execute(delete(registry).where(registry.c.reference == entry.reference))


def _record(conn: Connection, bundle: dict, entry: rules.Entry, status: str) -> None:
    """One row per (reference, version); a repeat raises its count and is reported."""
    # A DELETE that names no version is keyed by its Bundle: a Bundle applied twice
    # still shows up, two deletions in two Bundles do not collide.
    version = entry.version or f"delete@{bundle['identifier']}"
    existing = conn.execute(select(applied.c.id, applied.c.count).where(
        applied.c.reference == entry.reference, applied.c.version == version)).first()
    if existing is None:
        conn.execute(insert(applied).values(
            reference=entry.reference, version=version, destination=bundle["destination"],
            method=entry.method, ticket=bundle["ticket"], status=status, count=1,
            applied_at=time.time()))
        return
    log.error("%s version %s applied again (ticket %s): count %d", entry.reference, version,
              bundle["ticket"], existing.count + 1)
    conn.execute(update(applied).where(applied.c.id == existing.id)
                 .values(count=applied.c.count + 1, status=status, ticket=bundle["ticket"]))


def _summary(statuses: list[str]) -> str:
    return ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses)))
