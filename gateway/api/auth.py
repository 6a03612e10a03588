"""Bearer-token authentication (tenancy rules come later).

Every endpoint but liveness and the CapabilityStatement needs
`Authorization: Bearer <token>`; the client found is kept in `g.client`.
"""
from __future__ import annotations

from flask import g, request

from gateway.errors import Unauthorized
from gateway.services import services
from gateway.store.clients import client_for_token

PUBLIC_ENDPOINTS = {"health.healthz", "fhir.metadata", "static"}


def require_token() -> None:
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
