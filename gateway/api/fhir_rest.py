"""The FHIR REST endpoints (base `/fhir`): thin glue between HTTP, the write path and search.

Each view reads the request (negotiation), calls `Resources`, the store or
`gateway.search`, and renders; it never builds an error itself. Which types and
interactions exist comes from `gateway.registry`, as does the CapabilityStatement.
"""
from __future__ import annotations

from flask import Blueprint, Response, request

from gateway import capability, history, search
from gateway.api import audit, negotiation, oauth, protection
from gateway.errors import InvalidRequest, MethodNotAllowed, NotFound, UnsupportedMediaType
from gateway.registry import RESOURCE_TYPES, ResourceType
from gateway.resources import etag_version
from gateway.services import services
from gateway.store.repository import Stored, WriteResult

blueprint = Blueprint("fhir", __name__)


def _spec(resource_type: str, interaction: str) -> ResourceType:
    spec = RESOURCE_TYPES.get(resource_type)
    if spec is None:
        raise NotFound(f"Тип ресурса «{resource_type}» не поддерживается шлюзом.",
                       f"Resource type {resource_type!r} is not supported.")
    if interaction not in spec.interactions:
        raise MethodNotAllowed(
            f"Операция {interaction} не поддерживается для {resource_type}.",
            f"Interaction {interaction} is not supported for {resource_type}.")
    return spec


def base_url() -> str:
    """The FHIR base URL clients see: `base_url` from the settings, else the request's."""
    configured = services().settings.base_url
    return (configured or request.url_root.rstrip("/") + "/fhir").rstrip("/")


def _body() -> dict:
    settings = services().settings
    return negotiation.read_resource(request, settings.max_body_bytes, settings.max_json_depth,
                                     max_elements=settings.max_json_elements,
                                     max_xml_depth=settings.max_xml_depth)


def _search_limits() -> dict:
    settings = services().settings
    return {"max_count": settings.max_page_size, "max_includes": settings.max_includes}


def _reply(resource: dict | None, status: int = 200, headers: dict | None = None) -> Response:
    media_type = negotiation.response_type(request)
    if resource is None or request.headers.get("Prefer", "").strip() == "return=minimal":
        return Response(status=status, headers=headers or {})
    return negotiation.render(resource, media_type, status, headers)


def _version_headers(stored: Stored) -> dict:
    return {
        "ETag": stored.etag,
        "Last-Modified": stored.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Location": f"{base_url()}/{stored.resource_type}/{stored.id}/_history/{stored.version}",
    }


def _write_reply(result: WriteResult) -> Response:
    """The stored resource; `X-Submission-Id` names the submission to follow upstream."""
    status = 201 if result.outcome == "created" else 200
    headers = _version_headers(result.stored)
    if result.submission:
        headers["X-Submission-Id"] = result.submission
    audit.note(result.stored.resource_type, [result.stored.id])
    return _reply(result.stored.content, status, headers)


# --- system level ---------------------------------------------------------------------

@blueprint.get("/metadata")
def metadata():
    return _reply(capability.statement(base_url(), oauth.token_endpoint()))


@blueprint.get("/_history")
def history_system():
    return _history(None, None)


@blueprint.post("")
@blueprint.post("/")
def bundle():
    negotiation.response_type(request)          # refuse an impossible Accept up front
    body = _body()
    if body.get("resourceType") != "Bundle" or body.get("type") not in ("transaction", "batch"):
        raise InvalidRequest("На базовый адрес отправляется Bundle типа transaction или batch.",
                             "POST to the base URL takes a transaction or batch Bundle.",
                             expression="Bundle.type")
    protection.check_bundle_entries(body, services().settings.max_bundle_entries)
    oauth.check_bundle(body)                    # OAuth scopes of every entry (api/oauth.py)
    resources = services().resources
    handler = resources.transaction if body["type"] == "transaction" else resources.batch
    return _reply(audit.note_bundle(handler(body, base_url()), body["type"]))


# --- type level ---------------------------------------------------------------------

@blueprint.get("/<resource_type>")
def search_type(resource_type: str):
    _spec(resource_type, "search-type")
    return _search(resource_type, list(request.args.items(multi=True)))


@blueprint.post("/<resource_type>/_search")
def search_form(resource_type: str):
    """Search with the parameters in a form body (and the query string), as FHIR allows."""
    _spec(resource_type, "search-type")
    if request.mimetype != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            "POST …/_search принимает параметры как application/x-www-form-urlencoded.",
            "POST …/_search takes its parameters as application/x-www-form-urlencoded.")
    return _search(resource_type, list(request.args.items(multi=True))
                   + list(request.form.items(multi=True)))


def _search(resource_type: str, pairs: list[tuple[str, str]]) -> Response:
    given_format = next((value for name, value in pairs if name == "_format"), None)
    media_type = negotiation.response_type(request, given_format, ndjson=True)
    found = services()
    lenient = negotiation.prefers_lenient(request)
    if negotiation.is_ndjson(media_type):
        asked = search.streamable(search.parse(resource_type, pairs, lenient,
                                               **_search_limits()))

        def everything():
            with found.store.snapshot() as conn:
                yield from search.stream(conn, asked, limited=any(
                    name == "_count" for name, _ in pairs))
        return negotiation.render_lines(everything(), media_type)
    with found.store.snapshot() as conn:
        bundle = search.search(conn, resource_type, pairs, lenient=lenient,
                               secret=found.search_secret, base=base_url(),
                               keep=(("_format", given_format),) if given_format else (),
                               limits=_search_limits())
    return negotiation.render_bundle(audit.note_bundle(bundle), media_type)


@blueprint.get("/<resource_type>/_history")
def history_type(resource_type: str):
    _spec(resource_type, "history-type")
    return _history(resource_type, None)


def _history(resource_type: str | None, rid: str | None) -> Response:
    pairs = list(request.args.items(multi=True))
    given_format = request.args.get("_format")
    media_type = negotiation.response_type(request)
    found = services()
    with found.store.snapshot() as conn:
        bundle = history.history(conn, resource_type, rid, pairs,
                                 lenient=negotiation.prefers_lenient(request),
                                 secret=found.search_secret, base=base_url(),
                                 keep=(("_format", given_format),) if given_format else ())
    return negotiation.render_bundle(audit.note_bundle(bundle), media_type)


@blueprint.post("/<resource_type>")
def create(resource_type: str):
    _spec(resource_type, "create")
    negotiation.response_type(request)
    result = services().resources.create(_body(), resource_type,
                                         request.headers.get("If-None-Exist"))
    return _write_reply(result)


@blueprint.put("/<resource_type>")
def conditional_update(resource_type: str):
    _spec(resource_type, "update")
    negotiation.response_type(request)
    query = request.query_string.decode("utf-8")
    query = "&".join(p for p in query.split("&") if p and not p.startswith("_format="))
    if not query:
        raise InvalidRequest("Для PUT без id укажите условие, например "
                             "?identifier=система|значение.",
                             "PUT without an id needs a condition such as "
                             "?identifier=system|value.")
    return _write_reply(services().resources.conditional_update(_body(), resource_type, query))


# --- instance level -----------------------------------------------------------------

@blueprint.get("/<resource_type>/<rid>")
def read(resource_type: str, rid: str):
    _spec(resource_type, "read")
    stored = services().store.read(resource_type, rid)
    return _reply(stored.content, 200, _version_headers(stored))


@blueprint.get("/<resource_type>/<rid>/_history/<vid>")
def vread(resource_type: str, rid: str, vid: str):
    _spec(resource_type, "vread")
    if not vid.isdigit():
        raise NotFound(f"Версия «{vid}» не найдена.", f"Version {vid!r} not found.")
    stored = services().store.vread(resource_type, rid, int(vid))
    return _reply(stored.content, 200, _version_headers(stored))


@blueprint.get("/<resource_type>/<rid>/_history")
def history_instance(resource_type: str, rid: str):
    _spec(resource_type, "history-instance")
    return _history(resource_type, rid)


@blueprint.put("/<resource_type>/<rid>")
def update(resource_type: str, rid: str):
    _spec(resource_type, "update")
    negotiation.response_type(request)
    if_match = etag_version(request.headers.get("If-Match"))
    result = services().resources.update(_body(), resource_type, rid, if_match)
    return _write_reply(result)


@blueprint.delete("/<resource_type>/<rid>")
def delete(resource_type: str, rid: str):
    _spec(resource_type, "delete")
    result = services().resources.delete(resource_type, rid)
    headers = {"ETag": result.stored.etag} if result else {}
    if result and result.submission:
        headers["X-Submission-Id"] = result.submission
    return Response(status=204, headers=headers)
