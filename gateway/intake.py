"""MIS intake: vendor records → mapping → validation → one store transaction per record.

Each record of a request stands alone: a valid record is stored even when others
in the same array are refused, and nothing of a refused record is stored. Every
resource a record becomes is keyed by its business identifier (СНИЛС, ФРМО OID,
the MIS's own id) and written as a conditional update, so pushing the same record
again creates no duplicate, and an unchanged record no new version.

Problems are reported per record as an OperationOutcome whose issues carry both
the FHIR expression and the vendor's source location (`$.cards[1].postId`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from gateway.errors import GatewayError
from gateway.issues import Issue, has_errors, operation_outcome
from gateway.mapping import engine
from gateway.mapping.loader import Mapping
from gateway.resources import Entry, Resources
from gateway.validation.terminology import Terminology

MAX_RECORDS = 1000


@dataclass
class RecordResult:
    index: int
    status: str                                   # accepted | rejected
    resources: list[dict] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    def to_json(self) -> dict:
        body: dict = {"index": self.index, "status": self.status, "resources": self.resources}
        if self.issues:
            body["outcome"] = operation_outcome(self.issues)
        return body

    @property
    def unchanged(self) -> bool:
        return self.status == "accepted" and all(r["outcome"] == "unchanged"
                                                 for r in self.resources)


def ingest(mapping: Mapping, records: list, resources: Resources,
           books: Terminology) -> list[RecordResult]:
    return [ingest_one(mapping, record, index, resources, books)
            for index, record in enumerate(records)]


def ingest_one(mapping: Mapping, record, index: int, resources: Resources,
               books: Terminology) -> RecordResult:
    if not isinstance(record, dict):
        return RecordResult(index, "rejected", issues=[Issue(
            "structure", "Запись должна быть JSON-объектом.", "A record must be a JSON object.",
            locations=(f"$[{index}]",))])
    mapped = engine.apply(mapping, record, books)
    issues = list(mapped.issues)
    entries = []
    failed = [issue.expression for issue in mapped.issues if issue.expression]
    for position, item in enumerate(mapped.resources):
        checked, found = resources.check(item.resource, item.type)
        # An element whose mapping failed is missing: that is one problem, not two.
        issues += [_with_source(issue, item) for issue in found
                   if not (issue.code == "required" and _under(failed, issue.expression))]
        entries.append(_entry(position, item, checked))
    if has_errors(issues):
        return RecordResult(index, "rejected", issues=_unique(issues))
    try:
        results = resources.store_checked(entries)
    except GatewayError as error:
        return RecordResult(index, "rejected", issues=error.issues)
    written = [{"reference": f"{r.stored.resource_type}/{r.stored.id}",
                "outcome": r.outcome, "version": r.stored.version,
                **({"submission": r.submission} if r.submission else {})} for r in results]
    return RecordResult(index, "accepted", written, _unique(issues))


def _entry(position: int, item: engine.MappedResource, resource: dict) -> Entry:
    """A conditional update by the (normalised) business identifier, else a plain create."""
    key = engine.business_key(resource) if item.keyed else None
    if key:
        condition = "identifier=" + quote(f"{key[0]}|{key[1]}", safe="|:/")
        return Entry(position, "PUT", item.type, None, resource, item.full_url,
                     condition=condition)
    return Entry(position, "POST", item.type, None, resource, item.full_url)


def _under(expressions: list[str], parent: str | None) -> bool:
    return parent is not None and any(e == parent or e.startswith(parent + ".")
                                      or e.startswith(parent + "[") for e in expressions)


def _with_source(issue: Issue, item: engine.MappedResource) -> Issue:
    source = item.source_of(issue.expression)
    if source is None or source in issue.locations:
        return issue
    return Issue(issue.code, issue.text_ru, issue.diagnostics, issue.expression,
                 issue.severity, issue.locations + (source,))


def _unique(issues: list[Issue]) -> list[Issue]:
    """One issue per problem: departments repeat the parent's identifiers, for one."""
    return list(dict.fromkeys(issues))
