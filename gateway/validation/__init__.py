"""Validation: structure, Russian rules, terminology, attachments — all at once.

`validate` runs every stage and returns the resource as it should be stored
(identifiers normalised) together with every problem found, so a clinic sees all
its mistakes in one OperationOutcome rather than one per attempt. Structure comes
first: when the resource does not even parse as FHIR, the other stages would only
repeat the same complaint, so they are skipped.

This package is pure: no Flask, no database, no clock (see ValidationContext).
"""
from __future__ import annotations

from gateway import fhir
from gateway.issues import Issue
from gateway.validation import attachments, russian
from gateway.validation.context import ValidationContext
from gateway.validation.terminology import check_coding

__all__ = ["ValidationContext", "validate"]


def validate(resource: dict, ctx: ValidationContext) -> tuple[dict, list[Issue]]:
    issues = fhir.check_structure(resource)
    if any(i.severity == "error" for i in issues):
        return resource, issues
    resource, russian_issues = russian.check(resource, ctx)
    issues += russian_issues
    issues += check_codings(resource, ctx)
    issues += attachments.check(resource, ctx.max_attachment_bytes)
    return resource, issues


def check_codings(resource: dict, ctx: ValidationContext) -> list[Issue]:
    issues = []
    for path, node in russian.walk_objects(resource, resource.get("resourceType", "")):
        # Codings, and Quantities whose unit comes from a book (НСИ 1358)
        if isinstance(node.get("system"), str) and "code" in node:
            issues += check_coding(ctx.terminology, node, path)
    return issues
