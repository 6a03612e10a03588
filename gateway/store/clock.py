"""The store's notion of time: naive UTC at millisecond precision, shown as FHIR instants."""
from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now in UTC, at the millisecond precision that meta.lastUpdated shows."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def instant(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds") + "+00:00"


def optional_instant(moment: datetime | None) -> str | None:
    return instant(moment) if moment else None
