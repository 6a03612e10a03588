"""Every kind of failure the gateway reports, and the one place it becomes a response.

Stages raise; they never build error responses. The Flask layer registers one
handler for `GatewayError` that renders `outcome()` in the client's format with
`status`. The tree:

    GatewayError                      (500 processing)
    ├── MalformedBody                 400  body is not JSON/XML we can read
    ├── InvalidRequest                400  bad URL, parameter or header
    ├── Unauthorized                  401  no or unknown bearer token
    ├── Forbidden                     403  token lacks the role
    ├── NotFound                      404  no such resource, version or route
    ├── MethodNotAllowed              405
    ├── NotAcceptable                 406  Accept names no format we produce
    ├── Conflict                      409  e.g. id in body differs from the URL
    ├── Gone                          410  the resource was deleted
    ├── PreconditionFailed            412  If-Match names a stale version, or a
    │                                      conditional request matched several
    ├── PayloadTooLarge               413
    ├── UnsupportedMediaType          415  Content-Type we cannot read
    ├── ValidationFailed              422  the resource breaks FHIR or Russian rules
    ├── TooManyRequests               429  rate limit or failed-login throttle; Retry-After
    └── Unavailable                   503  database not reachable
"""
from __future__ import annotations

from gateway.issues import Issue, operation_outcome


class GatewayError(Exception):
    status = 500
    code = "processing"

    def __init__(self, text_ru: str = "Внутренняя ошибка шлюза.",
                 text_en: str = "Internal gateway error.", *, expression: str | None = None,
                 issues: list[Issue] | None = None, headers: dict | None = None):
        super().__init__(text_en)
        self.issues = issues or [Issue(self.code, text_ru, text_en, expression)]
        self.headers = headers or {}

    def outcome(self) -> dict:
        return operation_outcome(self.issues)


class MalformedBody(GatewayError):
    status, code = 400, "structure"


class InvalidRequest(GatewayError):
    status, code = 400, "invalid"


class Unauthorized(GatewayError):
    status, code = 401, "login"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class NotFound(GatewayError):
    status, code = 404, "not-found"


class MethodNotAllowed(GatewayError):
    status, code = 405, "not-supported"


class NotAcceptable(GatewayError):
    status, code = 406, "not-supported"


class Conflict(GatewayError):
    status, code = 409, "conflict"


class Gone(GatewayError):
    status, code = 410, "deleted"


class PreconditionFailed(GatewayError):
    status, code = 412, "conflict"


class PayloadTooLarge(GatewayError):
    status, code = 413, "too-long"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "not-supported"


class ValidationFailed(GatewayError):
    status, code = 422, "invalid"

    def __init__(self, issues: list[Issue]):
        super().__init__(issues=issues)


class TooManyRequests(GatewayError):
    """429: the client's rate limit, or its address's failed logins; carries Retry-After."""

    status, code = 429, "throttled"

    def __init__(self, text_ru: str, text_en: str, retry_after: int):
        super().__init__(text_ru, text_en, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = max(1, int(retry_after))


class Unavailable(GatewayError):
    status, code = 503, "transient"
