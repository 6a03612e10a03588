"""The admin API: API clients (`/api/v1/admin/clients`), for the admin role only.

The same operations as `gateway clients ...`: list, create (the token is in the
answer, the only time it exists), read, revoke, rotate the token, register the
public keys of OAuth client assertions. Every call is audited like any other.
"""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from gateway.api.auth import require_admin
from gateway.errors import InvalidRequest, MalformedBody, NotFound
from gateway.services import services
from gateway.store import clients

blueprint = Blueprint("admin", __name__)
FIELDS = {"name", "role", "organizations", "region", "access", "scopes", "jwks"}
MAX_ID = 2**63 - 1          # the largest key a database integer column holds


@blueprint.before_request
def admins_only() -> None:
    require_admin()


@blueprint.get("/clients")
def client_list():
    return jsonify(clients=clients.list_clients(services().engine))


@blueprint.post("/clients")
def client_create():
    body = _json_object()
    unknown = set(body) - FIELDS
    if unknown:
        raise InvalidRequest(f"Неизвестные поля: {', '.join(sorted(unknown))}.",
                             f"Unknown fields: {', '.join(sorted(unknown))}.")
    name, role = body.get("name"), body.get("role")
    if not isinstance(name, str) or not name.strip() or len(name) > 200 \
            or not name.isprintable():
        raise InvalidRequest("Поле name обязательно: строка до 200 печатных символов.",
                             "name is required: at most 200 printable characters.",
                             expression="name")
    organizations = body.get("organizations") or []
    if not isinstance(organizations, list) or not all(isinstance(o, str) for o in organizations):
        raise InvalidRequest("organizations — список OID организаций ФРМО.",
                             "organizations is a list of ФРМО OIDs.", expression="organizations")
    strings = {k: body.get(k) for k in ("role", "region", "access", "scopes")}
    for key, value in strings.items():
        if value is not None and (not isinstance(value, str) or not value.isprintable()):
            raise InvalidRequest(f"Поле {key} — строка печатных символов.",
                                 f"{key} must be a string of printable characters.",
                                 expression=key)
    jwks = _jwks(body.get("jwks"))
    try:
        client, token = clients.create_client(
            services().engine, name.strip(), role or "", organizations, strings["region"],
            strings["access"] or "read-write", strings["scopes"], jwks)
    except clients.ClientError as error:
        raise InvalidRequest(f"Клиент не создан: {error}.",
                             f"Client not created: {error}.") from None
    described = clients.describe_pk(services().engine, client.pk)
    return jsonify(client=described, token=token), 201


@blueprint.get("/clients/<int:pk>")
def client_read(pk: int):
    return jsonify(client=_existing(pk))


@blueprint.post("/clients/<int:pk>/revoke")
def client_revoke(pk: int):
    _existing(pk)
    clients.revoke(services().engine, pk)
    return jsonify(client=_existing(pk))


@blueprint.post("/clients/<int:pk>/rotate")
def client_rotate(pk: int):
    _existing(pk)
    token = clients.rotate(services().engine, pk)
    if token is None:
        raise InvalidRequest("Отозванному клиенту новый токен не выдаётся.",
                             "A revoked client gets no new token.")
    return jsonify(client=_existing(pk), token=token)


@blueprint.put("/clients/<int:pk>/jwks")
def client_jwks(pk: int):
    _existing(pk)
    clients.set_jwks(services().engine, pk, _jwks(_json_object()))
    return jsonify(client=_existing(pk))


def _existing(pk: int) -> dict:
    found = clients.describe_pk(services().engine, pk) if pk <= MAX_ID else None
    if found is None:
        raise NotFound(f"Клиент {pk} не найден.", f"Client {pk} not found.")
    return found


def _json_object() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise MalformedBody("Тело запроса должно быть JSON-объектом.",
                            "The request body must be a JSON object.")
    return body


def _jwks(value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("keys"), list) or not all(
            isinstance(k, dict) and isinstance(k.get("kty"), str) for k in value["keys"]):
        raise InvalidRequest("jwks — набор открытых ключей JWK: {\"keys\": [...]}.",
                             "jwks must be a JWK Set: {\"keys\": [...]}.", expression="jwks")
    if any("d" in k for k in value["keys"]):
        raise InvalidRequest("В jwks передан закрытый ключ: нужны только открытые.",
                             "jwks holds a private key; only public keys belong there.",
                             expression="jwks")
    return value
