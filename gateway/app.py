"""The application factory: settings, services, blueprints and the one error handler.

`create_app(settings)` takes a Settings, a dict of overrides, or nothing (the
defaults file and GATEWAY_* variables). Services live in
`app.extensions["gateway"]` and are reached through `gateway.services.services()`; views stay thin.
Every failure becomes an OperationOutcome in `handle_error`, and nowhere else.
"""
from __future__ import annotations

import logging

from flask import Flask, current_app, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from gateway import logs
from gateway.api import audit, negotiation, openapi, protection
from gateway.errors import GatewayError, Unavailable
from gateway.issues import Issue, operation_outcome
from gateway.mapping import loader as mapping_loader
from gateway.services import Services, load_terminology
from gateway.settings import Settings, load_settings
from gateway.store import database, encryption
from gateway.store.repository import Store

log = logging.getLogger("gateway")


def create_app(settings: Settings | dict | None = None) -> Flask:
    if not isinstance(settings, Settings):
        settings = load_settings(settings)
    logs.configure(settings.log_format, settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False

    settings.data_path.mkdir(parents=True, exist_ok=True)
    engine = database.make_engine(settings.effective_database_url,
                                  encryption.keyring_from(settings),
                                  statement_timeout_seconds=settings.request_timeout_seconds)
    if settings.auto_migrate:
        database.upgrade(engine)
    books = load_terminology(settings)
    app.extensions["gateway"] = Services(settings, engine, Store(engine), books,
                                         mapping_loader.load_all(books))

    from gateway.api import admin, auth, bulk, delivery, export, fhir_rest, health, intake, oauth
    app.register_blueprint(health.blueprint)
    app.register_blueprint(bulk.blueprint, url_prefix="/fhir")
    app.register_blueprint(fhir_rest.blueprint, url_prefix="/fhir")
    app.register_blueprint(intake.blueprint, url_prefix="/api/v1")
    app.register_blueprint(export.blueprint, url_prefix="/api/v1")
    app.register_blueprint(delivery.blueprint)
    app.register_blueprint(admin.blueprint, url_prefix="/api/v1/admin")
    app.register_blueprint(oauth.blueprint)
    app.register_blueprint(openapi.blueprint)       # GET /api/v1/openapi.json
    audit.init_app(app)               # /fhir/AuditEvent and the audit recorder (after_request)
    protection.install(app)           # request id, address throttle, access log (before auth)
    app.before_request(auth.require_token)
    app.teardown_request(auth.forget_client)
    app.before_request(protection.limit_client)    # after require_token: needs g.client
    app.before_request(oauth.enforce_scopes)       # after require_token: needs g.client
    app.register_error_handler(Exception, handle_error)
    return app


def handle_error(error: Exception):
    """Every failure as an OperationOutcome, in the client's format where possible."""
    if isinstance(error, OperationalError) and database.cut_off(error):
        error = _too_slow(str(error.orig).splitlines()[0])
    if isinstance(error, GatewayError):
        status, outcome, headers = error.status, error.outcome(), error.headers
    elif isinstance(error, HTTPException):
        status, headers = error.code or 500, {}
        outcome = operation_outcome([_http_issue(error)])
    else:
        log.exception("Unhandled error on %s %s", request.method, request.path)
        status, headers = 500, {}
        outcome = GatewayError().outcome()
    try:
        media_type = negotiation.response_type(request)
    except GatewayError:
        media_type = "application/fhir+json"
    return negotiation.render(outcome, media_type, status, headers)


def _too_slow(reason: str) -> Unavailable:
    """A statement PostgreSQL cut off (statement_timeout) is 503, not 500."""
    log.warning("Statement cut off by statement_timeout: %s", reason)
    timeout = current_app.extensions["gateway"].settings.request_timeout_seconds
    return Unavailable(
        f"Запрос выполнялся дольше допустимого ({timeout} с) и прерван: сузьте условия "
        "поиска или повторите позже.",
        f"The request took longer than the {timeout} s allowed and was cut off; narrow "
        "the search or retry later.", headers={"Retry-After": "5"})


def _http_issue(error: HTTPException) -> Issue:
    texts = {
        404: ("not-found", "Адрес не найден."),
        405: ("not-supported", "Метод не поддерживается для этого адреса."),
        413: ("too-long", "Тело запроса больше допустимого."),
    }
    code, text_ru = texts.get(error.code, ("processing", "Ошибка обработки запроса."))
    return Issue(code, text_ru, f"{error.code} {error.name}: {error.description}")
