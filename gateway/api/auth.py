"""Bearer-token authentication (tenancy rules come later).

Every endpoint but liveness and the CapabilityStatement needs
`Authorization: Bearer <token>`; the client found is kept in `g.client`.
"""
from __future__ import annotations

from flask import g, request

from gateway.errors import Forbidden, Unauthorized
from gateway.services import services
from gateway.store import submissions
from gateway.store.clients import client_for_token

PUBLIC_ENDPOINTS = {"health.healthz", "fhir.metadata", "static", "delivery.jwks"}


def require_token() -> None:
    submissions.current_client.set(None)        # threads are reused between requests
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


def require_admin() -> None:
    if g.client.role != "admin":
        raise Forbidden("Операция доступна только администратору шлюза.",
                        "This operation needs the admin role.")
