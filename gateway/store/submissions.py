"""Submissions: the durable outbox of accepted changes, and the status the MIS follows.

Every accepted change of a resource (a new version or a deletion) adds one
submission row in the same database transaction as the change itself, so a
crash can neither accept a record without queueing it nor queue one it did not
accept. The delivery worker moves each submission through its statuses:

    queued → sent → accepted (принято) → processing (в обработке)
      → approved (одобрено) | rejected (отклонено)
      | clarification_required (требуется уточнение)
    queued/sent → dead (attempts exhausted; `gateway outbox requeue-dead` revives it)

Every change of status is kept in `submission_events` with its time, and is
offered to the client's webhooks in the same transaction.
"""
from __future__ import annotations

import json
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection

from gateway import workdays
from gateway.delivery import routing
from gateway.store import tenancy, webhooks
from gateway.store.clock import instant, optional_instant
from gateway.store.schema import resources, search_token, submission_events, submissions

QUEUED = "queued"
SENT = "sent"
ACCEPTED = "accepted"
PROCESSING = "processing"
APPROVED = "approved"
REJECTED = "rejected"
CLARIFICATION = "clarification_required"
DEAD = "dead"
STATUSES = (QUEUED, SENT, ACCEPTED, PROCESSING, APPROVED, REJECTED, CLARIFICATION, DEAD)
FINAL = (APPROVED, REJECTED, CLARIFICATION, DEAD)
LABELS_RU = {QUEUED: "в очереди", SENT: "отправлено", ACCEPTED: "принято",
             PROCESSING: "в обработке", APPROVED: "одобрено", REJECTED: "отклонено",
             CLARIFICATION: "требуется уточнение", DEAD: "не доставлено"}

# The API client on whose behalf the current request writes (set by the API layer),
# so submissions and their webhooks belong to the client that pushed the data.
current_client: ContextVar[int | None] = ContextVar("current_client", default=None)


@dataclass(frozen=True)
class Change:
    """One accepted change, as the store wrote it."""

    resource_type: str
    resource_id: str
    version: int
    content: dict | None          # None for a deletion


def record(conn: Connection, changes: list[Change], now: datetime) -> list[str | None]:
    """Queue one submission per change that goes upstream; ids in change order."""
    rows, ids = [], []
    for change in changes:
        target = routing.destination(change.resource_type, change.content)
        if target is None:
            ids.append(None)
            continue
        sid = str(uuid.uuid4())
        ids.append(sid)
        rows.append({
            "id": sid, "resource_type": change.resource_type,
            "resource_id": change.resource_id, "version": change.version,
            "method": "DELETE" if change.content is None else "PUT", "destination": target,
            "organization": resolve(conn, routing.organization_of(
                change.resource_type, change.content, change.resource_id)),
            "depends_on": json.dumps(routing.dependencies(change.resource_type,
                                                          change.content)),
            "status": QUEUED, "detail": None, "client_pk": current_client.get(),
            "created_at": now, "updated_at": now})
    if rows:
        pks = conn.execute(insert(submissions).returning(
            submissions.c.pk, sort_by_parameter_order=True), rows).scalars().all()
        conn.execute(insert(submission_events), [
            {"submission_pk": pk, "status": QUEUED, "at": now, "detail": None} for pk in pks])
    return ids


def resolve(conn: Connection, target: str | None) -> str | None:
    """The id behind `Type/id` or `Type?identifier=system|value`; None if not (yet) here."""
    if not target:
        return None
    found = routing.logical(target)
    if found is None:
        return target.split("/", 1)[1] if "/" in target else None
    rtype, system, value = found
    return conn.execute(select(resources.c.id).join(
        search_token, search_token.c.resource_pk == resources.c.pk).where(
        search_token.c.resource_type == rtype, search_token.c.param == "identifier",
        search_token.c.code == value, search_token.c.system == system,
        resources.c.deleted.is_(False)).limit(1)).scalar()


def adopt_organization(conn: Connection, ids: list[str]) -> None:
    """Give the organization of a written record to its parts that name none.

    An intake record writes a Practitioner together with his roles at a clinic:
    the Practitioner's submission is that clinic's, and its Bundle is signed for it.
    """
    ids = [i for i in ids if i]
    if not ids:
        return
    owner = conn.execute(select(submissions.c.organization).where(
        submissions.c.id.in_(ids), submissions.c.organization.is_not(None)).limit(1)
    ).scalar()
    if owner:
        conn.execute(update(submissions).where(
            submissions.c.id.in_(ids), submissions.c.organization.is_(None)
        ).values(organization=owner))


def latest(conn: Connection, resource_type: str, resource_id: str) -> str | None:
    """The newest submission of a resource (what an unchanged re-push points to)."""
    return conn.execute(select(submissions.c.id).where(
        submissions.c.resource_type == resource_type,
        submissions.c.resource_id == resource_id,
    ).order_by(submissions.c.pk.desc()).limit(1)).scalar()


def transition(conn: Connection, pks: list[int], status: str, now: datetime,
               detail: dict | None = None, only_from: tuple[str, ...] | None = None,
               **values) -> list[int]:
    """Move submissions to `status`, recording the event; returns the pks moved.

    `only_from` makes a transition conditional (a late poll never takes an
    approved record back to processing). Deadlines are set on the way.
    """
    if not pks:
        return []
    query = select(submissions.c.pk, submissions.c.status, submissions.c.accepted_at) \
        .where(submissions.c.pk.in_(pks))
    rows = conn.execute(query).all()
    moved = [r for r in rows if (only_from is None or r.status in only_from)
             and r.status != status]
    if not moved:
        return []
    values = dict(values)
    if status == ACCEPTED:
        values.setdefault("accepted_at", now)
        values.setdefault("processing_due", workdays.processing_due(now))
    encoded = encode(detail)
    for row in moved:
        extra = dict(values)
        if status == CLARIFICATION:
            extra["processing_due"] = workdays.processing_due(row.accepted_at or now,
                                                              clarification=True)
            extra["answer_due"] = workdays.clarification_answer_due(now)
        conn.execute(update(submissions).where(submissions.c.pk == row.pk).values(
            status=status, detail=encoded, updated_at=now, **extra))
    conn.execute(insert(submission_events), [
        {"submission_pk": r.pk, "status": status, "at": now, "detail": encoded}
        for r in moved])
    webhooks.enqueue(conn, [r.pk for r in moved], now)
    return [r.pk for r in moved]


def set_waiting(conn: Connection, pk: int, waiting: dict | None, now: datetime) -> None:
    """Say why a queued submission waits (a dependency not yet approved), or clear it."""
    conn.execute(update(submissions).where(submissions.c.pk == pk).values(
        detail=encode(waiting), updated_at=now))


def encode(detail: dict | None) -> str | None:
    """A detail as stored (compared as text to tell whether it changed)."""
    return json.dumps(detail, ensure_ascii=False) if detail else None


# --- reading --------------------------------------------------------------------------

def get(conn: Connection, sid: str) -> dict | None:
    """A submission of a resource the caller may see (gateway.store.tenancy); else None."""
    row = conn.execute(select(submissions).where(
        submissions.c.id == sid, _visible())).first()
    if row is None:
        return None
    events = conn.execute(select(submission_events).where(
        submission_events.c.submission_pk == row.pk).order_by(submission_events.c.pk)).all()
    return describe(row, today=workdays.moscow_today(), history=[_event(e) for e in events],
                    answered_by=_answers(conn, [row]).get(row.pk))


def search(conn: Connection, status: list[str] | None = None, since: datetime | None = None,
           organization: str | None = None, resource: str | None = None,
           overdue: bool | None = None, after: int | None = None,
           limit: int = 100) -> tuple[list[dict], int | None]:
    """Submissions oldest first, filtered; returns them and the cursor of the next page.

    Only those of resources the caller may see (gateway.store.tenancy).
    """
    query = select(submissions).where(_visible()).order_by(submissions.c.pk)
    if status:
        query = query.where(submissions.c.status.in_(status))
    if since is not None:
        query = query.where(submissions.c.updated_at >= since)
    if organization:
        query = query.where(submissions.c.organization == organization)
    if resource:
        rtype, _, rid = resource.partition("/")
        query = query.where(submissions.c.resource_type == rtype,
                            submissions.c.resource_id == rid)
    today = workdays.moscow_today()
    if overdue:
        query = query.where(_overdue_clause(today))
    if after is not None:
        query = query.where(submissions.c.pk > after)
    rows = conn.execute(query.limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    answers = _answers(conn, rows)
    return [describe(r, today, answered_by=answers.get(r.pk)) for r in rows], \
        (rows[-1].pk if more else None)


def _visible():
    return tenancy.visible_by_key(submissions.c.resource_type, submissions.c.resource_id)


def counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(submissions.c.status, func.count()).group_by(
        submissions.c.status)).all()
    return {status: n for status, n in rows}


def _overdue_clause(today: date):
    """Past the regulated time: the upstream's 5/10 working days, or the MIS's 3 to
    answer a clarification (answered by pushing a newer version of the resource)."""
    newer = submissions.alias("newer")
    answered = select(newer.c.pk).where(
        newer.c.resource_type == submissions.c.resource_type,
        newer.c.resource_id == submissions.c.resource_id,
        newer.c.pk > submissions.c.pk).exists()
    return ((submissions.c.status.in_((ACCEPTED, PROCESSING))
             & (submissions.c.processing_due < today))
            | ((submissions.c.status == CLARIFICATION) & (submissions.c.answer_due < today)
               & ~answered))


def _answers(conn: Connection, rows) -> dict[int, str]:
    """For submissions awaiting a clarification: the newer submission that answered it."""
    asked = [r for r in rows if r.status == CLARIFICATION]
    found: dict[int, str] = {}
    for row in asked:
        newer = conn.execute(select(submissions.c.id).where(
            submissions.c.resource_type == row.resource_type,
            submissions.c.resource_id == row.resource_id, submissions.c.pk > row.pk,
        ).order_by(submissions.c.pk).limit(1)).scalar()
        if newer:
            found[row.pk] = newer
    return found


def is_overdue(row, today: date, answered: bool = False) -> bool:
    if row.status in (ACCEPTED, PROCESSING):
        return row.processing_due is not None and row.processing_due < today
    if row.status == CLARIFICATION and not answered:
        return row.answer_due is not None and row.answer_due < today
    return False


def describe(row, today: date, history: list[dict] | None = None,
             answered_by: str | None = None) -> dict:
    """A submission as the API shows it."""
    body = {
        "id": row.id,
        "resource": f"{row.resource_type}/{row.resource_id}",
        "version": row.version,
        "method": row.method,
        "destination": row.destination,
        "organization": row.organization,
        "status": row.status,
        "status_ru": LABELS_RU[row.status],
        "created": optional_instant(row.created_at),
        "updated": optional_instant(row.updated_at),
        "accepted": optional_instant(row.accepted_at),
        "processing_due": row.processing_due.isoformat() if row.processing_due else None,
        "answer_due": row.answer_due.isoformat() if row.answer_due else None,
        "overdue": is_overdue(row, today, answered_by is not None),
        "answered_by": answered_by,
        "depends_on": json.loads(row.depends_on),
    }
    if row.detail:
        body["detail"] = json.loads(row.detail)
    if history is not None:
        body["history"] = history
    return {k: v for k, v in body.items() if v is not None}


def _event(row) -> dict:
    event = {"status": row.status, "status_ru": LABELS_RU[row.status], "at": instant(row.at)}
    if row.detail:
        event["detail"] = json.loads(row.detail)
    return event


def pks_of_bundle(conn: Connection, bundle_pk: int) -> list[int]:
    return list(conn.execute(select(submissions.c.pk).where(
        submissions.c.bundle_pk == bundle_pk).order_by(submissions.c.pk)).scalars())


def by_reference(conn: Connection, bundle_pk: int) -> dict[tuple[str, int], int]:
    """(`Type/id`, version) → submission pk, for the entries of one Bundle."""
    rows = conn.execute(select(submissions.c.pk, submissions.c.resource_type,
                               submissions.c.resource_id, submissions.c.version).where(
        and_(submissions.c.bundle_pk == bundle_pk))).all()
    return {(f"{r.resource_type}/{r.resource_id}", r.version): r.pk for r in rows}
