"""Liveness and readiness: the process answers, and the database is reachable."""
from __future__ import annotations

from flask import Blueprint, jsonify

from gateway.errors import Unavailable
from gateway.services import services

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz():
    try:
        from gateway.store.database import ping
        ping(services().engine)
    except Exception as exc:  # any driver error means "not ready"
        raise Unavailable("База данных недоступна.", f"Database unreachable: {type(exc).__name__}")\
            from None
    return jsonify(status="ok", database="ok")
