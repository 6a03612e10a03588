"""The hooks every request passes: request id, throttles, rate limit, access log.

`install(app)`, called in `create_app` before the authentication hook is registered,
registers the first two of these before-request hooks; `create_app` registers
`limit_client` right after authentication (Flask runs before-request hooks in the order
they were registered):

1. `assign_request_id` (put first, even before hooks registered earlier) —
   `g.request_id`: the client's `X-Request-Id` when it is a sane token (at most 64 of
   `A-Z a-z 0-9 . _ -`), else a new uuid4; echoed in the reply;
2. `throttle_address` — an address with `auth_failures_limit` failed authentications
   (401) within `auth_failures_window_seconds` gets 429 with Retry-After before its
   token is even looked at, until that window has passed;
3. (the bearer-token check, `gateway.api.auth.require_token`);
4. `limit_client` — the token bucket of the authenticated client (`g.client`); public
   endpoints (no client) are not limited per client;

and `finish` after every request: counts a 401 against the address, sets
`X-Request-Id`, writes one access line (`gateway.access`).

The limiters live in `app.extensions["gateway.protection"]` (`gateway.ratelimit`).
Limits on the body itself (size, JSON and XML shape, Bundle entries) are checked where
the body is read: `gateway.api.negotiation`, `gateway.fhir`.
"""
from __future__ import annotations

import logging
import math
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request

from gateway import logs, ratelimit
from gateway.errors import PayloadTooLarge, TooManyRequests
from gateway.masking import mask_url

EXTENSION = "gateway.protection"
REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUERY_CANCELED = "57014"          # PostgreSQL: statement_timeout or a cancel request

access_log = logging.getLogger("gateway.access")


def install(app: Flask) -> None:
    """The limiters, the hooks that run before authentication, and the after-request one."""
    settings = app.extensions["gateway"].settings
    app.extensions[EXTENSION] = ratelimit.from_settings(settings)
    # first of all, whatever was registered before: every later hook may log or fail
    app.before_request_funcs.setdefault(None, []).insert(0, assign_request_id)
    app.before_request(throttle_address)
    app.after_request(finish)
    app.teardown_request(_forget_request)


def _limiters() -> ratelimit.Limiters:
    return current_app.extensions[EXTENSION]


def request_id_from(header: str | None) -> str:
    """The client's request id if it is a sane token, else a new one."""
    if header and _SANE_ID.match(header):
        return header
    return str(uuid.uuid4())


def masked_path() -> str:
    """The request's path and query, percent-decoded for reading, personal data masked."""
    query = request.query_string.decode("utf-8", "replace")
    return mask_url(request.path + ("?" + query if query else ""))


def assign_request_id() -> None:
    g.request_started = time.perf_counter()
    g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    logs.bind(request_id=g.request_id, method=request.method, path=masked_path())


def _forget_request(_error: BaseException | None) -> None:
    logs.clear()


def _address() -> str:
    return request.remote_addr or "unknown"


def throttle_address() -> None:
    throttle = _limiters().auth_failures
    if throttle is None:
        return
    wait = throttle.blocked(_address())
    if wait > 0:
        raise TooManyRequests(
            "Слишком много неудачных попыток входа с этого адреса: повторите позже "
            f"(через {_seconds(wait)} с).",
            f"Too many failed authentications from this address; retry after "
            f"{_seconds(wait)} s.", _seconds(wait))


def limit_client() -> None:
    limiter, client = _limiters().rate, g.get("client")
    if client is not None:
        logs.bind(client=client.pk)
    if limiter is None or client is None:
        return
    wait = limiter.take(str(client.pk))
    if wait > 0:
        settings = current_app.extensions["gateway"].settings
        raise TooManyRequests(
            f"Превышен лимит запросов клиента ({settings.rate_limit_per_minute} в минуту): "
            f"повторите через {_seconds(wait)} с.",
            f"Rate limit of {settings.rate_limit_per_minute} requests a minute exceeded; "
            f"retry after {_seconds(wait)} s.", _seconds(wait))


def finish(response: Response) -> Response:
    if response.status_code == 401:
        throttle = _limiters().auth_failures
        if throttle is not None:
            throttle.failed(_address())
    request_id = g.get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    started = g.get("request_started")
    duration = round((time.perf_counter() - started) * 1000, 1) if started else None
    client = g.get("client")
    access_log.info("%s %s %s %s ms", request.method, masked_path(), response.status_code,
                    duration, extra={"status": response.status_code, "duration_ms": duration,
                                     "remote_addr": request.remote_addr,
                                     "client": getattr(client, "pk", None)})
    return response


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def check_bundle_entries(bundle: dict, limit: int) -> None:
    """A transaction or batch Bundle of more than `limit` entries is refused (413)."""
    entries = bundle.get("entry")
    if limit > 0 and isinstance(entries, list) and len(entries) > limit:
        raise PayloadTooLarge(
            f"В Bundle {len(entries)} записей (entry), допустимо не больше {limit}: "
            "разделите его на несколько.",
            f"Bundle has {len(entries)} entries; at most {limit} are accepted. Split it.",
            expression="Bundle.entry")
