"""Following data upstream: submissions, webhooks, the outbox for operators, the JWKS.

    GET  /.well-known/jwks.json                     public keys of Bundle signatures
    GET  /api/v1/submissions/{id}                   one submission with its history
    GET  /api/v1/submissions?status=&since=&organization=&resource=&overdue=&_count=&cursor=
    POST /api/v1/webhooks {"url", "secret"?}        register (the secret is shown once)
    GET  /api/v1/webhooks, DELETE /api/v1/webhooks/{id}, GET /api/v1/webhooks/deliveries
    GET  /api/v1/admin/outbox?state=                Bundles (admin)
    GET  /api/v1/admin/outbox/summary               counts by state and status (admin)
    POST /api/v1/admin/outbox/{id}/retry            a Bundle or submission id, due now (admin)
    POST /api/v1/admin/outbox/requeue-dead          every dead Bundle back to the queue (admin)
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, g, jsonify, request

from gateway import fhir, signing
from gateway.api.auth import require_admin
from gateway.delivery import outbox
from gateway.errors import InvalidRequest, NotFound
from gateway.services import services
from gateway.store import submissions, webhooks
from gateway.store.repository import utcnow
from gateway.validation import systems

blueprint = Blueprint("delivery", __name__)
MAX_COUNT = 1000
MAX_ID = 2**63 - 1          # the largest key a database integer column holds
OID = re.compile(r"^\d+(\.\d+)+$")


@blueprint.get("/.well-known/jwks.json")
def jwks():
    response = jsonify(signing.jwks(services().settings.keys_path))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@blueprint.get("/api/v1/submissions/<sid>")
def submission(sid: str):
    with services().engine.connect() as conn:
        found = submissions.get(conn, sid) if "\x00" not in sid else None
    if found is None:
        raise NotFound(f"Отправка {sid} не найдена.", f"Submission {sid!r} not found.")
    return jsonify(found)


@blueprint.get("/api/v1/submissions")
def submission_list():
    args = request.args
    statuses = [s for value in args.getlist("status") for s in value.split(",") if s]
    unknown = set(statuses) - set(submissions.STATUSES)
    if unknown:
        raise InvalidRequest(
            f"Неизвестный статус: {', '.join(sorted(unknown))}. Допустимы: "
            f"{', '.join(submissions.STATUSES)}.", f"Unknown status {sorted(unknown)}.")
    count = _integer(args.get("_count", "100"), "_count", 1, MAX_COUNT)
    after = _integer(args["cursor"], "cursor", 0, MAX_ID) if args.get("cursor") else None
    for name in ("organization", "resource"):
        _no_nul(args.get(name), name)
    with services().engine.connect() as conn:
        organization = _organization(conn, args.get("organization"))
        found, cursor = submissions.search(
            conn, statuses or None, _since(args.get("since")), organization,
            args.get("resource"), args.get("overdue") in ("true", "1"), after, count)
    body: dict = {"count": len(found), "submissions": found}
    if cursor is not None:
        query = request.args.to_dict(flat=False)
        query["cursor"] = [str(cursor)]
        body["next"] = request.base_url + "?" + urlencode(query, doseq=True)
    return jsonify(body)


@blueprint.post("/api/v1/webhooks")
def webhook_register():
    body = fhir.parse_json_value(request.get_data(cache=False), 8)
    url = body.get("url") if isinstance(body, dict) else None
    secret = body.get("secret") if isinstance(body, dict) else None
    if not _http_url(url):
        raise InvalidRequest("Укажите url вебхука: адрес http(s)://…",
                             "Give the webhook's url as http(s)://…", expression="url")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16
                               or not secret.isprintable()):
        raise InvalidRequest("Секрет вебхука — строка не короче 16 печатных символов.",
                             "The webhook secret must be a string of 16+ printable characters.",
                             expression="secret")
    created = webhooks.register(services().engine, g.client.pk, url, secret, utcnow())
    return jsonify(created), 201


@blueprint.get("/api/v1/webhooks")
def webhook_list():
    return jsonify(webhooks=webhooks.of_client(services().engine, g.client.pk))


@blueprint.delete("/api/v1/webhooks/<int:pk>")
def webhook_delete(pk: int):
    if pk > MAX_ID or not webhooks.deactivate(services().engine, g.client.pk, pk):
        raise NotFound("Вебхук не найден.", f"Webhook {pk} not found.")
    return "", 204


@blueprint.get("/api/v1/webhooks/deliveries")
def webhook_deliveries():
    return jsonify(deliveries=webhooks.deliveries(services().engine, g.client.pk))


@blueprint.get("/api/v1/admin/outbox")
def outbox_list():
    require_admin()
    state = request.args.get("state")
    if state and state not in outbox.STATES:
        raise InvalidRequest(f"Неизвестное состояние пакета: {state}.",
                             f"Unknown state {state!r}; one of {', '.join(outbox.STATES)}.")
    limit = _integer(request.args.get("_count", "100"), "_count", 1, MAX_COUNT)
    return jsonify(bundles=outbox.list_bundles(services().engine, state, limit))


@blueprint.get("/api/v1/admin/outbox/summary")
def outbox_summary():
    require_admin()
    return jsonify(outbox.summary(services().engine))


@blueprint.post("/api/v1/admin/outbox/<identifier>/retry")
def outbox_retry(identifier: str):
    require_admin()
    result = outbox.retry(services().engine, identifier, utcnow()) \
        if "\x00" not in identifier else None
    if result is None:
        raise NotFound("Пакет или отправка не найдены.", f"No Bundle or submission {identifier!r}.")
    return jsonify(result)


@blueprint.post("/api/v1/admin/outbox/requeue-dead")
def outbox_requeue_dead():
    require_admin()
    return jsonify(requeued=outbox.requeue_dead(services().engine, utcnow()))


def _no_nul(value: str | None, name: str) -> None:
    """PostgreSQL refuses NUL in text: such a value can match nothing, and says so."""
    if value and "\x00" in value:
        raise InvalidRequest(f"Параметр {name} содержит недопустимый символ NUL.",
                             f"{name} contains a NUL character.")


def _http_url(url) -> bool:
    try:
        parts = urlsplit(url) if isinstance(url, str) and "\x00" not in url else None
    except ValueError:              # e.g. "http://[::1": an unclosed IPv6 address
        return False
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc)


def _integer(raw: str, name: str, low: int, high: int | None) -> int:
    # isdigit() alone takes "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or int(raw) < low \
            or (high is not None and int(raw) > high):
        limit = f"{low}…{high}" if high is not None else f"≥ {low}"
        raise InvalidRequest(f"Параметр {name} должен быть целым числом {limit}.",
                             f"{name} must be an integer {limit}.")
    return int(raw)


def _since(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
        if moment.tzinfo is not None:   # OverflowError: 0001-01-01T00:00+01:00 has no UTC date
            moment = moment.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise InvalidRequest("since: ожидается дата-время ISO 8601, например "
                             "2026-11-23T10:00:00+03:00.",
                             "since must be an ISO 8601 date-time.") from None
    return moment


def _organization(conn, raw: str | None) -> str | None:
    """An Organization id, or its ФРМО OID (what an MIS knows its clinic by)."""
    if not raw or not OID.match(raw):
        return raw or None
    found = services().store.find_ids(conn, "Organization", [("identifier", systems.FRMO, raw)])
    return found[0] if found else "-"
