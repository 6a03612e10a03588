"""The mock upstream's Flask app: routes that translate Replies to HTTP, nothing more.

    POST /fhir/{frmo|frmr|elmk}     receive a signed transaction Bundle → 202 + ticket
    GET  /fhir/_tickets/{ticket}    the ticket's status and, once completed, per entry
    GET  /_mock/stats               counters for integration testers
    GET  /_mock/records             every applied (reference, version) with its count
    GET  /_mock/registry/{dest}     what a register holds now

The behaviour lives in upstream.py (requests), processing.py and rules.py (what
happens to entries), faults.py (misbehaviour) and store.py (tables).
"""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from gateway.issues import Issue, operation_outcome
from gateway.mock_upstream import faults
from gateway.mock_upstream.config import MockConfig
from gateway.mock_upstream.rules import DESTINATIONS
from gateway.mock_upstream.upstream import MockUpstream, Reply

log = logging.getLogger("gateway.mock_upstream")

FHIR_JSON = "application/fhir+json"
MAX_BODY_BYTES = 50 * 1024 * 1024


def create_mock_app(config: MockConfig | None = None) -> Flask:
    """A mock ЕГИСЗ; its state is `app.extensions["mock"]` (call `.stop()` when done)."""
    config = config or MockConfig()
    app = Flask("gateway.mock_upstream")
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    mock = MockUpstream(config)
    app.extensions["mock"] = mock
    destinations = ",".join(DESTINATIONS)

    @app.before_request
    def _latency():
        if request.path.startswith("/fhir/"):
            mock.add_latency()

    @app.post(f"/fhir/<any({destinations}):destination>")
    def receive(destination: str):
        reply = mock.receive(destination, request.get_data())
        if reply.status == 202:
            reply.headers["Content-Location"] = url_for(
                "poll", ticket=reply.body["ticket"], _external=True)
        if reply.drop:
            if faults.drop_connection(request.environ):
                mock.store.bump("connections_dropped")
                log.info("Dropped the connection after receiving ticket %s",
                         reply.body["ticket"])
                return Response(faults.dropped_body())
            log.warning("This server does not expose the client socket: answering instead "
                        "of dropping the connection")
        return _render(reply)

    @app.get("/fhir/_tickets/<ticket>")
    def poll(ticket: str):
        return _render(mock.poll(ticket))

    @app.get("/_mock/stats")
    def stats():
        return jsonify(mock.store.stats())

    @app.get("/_mock/records")
    def records():
        return jsonify({"records": mock.store.applied_records()})

    @app.get(f"/_mock/registry/<any({destinations}):destination>")
    def registry(destination: str):
        return jsonify({"destination": destination,
                        "resources": mock.store.registered(destination)})

    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    if config.start_processor:
        mock.start()
    return app


def _render(reply: Reply) -> Response:
    response = jsonify(reply.body)
    response.status_code = reply.status
    if reply.body.get("resourceType") == "OperationOutcome":
        response.mimetype = FHIR_JSON
    response.headers.update(reply.headers)
    return response


def _http_error(error: HTTPException) -> Response:
    texts = {404: ("not-found", "Адрес не найден: пакеты принимаются по адресам "
                                "/fhir/frmo, /fhir/frmr и /fhir/elmk."),
             405: ("not-supported", "Метод не поддерживается для этого адреса."),
             413: ("too-long", "Тело запроса слишком велико.")}
    code, text_ru = texts.get(error.code or 500, ("processing", "Ошибка обработки запроса."))
    response = jsonify(operation_outcome([Issue(code, text_ru,
                                                f"{error.code} {error.name}")]))
    response.status_code = error.code or 500
    response.mimetype = FHIR_JSON
    return response


def _unexpected_error(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return _http_error(error)
    log.exception("Unhandled error on %s %s", request.method, request.path)
    response = jsonify(operation_outcome([Issue(
        "exception", "Внутренняя ошибка имитатора ЕГИСЗ.",
        f"Mock upstream error: {type(error).__name__}; see its log.")]))
    response.status_code = 500
    response.mimetype = FHIR_JSON
    return response
