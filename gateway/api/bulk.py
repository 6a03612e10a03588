"""FHIR Bulk Data `$export` endpoints (base `/fhir`): kick-off, status, cancel, files.

    GET    /fhir/$export, /fhir/{type}/$export     202, Content-Location: the status URL
    GET    /fhir/$export-status/{job}              202 + X-Progress, Retry-After; 200 manifest
    DELETE /fhir/$export-status/{job}              202: cancelled, files removed
    GET    /fhir/$export-file/{job}/{file}         the NDJSON file, streamed from disk

The work is done by the delivery worker (gateway.export.bulk.Runner); these views
only create, read and cancel jobs. A job belongs to the client that asked for it:
to anyone else it does not exist (404). The literal `$export…` segments take
precedence over fhir_rest's `/<resource_type>/<rid>` whatever the blueprint order,
as Werkzeug ranks static path parts above variables.
"""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, Response, g, jsonify, request, send_file

from gateway.api import negotiation
from gateway.api.fhir_rest import base_url as fhir_base
from gateway.export import bulk
from gateway.issues import Issue, operation_outcome
from gateway.services import services
from gateway.store.clock import utcnow

blueprint = Blueprint("bulk", __name__)


@blueprint.get("/$export")
def export_system():
    return _kick_off(None)


@blueprint.get("/<resource_type>/$export")
def export_type(resource_type: str):
    return _kick_off(resource_type)


def _kick_off(resource_type: str | None) -> Response:
    media_type = negotiation.response_type(request)        # refuse an impossible Accept
    wanted = bulk.parse_request(list(request.args.items(multi=True)), resource_type,
                                request.headers.get("Prefer", ""))
    job_id = bulk.create(services().engine, wanted, g.client.pk, _request_url(), utcnow())
    outcome = operation_outcome([Issue(
        "informational", "Экспорт принят; следите за ним по адресу из Content-Location.",
        "Export accepted; poll the Content-Location URL.", severity="information")])
    return negotiation.render(outcome, media_type, 202,
                              {"Content-Location": f"{fhir_base()}/$export-status/{job_id}"})


@blueprint.get("/$export-status/<job_id>")
def status(job_id: str):
    found = services()
    job = bulk.find(found.engine, job_id, g.client.pk)
    if job.state == bulk.FAILED:
        raise bulk.failure(job)
    if job.state != bulk.COMPLETED:
        return Response(status=202, headers={
            "X-Progress": bulk.progress(job),
            "Retry-After": str(found.settings.export_poll_seconds)})
    reply = jsonify(bulk.manifest(job, f"{fhir_base()}/$export-file/{job.id}"))
    reply.expires = job.expires_at(timedelta(hours=found.settings.export_retention_hours))
    return reply


@blueprint.delete("/$export-status/<job_id>")
def cancel(job_id: str):
    found = services()
    bulk.cancel(found.engine, bulk.export_root(found.settings), job_id, g.client.pk, utcnow())
    outcome = operation_outcome([Issue(
        "informational", "Экспорт отменён, его файлы удалены.",
        "Export cancelled; its files are deleted.", severity="information")])
    return negotiation.render(outcome, "application/fhir+json", 202)


@blueprint.get("/$export-file/<job_id>/<name>")
def download(job_id: str, name: str):
    found = services()
    path = bulk.file_path(found.engine, bulk.export_root(found.settings), job_id,
                          g.client.pk, name)
    return send_file(path, mimetype=bulk.NDJSON, download_name=name)


def _request_url() -> str:
    """The kick-off URL as the client sees it (behind `base_url` when one is set)."""
    query = request.query_string.decode("utf-8")
    return fhir_base() + request.path.removeprefix("/fhir") + (f"?{query}" if query else "")
