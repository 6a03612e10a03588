"""The loop every background worker runs: rounds until stopped, idle when nothing is due.

Delivery, webhooks and bulk export each have a `round` that does what is due now
and says whether there was anything; this runs it for as long as the process
lives. A round that fails is logged and the loop goes on: one bad record must
not stop the gateway's background work.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_rounds(one_round: Callable[[], object], stop: threading.Event, idle: float,
               what: str) -> None:
    """Call `one_round()` until `stop` is set; wait `idle` seconds after an empty one."""
    while not stop.is_set():
        try:
            busy = bool(one_round())
        except Exception:                          # a bad round must not end the loop
            log.exception("%s round failed", what)
            busy = False
        if not busy:
            stop.wait(idle)
