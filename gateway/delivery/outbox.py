"""The outbox's database side: forming Bundles, claiming them, recording what happened.

Each step is one short write transaction, so a worker killed at any moment
leaves a state another worker (or the same one restarted) simply continues:

- `form`: queued submissions that are ready become a Bundle row with its stable
  identifier and signed body; the body never changes afterwards, so every retry
  is the same Bundle, byte for byte.
- `claim_send` / `claim_poll`: a Bundle due now is leased to one worker. On
  PostgreSQL the due rows are selected `FOR UPDATE SKIP LOCKED`, so several
  workers share the work without waiting on each other; a lease that expires
  (the worker died mid-request) makes the Bundle due again, and resending it
  under the same identifier is harmless.
- `sent`, `rejected`, `failed`, `processing`, `completed`: the outcome of a
  request, written only while the worker still holds the lease.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, tuple_, update
from sqlalchemy.engine import Connection, Engine

from gateway.delivery import bundles, routing
from gateway.store import submissions as subs
from gateway.store.clock import optional_instant
from gateway.store.encryption import keyring_of
from gateway.store.schema import outbox_bundles, resource_versions, submissions

PENDING = "pending"          # due at next_attempt_at
SENDING = "sending"          # leased to a worker that is posting it
SENT = "sent"                # the upstream gave a ticket; polled at next_attempt_at
DONE = "done"                # every record has its final answer
DEAD = "dead"                # attempts exhausted
STATES = (PENDING, SENDING, SENT, DONE, DEAD)
SCAN = 2000                  # queued submissions looked at per round

def _write(engine: Engine):
    return engine.connect().execution_options(write=True)


def _skip_locked(engine: Engine, query, of=None):
    if engine.dialect.name == "sqlite":
        return query                       # SQLite: BEGIN IMMEDIATE serialises writers
    return query.with_for_update(skip_locked=True, of=of)


# --- forming Bundles ----------------------------------------------------------------

def form(engine: Engine, now: datetime, batch_size: int,
         sign: Callable[[dict, str | None], dict], waiting_after: int = 0) -> tuple[int, int]:
    """Turn ready queued submissions into signed Bundles.

    Returns how many Bundles were formed and where the next look at waiting
    submissions starts. New submissions are looked at first, every round; those
    already waiting for a dependency are looked at a window at a time, round-robin,
    so ten thousand records waiting for one clinic never hide a new one.
    """
    with _write(engine) as conn, conn.begin():
        queued = select(submissions).where(submissions.c.status == subs.QUEUED,
                                           submissions.c.bundle_pk.is_(None))
        rows = conn.execute(_skip_locked(engine, queued.where(
            submissions.c.detail.is_(None)).order_by(submissions.c.pk).limit(SCAN))).all()
        waiting = conn.execute(_skip_locked(engine, queued.where(
            submissions.c.detail.is_not(None), submissions.c.pk > waiting_after
        ).order_by(submissions.c.pk).limit(SCAN))).all()
        next_after = waiting[-1].pk if len(waiting) == SCAN else 0
        rows = sorted(rows + waiting, key=lambda r: r.pk)
        if not rows:
            return 0, next_after
        known: dict[str, str | None] = {}         # one lookup per clinic OID per round
        candidates = bundles.adopt_owners([_resolved(conn, bundles.candidate(r), known)
                                           for r in rows])
        for row, candidate in zip(rows, candidates, strict=True):
            if candidate.organization != row.organization:
                conn.execute(update(submissions).where(submissions.c.pk == row.pk).values(
                    organization=candidate.organization))
        plan = bundles.plan(candidates, _first_pending(conn, candidates),
                            _dependency_status(conn, candidates), batch_size)
        current = {r.pk: r.detail for r in rows}
        for pk, reason in plan.waiting.items():
            if subs.encode(reason) != current[pk]:      # write only what changed
                subs.set_waiting(conn, pk, reason, now)
        for members in plan.bundles:
            identifier = f"urn:uuid:{uuid.uuid4()}"
            contents = _contents(conn, members)
            body = sign(bundles.transaction_bundle(
                identifier, [(m, contents.get(m.pk)) for m in members]),
                members[0].organization)
            pk = conn.execute(outbox_bundles.insert().values(
                identifier=identifier, destination=members[0].destination,
                organization=members[0].organization, state=PENDING, attempts=0,
                next_attempt_at=now, body=json.dumps(body, ensure_ascii=False),
                created_at=now, updated_at=now).returning(outbox_bundles.c.pk)).scalar_one()
            conn.execute(update(submissions).where(
                submissions.c.pk.in_([m.pk for m in members])).values(bundle_pk=pk))
        return len(plan.bundles), next_after


def _resolved(conn: Connection, candidate: bundles.Candidate,
              known: dict[str, str | None]) -> bundles.Candidate:
    """Logical dependencies (a clinic named by its ФРМО OID) as `Type/id` once known."""
    depends_on = []
    for dependency in candidate.depends_on:
        logical = routing.logical(dependency)
        if logical and dependency not in known:
            known[dependency] = subs.resolve(conn, dependency)
        found = known.get(dependency) if logical else None
        depends_on.append(f"{logical[0]}/{found}" if found else dependency)
    return dataclasses.replace(candidate, depends_on=tuple(depends_on))


def _first_pending(conn: Connection, candidates: list) -> dict[str, int]:
    """Per resource, its oldest submission the upstream has not acknowledged yet."""
    keys = {tuple(c.reference.split("/", 1)) for c in candidates}
    rows = conn.execute(select(submissions.c.resource_type, submissions.c.resource_id,
                               func.min(submissions.c.pk)).where(
        tuple_(submissions.c.resource_type, submissions.c.resource_id).in_(list(keys)),
        submissions.c.status.in_((subs.QUEUED, subs.SENT)),
    ).group_by(submissions.c.resource_type, submissions.c.resource_id)).all()
    return {f"{t}/{i}": pk for t, i, pk in rows}


def _dependency_status(conn: Connection, candidates: list) -> dict[str, str | None]:
    """"approved" if any submission of the dependency was approved, else its latest status."""
    keys = {tuple(d.split("/", 1)) for c in candidates for d in c.depends_on
            if routing.logical(d) is None}
    if not keys:
        return {}
    rows = conn.execute(select(submissions.c.resource_type, submissions.c.resource_id,
                               submissions.c.status).where(
        tuple_(submissions.c.resource_type, submissions.c.resource_id).in_(list(keys)))
        .order_by(submissions.c.pk)).all()
    status: dict[str, str | None] = {}
    for rtype, rid, state in rows:
        reference = f"{rtype}/{rid}"
        if status.get(reference) != subs.APPROVED:
            status[reference] = state
    return status


def _contents(conn: Connection, members: list) -> dict[int, dict]:
    wanted = {(m.reference.split("/", 1)[0], m.reference.split("/", 1)[1], m.version): m.pk
              for m in members if m.method != "DELETE"}
    if not wanted:
        return {}
    rows = conn.execute(select(resource_versions.c.resource_type, resource_versions.c.id,
                               resource_versions.c.version, resource_versions.c.content,
                               resource_versions.c.key_id).where(
        tuple_(resource_versions.c.resource_type, resource_versions.c.id,
               resource_versions.c.version).in_(list(wanted)))).all()
    keyring = keyring_of(conn)                  # bodies may be encrypted at rest
    return {wanted[(r.resource_type, r.id, r.version)]: keyring.load_row(r)
            for r in rows if r.content}


# --- claiming -----------------------------------------------------------------------

def claim_send(engine: Engine, destination: str, owner: str, now: datetime,
               lease: timedelta):
    """Lease one Bundle due for sending (new, backing off, or orphaned by a dead worker)."""
    with _write(engine) as conn, conn.begin():
        row = conn.execute(_skip_locked(engine, select(outbox_bundles).where(
            outbox_bundles.c.destination == destination,
            or_(and_(outbox_bundles.c.state == PENDING,
                     outbox_bundles.c.next_attempt_at <= now),
                and_(outbox_bundles.c.state == SENDING, outbox_bundles.c.lease_until < now)),
        ).order_by(outbox_bundles.c.pk).limit(1))).first()
        if row is None:
            return None
        conn.execute(update(outbox_bundles).where(outbox_bundles.c.pk == row.pk).values(
            state=SENDING, lease_owner=owner, lease_until=now + lease,
            attempts=row.attempts + 1, updated_at=now))
        subs.transition(conn, subs.pks_of_bundle(conn, row.pk), subs.SENT, now,
                        only_from=(subs.QUEUED,))
        return row


def claim_poll(engine: Engine, owner: str, now: datetime, lease: timedelta,
               destinations: tuple[str, ...]):
    """Lease one acknowledged Bundle whose ticket is due for a poll."""
    with _write(engine) as conn, conn.begin():
        row = conn.execute(_skip_locked(engine, select(outbox_bundles).where(
            outbox_bundles.c.state == SENT, outbox_bundles.c.next_attempt_at <= now,
            outbox_bundles.c.destination.in_(destinations),
        ).order_by(outbox_bundles.c.next_attempt_at).limit(1))).first()
        if row is None:
            return None
        conn.execute(update(outbox_bundles).where(outbox_bundles.c.pk == row.pk).values(
            lease_owner=owner, next_attempt_at=now + lease, updated_at=now))
        return row


def _mine(conn: Connection, bundle, owner: str, state: str) -> bool:
    """Still ours? A worker whose lease ran out must not overwrite its successor's work."""
    return conn.execute(select(outbox_bundles.c.pk).where(
        outbox_bundles.c.pk == bundle.pk, outbox_bundles.c.lease_owner == owner,
        outbox_bundles.c.state == state)).first() is not None


# --- outcomes of sending ------------------------------------------------------------

def sent(engine: Engine, bundle, owner: str, ticket: str, now: datetime,
         poll_after: float) -> None:
    with _write(engine) as conn, conn.begin():
        if not _mine(conn, bundle, owner, SENDING):
            return
        conn.execute(update(outbox_bundles).where(outbox_bundles.c.pk == bundle.pk).values(
            state=SENT, ticket=ticket, attempts=0, lease_until=None, last_error=None,
            next_attempt_at=now + timedelta(seconds=poll_after), updated_at=now))
        subs.transition(conn, subs.pks_of_bundle(conn, bundle.pk), subs.ACCEPTED, now,
                        {"ticket": ticket}, only_from=(subs.QUEUED, subs.SENT))


def rejected(engine: Engine, bundle, owner: str, outcome: dict | None, error: str,
             now: datetime) -> None:
    """The upstream refused the Bundle as a whole: final for each of its records."""
    with _write(engine) as conn, conn.begin():
        if not _mine(conn, bundle, owner, SENDING):
            return
        conn.execute(update(outbox_bundles).where(outbox_bundles.c.pk == bundle.pk).values(
            state=DONE, lease_until=None, last_error=error, updated_at=now))
        detail = {"reason_ru": "ЕГИСЗ отклонила пакет целиком.",
                  "reason_en": f"The upstream refused the Bundle ({error}).",
                  **({"outcome": outcome} if outcome else {})}
        subs.transition(conn, subs.pks_of_bundle(conn, bundle.pk), subs.REJECTED, now,
                        detail, only_from=(subs.QUEUED, subs.SENT))


def failed(engine: Engine, bundle, owner: str, error: str, now: datetime,
           retry_in: float | None) -> None:
    """A send that may succeed later: back off, or give up (dead) when `retry_in` is None."""
    with _write(engine) as conn, conn.begin():
        if not _mine(conn, bundle, owner, SENDING):
            return
        if retry_in is None:
            conn.execute(update(outbox_bundles).where(outbox_bundles.c.pk == bundle.pk).values(
                state=DEAD, lease_until=None, last_error=error, updated_at=now))
            subs.transition(conn, subs.pks_of_bundle(conn, bundle.pk), subs.DEAD, now,
                            {"reason_ru": f"Не удалось доставить после {bundle.attempts + 1} "
                                          f"попыток: {error}.",
                             "reason_en": f"Undeliverable after {bundle.attempts + 1} "
                                          f"attempts: {error}."},
                            only_from=(subs.QUEUED, subs.SENT))
            return
        conn.execute(update(outbox_bundles).where(outbox_bundles.c.pk == bundle.pk).values(
            state=PENDING, lease_until=None, last_error=error,
            next_attempt_at=now + timedelta(seconds=retry_in), updated_at=now))


# --- outcomes of polling ------------------------------------------------------------

def processing(engine: Engine, bundle, now: datetime, poll_in: float) -> None:
    with _write(engine) as conn, conn.begin():
        conn.execute(update(outbox_bundles).where(
            outbox_bundles.c.pk == bundle.pk, outbox_bundles.c.state == SENT).values(
            attempts=0, last_error=None, updated_at=now,
            next_attempt_at=now + timedelta(seconds=poll_in)))
        subs.transition(conn, subs.pks_of_bundle(conn, bundle.pk), subs.PROCESSING, now,
                        only_from=(subs.ACCEPTED,))


def poll_failed(engine: Engine, bundle, error: str, now: datetime, retry_in: float) -> None:
    """A poll that failed: ask again later. The Bundle is upstream; it never goes dead."""
    with _write(engine) as conn, conn.begin():
        conn.execute(update(outbox_bundles).where(
            outbox_bundles.c.pk == bundle.pk, outbox_bundles.c.state == SENT).values(
            attempts=bundle.attempts + 1, last_error=error, updated_at=now,
            next_attempt_at=now + timedelta(seconds=retry_in)))


def resend(engine: Engine, bundle, now: datetime) -> None:
    """The upstream lost the ticket: send the same Bundle again (same identifier)."""
    with _write(engine) as conn, conn.begin():
        conn.execute(update(outbox_bundles).where(
            outbox_bundles.c.pk == bundle.pk, outbox_bundles.c.state == SENT).values(
            state=PENDING, ticket=None, next_attempt_at=now, updated_at=now,
            last_error="ticket unknown to the upstream; resending"))


UPSTREAM_STATUSES = {"approved": subs.APPROVED, "rejected": subs.REJECTED,
                     "clarification_required": subs.CLARIFICATION}


def completed(engine: Engine, bundle, answer: dict, now: datetime) -> None:
    """Every record's final answer, from the ticket."""
    with _write(engine) as conn, conn.begin():
        claimed = conn.execute(update(outbox_bundles).where(
            outbox_bundles.c.pk == bundle.pk, outbox_bundles.c.state == SENT).values(
            state=DONE, last_error=None, updated_at=now))
        if claimed.rowcount != 1:
            return                                 # another worker finished it first
        by_reference = subs.by_reference(conn, bundle.pk)
        answered: set[int] = set()
        by_resource = {reference: pk for (reference, _), pk in by_reference.items()}
        for entry in answer.get("entries") or []:
            version = str(entry.get("version") or "")
            # A deletion carries no version: one Bundle holds a resource once, so the
            # reference alone names it.
            pk = by_reference.get((str(entry.get("reference")), int(version))) \
                if version.isdigit() else by_resource.get(str(entry.get("reference")))
            status = UPSTREAM_STATUSES.get(entry.get("status"))
            if pk is None or status is None:
                continue
            answered.add(pk)
            detail = {k: entry[k] for k in ("outcome", "clarification_due") if entry.get(k)}
            subs.transition(conn, [pk], status, now, detail or None,
                            only_from=(subs.QUEUED, subs.SENT, subs.ACCEPTED,
                                       subs.PROCESSING))
        silent = [pk for pk in by_reference.values() if pk not in answered]
        subs.transition(conn, silent, subs.REJECTED, now, {
            "reason_ru": "ЕГИСЗ не вернула ответа по этой записи; отправьте её заново.",
            "reason_en": "The upstream's answer did not mention this record; resend it."},
            only_from=(subs.QUEUED, subs.SENT, subs.ACCEPTED, subs.PROCESSING))


# --- operators ----------------------------------------------------------------------

def list_bundles(engine: Engine, state: str | None = None, limit: int = 100) -> list[dict]:
    query = select(outbox_bundles, func.count(submissions.c.pk).label("records")).join(
        submissions, submissions.c.bundle_pk == outbox_bundles.c.pk, isouter=True
    ).group_by(outbox_bundles.c.pk).order_by(outbox_bundles.c.pk.desc()).limit(limit)
    if state:
        query = query.where(outbox_bundles.c.state == state)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"identifier": r.identifier, "destination": r.destination,
             "organization": r.organization, "state": r.state, "attempts": r.attempts,
             "records": r.records, "ticket": r.ticket, "last_error": r.last_error,
             "next_attempt_at": optional_instant(r.next_attempt_at),
             "created": optional_instant(r.created_at), "updated": optional_instant(r.updated_at)}
            for r in rows]


def summary(engine: Engine) -> dict:
    with engine.connect() as conn:
        states = dict(conn.execute(select(outbox_bundles.c.state, func.count())
                                   .group_by(outbox_bundles.c.state)).all())
        statuses = subs.counts(conn)
    return {"bundles": states, "submissions": statuses}


def retry(engine: Engine, identifier: str, now: datetime) -> dict | None:
    """Make a Bundle (by its identifier, or by one of its submissions' ids) due now.

    A dead Bundle comes back with a fresh count of attempts. Records the upstream
    already answered are not resent: fix and push them again instead.
    """
    with _write(engine) as conn, conn.begin():
        row = conn.execute(select(outbox_bundles).where(or_(
            outbox_bundles.c.identifier == identifier,
            outbox_bundles.c.pk == select(submissions.c.bundle_pk).where(
                submissions.c.id == identifier).scalar_subquery()))).first()
        if row is None:
            return None
        if row.state == DONE:
            return {"identifier": row.identifier, "state": DONE, "changed": False}
        if row.state == DEAD:
            _revive(conn, row.pk, now)
        else:
            conn.execute(update(outbox_bundles).where(outbox_bundles.c.pk == row.pk).values(
                next_attempt_at=now, updated_at=now))
        return {"identifier": row.identifier, "state": PENDING if row.state == DEAD
                else row.state, "changed": True}


def requeue_dead(engine: Engine, now: datetime) -> int:
    with _write(engine) as conn, conn.begin():
        pks = list(conn.execute(select(outbox_bundles.c.pk).where(
            outbox_bundles.c.state == DEAD)).scalars())
        for pk in pks:
            _revive(conn, pk, now)
    return len(pks)


def _revive(conn: Connection, pk: int, now: datetime) -> None:
    conn.execute(update(outbox_bundles).where(outbox_bundles.c.pk == pk).values(
        state=PENDING, attempts=0, next_attempt_at=now, lease_until=None, updated_at=now))
    subs.transition(conn, subs.pks_of_bundle(conn, pk), subs.QUEUED, now,
                    {"reason_ru": "Возвращено в очередь оператором.",
                     "reason_en": "Requeued by an operator."}, only_from=(subs.DEAD,))
