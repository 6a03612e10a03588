"""One problem found in a request, in the shape every stage reports it.

Validation, parsing, authentication and storage all describe what went wrong with
the same small value: a FHIR issue type, a Russian text for the clinic's staff, an
English diagnostic for the developer, and the FHIRPath of the offending element.
`gateway.errors` turns a list of them into one OperationOutcome, so no stage ever
builds OperationOutcome dictionaries by hand.

This module is pure: no Flask, no database.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    """A single OperationOutcome.issue.

    `code` is a FHIR IssueType (invalid, structure, required, value, code-invalid,
    too-long, not-found, security, processing, conflict, not-supported, ...).
    `locations` carries extra places the problem can be found under, for example
    the field of a vendor's own JSON a FHIR element was mapped from.
    """

    code: str
    text_ru: str
    diagnostics: str
    expression: str | None = None
    severity: str = "error"
    locations: tuple[str, ...] = field(default=())

    def at(self, expression: str) -> Issue:
        """The same issue, attached to another element."""
        return Issue(self.code, self.text_ru, self.diagnostics, expression,
                     self.severity, self.locations)

    def to_fhir(self) -> dict:
        issue: dict = {
            "severity": self.severity,
            "code": self.code,
            "details": {"text": self.text_ru},
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        if self.locations:
            issue["location"] = list(self.locations)
        return issue


def operation_outcome(issues: list[Issue]) -> dict:
    """An OperationOutcome resource holding the issues, or a reassuring one if empty."""
    if not issues:
        issues = [Issue("informational", "Ошибок не найдено.", "No problems found.",
                        severity="information")]
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity in ("error", "fatal") for i in issues)
