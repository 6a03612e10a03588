"""Content negotiation: which format a request is in, and which the reply should be.

FHIR JSON and XML, each under its FHIR and its generic media type; `_format`
overrides Accept. An Accept we cannot satisfy is 406 and a Content-Type we cannot
read is 415, both with an OperationOutcome (in JSON, the one format every client
can read).
"""
from __future__ import annotations

from collections.abc import Iterable

from flask import Request, Response
from werkzeug.exceptions import RequestEntityTooLarge

from gateway import fhir
from gateway.errors import MalformedBody, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from gateway.store import tenancy

JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir")
NDJSON_TYPES = ("application/fhir+ndjson", "application/ndjson")
FORMAT_ALIASES = {"json": "application/fhir+json", "xml": "application/fhir+xml",
                  "ndjson": "application/fhir+ndjson", "html": None, "text/html": None}
PRODUCED = ("application/fhir+json", "application/json", "application/fhir+xml",
            "application/xml", "text/xml")


def response_type(request: Request, given_format: str | None = None,
                  ndjson: bool = False) -> str:
    """The media type to answer in: `_format`, else the best of Accept, else FHIR JSON.

    `given_format` is a `_format` found elsewhere than the query (a search form body);
    `ndjson`: the endpoint can also answer in NDJSON (search).
    """
    produced = PRODUCED + NDJSON_TYPES if ndjson else PRODUCED
    given = given_format or request.args.get("_format")
    if given:
        wanted = FORMAT_ALIASES.get(given, given.split(";")[0].strip())
        if wanted in produced:
            return wanted
        raise NotAcceptable(f"Формат «{given[:100]}» не поддерживается: "
                            f"используйте json{', ndjson' if ndjson else ''} или xml.",
                            f"_format {given[:100]!r} is not supported.")
    accept = request.accept_mimetypes
    if not accept or accept.best in ("*/*", "application/*"):
        return "application/fhir+json"
    best = accept.best_match(produced)
    if best is None:
        raise NotAcceptable("Запрошенный формат (Accept) не поддерживается: шлюз отвечает "
                            "в application/fhir+json или application/fhir+xml.",
                            f"Cannot produce any of Accept: {request.headers.get('Accept')}.")
    return best


def prefers_lenient(request: Request) -> bool:
    """`Prefer: handling=lenient` (RFC 7240): ignore unknown search parameters."""
    preferences = request.headers.get("Prefer", "").replace(";", ",").split(",")
    return any(p.strip().lower().replace(" ", "") == "handling=lenient" for p in preferences)


def is_xml(media_type: str) -> bool:
    return media_type in XML_TYPES


def is_ndjson(media_type: str) -> bool:
    return media_type in NDJSON_TYPES


def read_resource(request: Request, max_body: int, max_depth: int, *, max_elements: int = 0,
                  max_xml_depth: int = 0) -> dict:
    """The request body as a resource dictionary, whichever format it came in."""
    content_type = (request.mimetype or "").lower()
    if request.content_length is not None and request.content_length > max_body:
        raise _too_large(max_body)
    if content_type in JSON_TYPES:
        return fhir.parse_json(_body(request, max_body), max_depth, max_elements)
    if content_type in XML_TYPES:
        return fhir.parse_xml(_body(request, max_body), max_xml_depth)
    raise UnsupportedMediaType(
        f"Тип содержимого «{content_type or 'не указан'}» не поддерживается: отправляйте "
        "application/fhir+json или application/fhir+xml.",
        f"Unsupported Content-Type {content_type or '(none)'}; "
        "send application/fhir+json or application/fhir+xml.")


def _body(request: Request, max_body: int) -> bytes:
    try:
        body = request.stream.read(max_body + 1)
        if len(body) == max_body and request.content_length is None:
            # A chunked body stops at the limit without a word (werkzeug's LimitedStream);
            # reading past it raises if anything is left.
            body += request.stream.read(1)
    except RequestEntityTooLarge:
        raise _too_large(max_body) from None
    if len(body) > max_body:
        raise _too_large(max_body)
    if not body.strip():
        raise MalformedBody("Пустое тело запроса.", "Empty request body.")
    return body


def _too_large(max_body: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Тело запроса больше допустимого ({max_body // (1024 * 1024)} МБ): разделите данные "
        "на несколько запросов.", f"Request body exceeds {max_body} bytes.")


def render(resource: dict, media_type: str, status: int = 200,
           headers: dict | None = None) -> Response:
    body = fhir.to_xml_bytes(resource) if is_xml(media_type) else fhir.to_json_bytes(resource)
    return Response(body, status=status, headers=headers or {},
                    content_type=f"{media_type}; charset=utf-8")


def render_bundle(bundle: dict, media_type: str) -> Response:
    """A Bundle streamed entry by entry (see `gateway.fhir.bundle_chunks`)."""
    return Response(tenancy.carrying(fhir.bundle_chunks(bundle, is_xml(media_type))),
                    content_type=f"{media_type}; charset=utf-8")


def render_lines(resources: Iterable[dict], media_type: str) -> Response:
    """NDJSON: one resource per line, written as the iterable yields them."""
    return Response(tenancy.carrying(fhir.to_json_bytes(resource) + b"\n"
                                     for resource in resources),
                    content_type=media_type)
