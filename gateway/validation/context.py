"""What the validation rules may know besides the resource itself (pure).

Rules never read settings, clocks or files: the caller hands them this context,
so tests can fix "today" and the loaded books.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from gateway.validation.terminology import Terminology


@dataclass(frozen=True)
class ValidationContext:
    terminology: Terminology
    today: date = field(default_factory=lambda: datetime.now(UTC).date())
    max_attachment_bytes: int = 5 * 1024 * 1024
    oms_check_digit: bool = False
