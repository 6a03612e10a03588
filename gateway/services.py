"""The services one app holds: settings, database, store, НСИ books, write path.

Kept in `app.extensions["gateway"]` (never on module globals) and reached from a
request through `services()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from flask import current_app
from sqlalchemy.engine import Engine

from gateway.mapping.loader import Mapping
from gateway.resources import Resources
from gateway.search import cursor
from gateway.settings import Settings
from gateway.store.repository import Store
from gateway.validation import terminology
from gateway.validation.context import ValidationContext


@dataclass
class Services:
    settings: Settings
    engine: Engine
    store: Store
    books: terminology.Terminology
    mappings: dict[str, Mapping]

    def validation_context(self) -> ValidationContext:
        return ValidationContext(self.books,
                                 max_attachment_bytes=self.settings.max_attachment_bytes,
                                 oms_check_digit=self.settings.oms_check_digit)

    @cached_property
    def resources(self) -> Resources:
        return Resources(self.store, self.validation_context)

    @cached_property
    def search_secret(self) -> bytes:
        """The key that signs search cursors: configured, or kept in the data directory."""
        configured = self.settings.search_cursor_secret
        if configured:
            return configured.encode("utf-8")
        return cursor.load_secret(self.settings.data_path / "search-cursor.key")


def services() -> Services:
    return current_app.extensions["gateway"]


def load_terminology(settings: Settings) -> terminology.Terminology:
    """Shipped НСИ subsets, overlaid by full books loaded with `gateway nsi load`."""
    books = terminology.load_shipped()
    for book in terminology.load_saved(settings.data_path / "nsi"):
        books.add(book)
    return books
