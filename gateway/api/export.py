"""`GET /api/v1/export/legacy/{register}`: a register as signed legacy XML, streamed.

    GET /api/v1/export/legacy/frmo|frmr|elmk[?since=<instant>]

The answer is the document of gateway.export.legacy (docs/legacy-export.md), written
while the store is read, so its size never sits in memory. Everything that can be
refused (register, `since`, the signing key) is checked before the first byte; a
failure after that can only cut the document short, and a cut document has no
valid signature, so a consumer cannot take it for a whole one.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

from flask import Blueprint, Response, request, stream_with_context

from gateway import signing
from gateway.errors import InvalidRequest, NotFound
from gateway.export import legacy
from gateway.services import services
from gateway.settings import Settings
from gateway.store import tenancy

blueprint = Blueprint("legacy_export", __name__)
log = logging.getLogger(__name__)


@blueprint.get("/export/legacy/<register>")
def legacy_export(register: str):
    if register not in legacy.REGISTERS:
        raise NotFound(
            f"Реестр «{register}» не найден. Доступны: {', '.join(legacy.REGISTERS)}.",
            f"No register {register!r}; use one of {', '.join(legacy.REGISTERS)}.")
    since = _since(request.args.get("since"))
    gateway = services()
    chunks = legacy.iter_legacy(gateway.engine, register, _signer(gateway.settings), since)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(stream_with_context(tenancy.carrying(_logged(chunks, register))),
                    mimetype="application/xml",
                    headers={"Content-Disposition":
                             f'attachment; filename="legacy-{register}-{stamp}.xml"',
                             "Cache-Control": "no-store"})


def _signer(settings: Settings) -> signing.Signer:
    """The key the delivery worker signs with: the configured kid, else the newest."""
    if settings.signing_kid:
        return signing.load_signer(settings.keys_path, kid=settings.signing_kid)
    return signing.ensure_signer(settings.keys_path, settings.signing_alg)


def _since(value: str | None) -> datetime | None:
    """`since` as a FHIR instant (a zone is needed; `Z` accepted)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
        if moment.tzinfo is not None:
            moment.astimezone(UTC)   # 0001-01-01T00:00+01:00 has no UTC date: unreadable too
    except (ValueError, OverflowError):
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRequest(
            f"Параметр since должен быть моментом времени с часовым поясом, например "
            f"2026-01-31T00:00:00Z; получено: {value!r}.",
            f"since must be an instant with a time zone, e.g. 2026-01-31T00:00:00Z; "
            f"got {value!r}.")
    return moment


def _logged(chunks, register: str):
    """The chunks; a failure half-way is logged (the client sees a cut document)."""
    try:
        yield from chunks
    except Exception:
        log.exception("legacy export of %s failed after the response had started", register)
        raise
