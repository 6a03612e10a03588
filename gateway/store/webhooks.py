"""Webhooks: where an MIS client wants its submissions' status changes POSTed.

A notification is written in the same transaction as the status change it
reports (its own small outbox), and sent later by the worker's webhook sender,
so a slow or dead MIS endpoint never holds up delivery to ЕГИСЗ.
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from gateway.store.clock import instant
from gateway.store.schema import submissions, webhook_deliveries, webhooks

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


def register(engine: Engine, client_pk: int, url: str, secret: str | None,
             now: datetime) -> dict:
    """Register a URL for a client; the shared secret is generated when not given."""
    secret = secret or secrets.token_urlsafe(32)
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        pk = conn.execute(insert(webhooks).values(
            client_pk=client_pk, url=url, secret=secret, active=True, created_at=now
        ).returning(webhooks.c.pk)).scalar_one()
    return {"id": pk, "url": url, "secret": secret}


def of_client(engine: Engine, client_pk: int) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(webhooks).where(webhooks.c.client_pk == client_pk,
                                                   webhooks.c.active.is_(True))).all()
    return [{"id": r.pk, "url": r.url} for r in rows]


def deactivate(engine: Engine, client_pk: int, pk: int) -> bool:
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        done = conn.execute(update(webhooks).where(
            webhooks.c.pk == pk, webhooks.c.client_pk == client_pk,
            webhooks.c.active.is_(True)).values(active=False))
    return done.rowcount == 1


def enqueue(conn: Connection, submission_pks: list[int], now: datetime) -> None:
    """One notification per status change per active webhook of the submitting client."""
    rows = conn.execute(select(
        webhooks.c.pk.label("webhook_pk"), submissions.c.id, submissions.c.resource_type,
        submissions.c.resource_id, submissions.c.version, submissions.c.status,
        submissions.c.detail,
    ).join(webhooks, webhooks.c.client_pk == submissions.c.client_pk).where(
        submissions.c.pk.in_(submission_pks), webhooks.c.active.is_(True))).all()
    if not rows:
        return
    conn.execute(insert(webhook_deliveries), [{
        "webhook_pk": r.webhook_pk, "state": PENDING, "attempts": 0,
        "next_attempt_at": now, "created_at": now,
        "payload": json.dumps({
            "event": "submission.status", "submission": r.id,
            "resource": f"{r.resource_type}/{r.resource_id}", "version": r.version,
            "status": r.status, "at": instant(now),
            **({"detail": json.loads(r.detail)} if r.detail else {}),
        }, ensure_ascii=False)} for r in rows])


def claim_due(engine: Engine, now: datetime, lease: timedelta, limit: int = 50) -> list:
    """Notifications due now, leased so that a second sender leaves them alone."""
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        query = select(webhook_deliveries.c.pk, webhook_deliveries.c.payload,
                       webhook_deliveries.c.attempts, webhooks.c.url, webhooks.c.secret
                       ).join(webhooks, webhooks.c.pk == webhook_deliveries.c.webhook_pk
                              ).where(webhook_deliveries.c.state == PENDING,
                                      webhook_deliveries.c.next_attempt_at <= now
                                      ).order_by(webhook_deliveries.c.pk).limit(limit)
        if engine.dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=True, of=webhook_deliveries)
        rows = conn.execute(query).all()
        if rows:
            conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.pk.in_([r.pk for r in rows])
            ).values(next_attempt_at=now + lease))
    return rows


def finish(engine: Engine, pk: int, now: datetime, error: str | None,
           retry_at: datetime | None) -> None:
    """Record one attempt: delivered, to be retried at `retry_at`, or given up."""
    values: dict = {"attempts": webhook_deliveries.c.attempts + 1, "last_error": error}
    if error is None:
        values.update(state=DELIVERED, delivered_at=now)
    elif retry_at is None:
        values.update(state=FAILED)
    else:
        values.update(next_attempt_at=retry_at)
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.pk == pk)
                     .values(**values))


def deliveries(engine: Engine, client_pk: int) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(webhook_deliveries).join(
            webhooks, webhooks.c.pk == webhook_deliveries.c.webhook_pk).where(
            webhooks.c.client_pk == client_pk).order_by(webhook_deliveries.c.pk)).all()
    return [{"id": r.pk, "state": r.state, "attempts": r.attempts,
             "last_error": r.last_error, "payload": json.loads(r.payload)} for r in rows]
