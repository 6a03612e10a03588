"""Who is calling, and whether the kind of request suits the client.

Every endpoint but the public ones needs `Authorization: Bearer <token>` (a
static client token or an OAuth access token, gateway.store.clients). The
client found is kept in `g.client`, and its tenancy access is set for the
store (gateway.store.tenancy), which filters every read and judges every
write itself. Here only the kind of request is checked: a read-only client
cannot write, a write-only one cannot read data, a region client never writes.
"""
from __future__ import annotations

from flask import g, request

from gateway.errors import Forbidden, Unauthorized
from gateway.services import services
from gateway.store import submissions, tenancy
from gateway.store.clients import client_for_token

PUBLIC_ENDPOINTS = {"health.healthz", "fhir.metadata", "static", "delivery.jwks",
                    "oauth.token", "oauth.smart_configuration", "openapi.openapi_json"}
# Data endpoints by blueprint. A POST that only reads (search by form) is a read, and
# cancelling one's own export is part of reading.
DATA_BLUEPRINTS = {"fhir", "bulk", "legacy_export", "intake", "audit"}
READING_POSTS = {"fhir.search_form", "bulk.cancel"}


def require_token() -> None:
    # Threads are reused between requests: forget the previous caller first; the
    # thread's own access comes back when the request ends (`forget_client`).
    submissions.current_client.set(None)
    g.access_before = tenancy.current_access.set(tenancy.NOBODY)
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    client = client_for_token(services().engine, token.strip()) \
        if scheme.lower() == "bearer" and token.strip() else None
    if client is None:
        raise Unauthorized(
            "Нужен действующий токен доступа: заголовок Authorization: Bearer <токен>.",
            "A valid bearer token is required (Authorization: Bearer <token>).",
            headers={"WWW-Authenticate": 'Bearer realm="gateway"'})
    g.client = client
    submissions.current_client.set(client.pk)
    tenancy.current_access.set(tenancy.Access.of(client))
    _check_kind(client)


def forget_client(_error=None) -> None:
    """Teardown: the thread reads with its own access again (streams carry theirs)."""
    token = g.pop("access_before", None)
    if token is not None:
        tenancy.current_access.reset(token)
        submissions.current_client.set(None)


def _check_kind(client) -> None:
    if request.blueprint not in DATA_BLUEPRINTS:
        return
    writes = request.method not in ("GET", "HEAD") and request.endpoint not in READING_POSTS
    if writes and not client.can_write:
        raise Forbidden("Этому клиенту запись запрещена: его доступ — только чтение.",
                        "This client may not write: its access is read-only.")
    if not writes and not client.can_read:
        raise Forbidden("Этому клиенту чтение данных запрещено: его доступ — только запись.",
                        "This client may not read data: its access is write-only.")


def require_admin() -> None:
    if g.client.role != "admin":
        raise Forbidden("Операция доступна только администратору шлюза.",
                        "This operation needs the admin role.")
