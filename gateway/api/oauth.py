"""OAuth 2.0 for backend services (SMART Backend Services): token endpoint, discovery, scopes.

    POST /auth/token                          client_credentials + private_key_jwt (public)
    GET  /.well-known/smart-configuration     SMART discovery (public; also under /fhir,
                                              where SMART clients look: [base]/.well-known)

The checks themselves are in gateway.oauth. Token errors are RFC 6749 JSON with
`Cache-Control: no-store`, never OperationOutcomes.

Scope enforcement. `enforce_scopes` runs after `auth.require_token` on every request.
A request with a static token is not scope-limited; one with an OAuth token
(`g.client.granted` set) needs these letters (`*` = every type the gateway serves,
satisfied by `system/*.x` or by `x` on each type; an unknown type needs nothing,
the view answers 404):

    FHIR (/fhir)
      read, vread, instance _history           r on the type
      type _history                            rs on the type (SMART lists it under s)
      system _history                          rs on *
      search GET Type, POST Type/_search       s on the type; _include=T:p[:Target] r on
                                               the targets (on * if p has none);
                                               _revinclude=T:p s on T
      create POST Type                         c; cs with If-None-Exist (it searches and
                                               may return the match)
      update PUT Type/id                       u (also when it creates, as FHIR's update)
      conditional update PUT Type?…            us
      delete                                   d
      transaction/batch POST /fhir             each entry as above, on the type of its
                                               request.url and of its resource; checked by
                                               `check_bundle`, called from the view once it
                                               has read the body (the hook cannot read
                                               it: the view reads the raw stream); one
                                               entry lacking a scope refuses the whole
                                               Bundle, batch too
      $export (system)                         rs on each type of _type, else on *
      Type/$export                             rs on the type
      $export-file/{job}/{Type-n.ndjson}       rs on that type ($export-status needs
                                               nothing more: the job is the client's)
    /api/v1
      ingest/{mapping}                         cu on every type the mapping writes
      export/legacy/{register}                 rs on the register's types
      submissions, webhooks                    r on *
      admin/outbox (GET; POST)                 r on *; u on * (and the admin role)
    any other endpoint                         refused, so a new endpoint must be added
                                               here; this keeps the admin client API
                                               (/api/v1/admin/clients) closed to OAuth
                                               tokens: one must not mint itself an
                                               unscoped static token

A missing scope is 403 (gateway.errors.Forbidden) naming it, with
`WWW-Authenticate: Bearer error="insufficient_scope"` (RFC 6750).
"""
from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, g, jsonify, request

from gateway import oauth
from gateway.errors import Forbidden
from gateway.oauth import ALL, Need, OAuthError
from gateway.registry import RESOURCE_TYPES
from gateway.services import services
from gateway.store.clock import utcnow

blueprint = Blueprint("oauth", __name__)
TOKEN_PATH = "/auth/token"
MAX_ASSERTION = 16384
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
LEGACY_TYPES = {"frmo": ("Organization",),
                "frmr": ("Practitioner", "PractitionerRole", "Organization"),
                "elmk": ("Patient", "Immunization", "DiagnosticReport", "Observation")}


# --- the token endpoint -----------------------------------------------------------------

@blueprint.post(TOKEN_PATH)
def token():
    form = _form()
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required (client_credentials).")
    if grant_type != oauth.GRANT_TYPE:
        raise OAuthError("unsupported_grant_type", "Only grant_type=client_credentials is "
                                                   "supported.")
    if form.get("client_assertion_type") != oauth.ASSERTION_TYPE or \
            not form.get("client_assertion"):
        raise OAuthError("invalid_client", "Authenticate with a signed JWT: "
                                           f"client_assertion_type={oauth.ASSERTION_TYPE} "
                                           "and client_assertion.")
    assertion = form["client_assertion"]
    if len(assertion) > MAX_ASSERTION:
        raise OAuthError("invalid_request", "client_assertion is too long.")
    found = services()
    now = utcnow()
    verified = oauth.verify_assertion(found.engine, assertion, token_endpoint(), now=now,
                                      max_seconds=found.settings.oauth_assertion_max_seconds)
    if form.get("client_id") not in (None, str(verified.client.pk)):
        raise OAuthError("invalid_client", "client_id differs from the assertion's iss.")
    scope = oauth.grant(form.get("scope", ""), verified.client.scopes)
    response = jsonify(oauth.issue(found.engine, verified.client, scope,
                                   seconds=found.settings.oauth_token_seconds, now=now,
                                   assertion=verified))
    response.headers.update(NO_STORE)
    return response


def _form() -> dict[str, str]:
    if request.mimetype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "Send the parameters as "
                                            "application/x-www-form-urlencoded.")
    repeated = sorted(name for name, values in request.form.lists() if len(values) > 1)
    if repeated:        # RFC 6749 §3.2: a parameter must not be sent more than once
        raise OAuthError("invalid_request", f"Repeated parameter: {', '.join(repeated)}.")
    return request.form.to_dict()


@blueprint.errorhandler(OAuthError)
def oauth_error(error: OAuthError) -> Response:
    response = jsonify(error.to_json())
    response.status_code = error.status
    response.headers.update(NO_STORE)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="gateway", error="invalid_client"'
    return response


def server_root() -> str:
    """The gateway's public root: `base_url` without its `/fhir`, else the request's."""
    configured = services().settings.base_url.rstrip("/")
    return configured.removesuffix("/fhir") if configured else request.url_root.rstrip("/")


def token_endpoint() -> str:
    """The token endpoint URL, which is also the audience every assertion must name."""
    return server_root() + TOKEN_PATH


# --- discovery ------------------------------------------------------------------------

@blueprint.get("/.well-known/smart-configuration")
@blueprint.get("/fhir/.well-known/smart-configuration")
def smart_configuration():
    response = jsonify({
        "token_endpoint": token_endpoint(),
        "grant_types_supported": [oauth.GRANT_TYPE],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(oauth.ALGORITHMS),
        "scopes_supported": ["system/*.cruds", "system/*.rs",
                             *(f"system/{t}.cruds" for t in RESOURCE_TYPES),
                             *(f"system/{t}.rs" for t in RESOURCE_TYPES)],
        "capabilities": ["client-confidential-asymmetric"],
    })
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# --- scope enforcement ------------------------------------------------------------------

def enforce_scopes() -> None:
    """Refuse (403) a request whose OAuth token lacks the scope it needs (table above)."""
    client = g.get("client")
    if client is None or client.granted is None or request.endpoint is None:
        return
    rule = RULES.get(request.endpoint)
    if rule is None:
        raise Forbidden("Этот адрес недоступен по токену OAuth: используйте постоянный токен.",
                        f"{request.endpoint} is not available with an OAuth token.",
                        headers=_insufficient(""))
    _require(client.granted, rule(request.view_args or {}))


def check_bundle(bundle: dict) -> None:
    """The transaction/batch check, called by the view once it has read the Bundle."""
    client = g.get("client")
    if client is not None and client.granted is not None:
        _require(client.granted, oauth.bundle_needs(bundle))


def _require(granted: str, needs: list[Need]) -> None:
    lacking = oauth.missing(granted, needs)
    if not lacking:
        return
    names = ", ".join(lacking)
    plural = len(lacking) > 1
    raise Forbidden(f"{'Нужны области доступа' if plural else 'Нужна область доступа'} "
                    f"{names}; токену выданы: {granted}.",
                    f"{'Scopes' if plural else 'Scope'} {names} "
                    f"{'are' if plural else 'is'} required; the token has: {granted}.",
                    headers=_insufficient(" ".join(lacking)))


def _insufficient(scope: str) -> dict:
    value = 'Bearer realm="gateway", error="insufficient_scope"'
    return {"WWW-Authenticate": value + (f', scope="{scope}"' if scope else "")}


def _typed(letters: str) -> Callable[[dict], list[Need]]:
    def needs(view_args: dict) -> list[Need]:
        rtype = view_args.get("resource_type")
        return [(rtype, letters)] if rtype in RESOURCE_TYPES else []
    return needs


def _everything(letters: str) -> Callable[[dict], list[Need]]:
    return lambda view_args: [(ALL, letters)]


def _search(view_args: dict) -> list[Need]:
    rtype = view_args.get("resource_type")
    if rtype not in RESOURCE_TYPES:
        return []
    pairs = list(request.args.items(multi=True))
    if request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        pairs += list(request.form.items(multi=True))
    return oauth.search_needs(rtype, pairs)


def _create(view_args: dict) -> list[Need]:
    return _typed("cs" if request.headers.get("If-None-Exist") else "c")(view_args)


def _export_system(view_args: dict) -> list[Need]:
    named = [t.strip() for v in request.args.getlist("_type") for t in v.split(",")]
    known = [t for t in named if t in RESOURCE_TYPES]
    return [(t, "rs") for t in known] if known else [(ALL, "rs")]


def _export_file(view_args: dict) -> list[Need]:
    rtype = str(view_args.get("name", "")).split("-")[0].split(".")[0]
    return [(rtype, "rs")] if rtype in RESOURCE_TYPES else []


def _ingest(view_args: dict) -> list[Need]:
    mapping = services().mappings.get(view_args.get("name", ""))
    return [(r.type, "cu") for r in mapping.resources] if mapping is not None else []


def _legacy(view_args: dict) -> list[Need]:
    return [(t, "rs") for t in LEGACY_TYPES.get(view_args.get("register", ""), ())]


def _nothing(view_args: dict) -> list[Need]:
    return []


RULES: dict[str, Callable[[dict], list[Need]]] = {
    "fhir.read": _typed("r"), "fhir.vread": _typed("r"),
    "fhir.history_instance": _typed("r"), "fhir.history_type": _typed("rs"),
    "fhir.history_system": _everything("rs"),
    "fhir.search_type": _search, "fhir.search_form": _search,
    "fhir.create": _create, "fhir.update": _typed("u"),
    "fhir.conditional_update": _typed("us"), "fhir.delete": _typed("d"),
    "fhir.bundle": _nothing,                         # check_bundle, from the view
    "bulk.export_system": _export_system, "bulk.export_type": _typed("rs"),
    "bulk.status": _nothing, "bulk.cancel": _nothing, "bulk.download": _export_file,
    "intake.ingest": _ingest,
    "legacy_export.legacy_export": _legacy,
    "delivery.submission": _everything("r"), "delivery.submission_list": _everything("r"),
    "delivery.webhook_register": _everything("r"), "delivery.webhook_list": _everything("r"),
    "delivery.webhook_delete": _everything("r"),
    "delivery.webhook_deliveries": _everything("r"),
    "delivery.outbox_list": _everything("r"), "delivery.outbox_summary": _everything("r"),
    "delivery.outbox_retry": _everything("u"),
    "delivery.outbox_requeue_dead": _everything("u"),
}
