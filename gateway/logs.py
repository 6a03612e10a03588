"""Log lines: one JSON object per line (or plain text), personal data masked, request id on each.

`configure(log_format, level)` puts one handler on the root logger (replacing the one a
previous call made, so creating several apps in one process never doubles lines). Every
line carries what is known of the request it was written in — `request_id`, `client`
(the client's pk), `method`, `path` — put there by `RequestContextFilter` from the
context variable the web layer fills (`bind`, `clear`: `gateway.api.protection`; this
module stays free of Flask); the access line (`gateway.access`) adds `status` and
`duration_ms`. The message, the path and any exception text go through
`gateway.masking.mask_text`, so a СНИЛС in an error message or a name in a search URL
never reaches the log as it was.
"""
from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

from gateway.masking import mask_text

HANDLER_NAME = "gateway"
#: attributes of a record that become fields of the JSON line, in this order
CONTEXT_FIELDS = ("request_id", "client", "method", "path", "status", "duration_ms",
                  "remote_addr")


#: the fields of the request being served by this thread (or task); None outside one
_request: ContextVar[dict | None] = ContextVar("gateway_request", default=None)


def bind(**fields) -> None:
    """Start (request_id=...) or add to (client=...) the current request's log fields."""
    current = _request.get()
    _request.set({**(current or {}), **fields} if "request_id" not in fields else fields)


def clear() -> None:
    """The request is over: later lines of this thread belong to no request."""
    _request.set(None)


def current() -> dict:
    return dict(_request.get() or {})


class RequestContextFilter(logging.Filter):
    """Adds the current request's id, client, method and masked path to a record.

    A handler's filters run in the thread that logs, so the context variable is that of
    the request being served; outside a request nothing is added. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_request.get() or {}).items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_text(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = mask_text(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = mask_text(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = mask_text(record.exc_text)
        if record.stack_info:
            line["stack"] = mask_text(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, masked like the JSON ones, with the request id."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record = logging.makeLogRecord({**record.__dict__, "request_id": "-"})
        return mask_text(super().format(record))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is written (as logging's last
    resort does), so a replaced stderr (test capture, a daemon's redirect) is followed."""

    def __init__(self) -> None:
        super().__init__()

    @property                                   # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def make_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with the formatter and the context filter."""
    if log_format not in ("json", "text"):
        raise ValueError(f"log_format must be json or text, not {log_format!r}")
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestContextFilter())
    return handler


def configure(log_format: str, level: str | int) -> logging.Handler:
    """Install the gateway's handler on the root logger, replacing an earlier one."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    handler = make_handler(log_format)
    handler.set_name(HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
