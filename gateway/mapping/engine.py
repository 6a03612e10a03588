"""Applying a mapping to one vendor record: FHIR resources plus where each value came from.

`apply(mapping, record, books)` returns the resources the record becomes, each with
the source location of every element it wrote (`PractitionerRole.code[0].coding[0]`
← `$.cards[1].postId`), and the problems met on the way (a missing required field,
a date in the wrong format, a value outside an enum). `source_of` later attaches
the source location to a validation issue about a FHIR element, so a vendor can
fix their payload from our error alone.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from gateway.issues import Issue
from gateway.mapping import paths
from gateway.mapping.loader import Element, Mapping, ResourceMap
from gateway.mapping.transforms import SUBFIELDS, TRANSFORMS, TransformError
from gateway.validation.terminology import Terminology


@dataclass
class MappedResource:
    name: str
    resource: dict
    full_url: str
    keyed: bool                                       # written by its business identifier
    sources: dict[str, str] = field(default_factory=dict)   # FHIR path → source location

    @property
    def type(self) -> str:
        return self.resource["resourceType"]

    def source_of(self, expression: str | None) -> str | None:
        """The source location of the closest mapped element at or above `expression`."""
        if not expression:
            return None
        best = None
        for target, source in self.sources.items():
            if (expression == target or expression.startswith(target + ".")
                    or expression.startswith(target + "[")) and \
                    (best is None or len(target) > len(best[0])):
                best = (target, source)
        return best[1] if best else None


@dataclass
class MappedRecord:
    resources: list[MappedResource]
    issues: list[Issue]


@dataclass(frozen=True)
class _Scope:
    """Where a source path is read from: the record root and the current item."""

    root: object
    item: object
    location: str                                     # "$" or "$.cards[1]"

    def read(self, source: str):
        if source == ".":
            return self.item, self.location
        if source.startswith("$."):
            path_steps = paths.steps(source[2:])
            return paths.get(self.root, path_steps), paths.render("$", path_steps)
        path_steps = paths.steps(source)
        return paths.get(self.item, path_steps), paths.render(self.location, path_steps)


def apply(mapping: Mapping, record: dict, books: Terminology) -> MappedRecord:
    issues = _record_rules(mapping, record)
    root = _Scope(record, record, "$")
    full_urls = {r.name: f"urn:uuid:{uuid.uuid4()}" for r in mapping.resources
                 if r.each is None}
    mapped: list[MappedResource] = []
    for spec in mapping.resources:
        scopes, problem = _scopes(root, spec.each)
        issues += problem
        for scope in scopes:
            resource, found = _build(spec, scope, books, full_urls)
            mapped.append(resource)
            issues += found
    return MappedRecord(mapped, issues)


def _record_rules(mapping: Mapping, record: dict) -> list[Issue]:
    issues = []
    for name in mapping.require:
        value, location = _Scope(record, record, "$").read(name)
        if _empty(value):
            issues.append(Issue("required", "Обязательное поле не заполнено.",
                                f"Required field {location} is missing or empty.",
                                locations=(location,)))
    if mapping.consent:
        value, location = _Scope(record, record, "$").read(mapping.consent)
        if value is not True:
            issues.append(Issue(
                "business-rule",
                "Нет согласия на обработку персональных данных: без него запись не может "
                "быть передана (укажите true, получив согласие работника).",
                f"Consent to personal-data processing ({location}) must be true.",
                locations=(location,)))
    return issues


def _scopes(root: _Scope, each: str | None) -> tuple[list[_Scope], list[Issue]]:
    """One scope per item of the `each` array; a non-array there is a problem, not nothing."""
    if each is None:
        return [root], []
    items, location = root.read(each)
    if items is None:
        return [], []
    if not isinstance(items, list):
        return [], [_not_an_array(location)]
    return [_Scope(root.root, item, f"{location}[{i}]") for i, item in enumerate(items)], []


def _not_an_array(location: str) -> Issue:
    return Issue("structure", "Поле должно быть массивом (списком в квадратных скобках).",
                 f"{location} must be a JSON array.", locations=(location,))


def _build(spec: ResourceMap, scope: _Scope, books: Terminology,
           full_urls: dict[str, str]) -> tuple[MappedResource, list[Issue]]:
    draft: dict = {"resourceType": spec.type}
    written: list[tuple[list, str]] = []               # (target steps, source location)
    issues: list[Issue] = []
    for element in spec.elements:
        targets, problem = _element_scopes(element, scope)
        issues += problem
        for target, element_scope in targets:
            outcome = _evaluate(element, element_scope, books, full_urls)
            if outcome is None:
                continue
            value, location, error = outcome
            expression = f"{spec.type}.{target}"
            if error is not None:
                issues.append(Issue(error.code, error.text_ru, error.text_en, expression,
                                    locations=(location,) if location else ()))
                continue
            paths.set_path(draft, target, value)
            if location:
                written.append((paths.steps(target), location))
                for sub, field_name in _subfields(element):
                    written.append((paths.steps(f"{target}.{sub}"), f"{location}.{field_name}"))
    resource = paths.compact(draft)
    sources = {paths.render(spec.type, paths.compacted_steps(draft, target_steps)): location
               for target_steps, location in written}
    full_url = full_urls.get(spec.name) or f"urn:uuid:{uuid.uuid4()}"
    return MappedResource(spec.name, resource, full_url, spec.key == "identifier", sources), \
        issues


def _element_scopes(element: Element, scope: _Scope):
    if element.each is None:
        return [(element.target, scope)], []
    items, location = scope.read(element.each)
    if items is None:
        return [], []
    if not isinstance(items, list):
        return [], [_not_an_array(location)]
    return [(element.target.replace("[*]", f"[{i}]"),
             _Scope(scope.root, item, f"{location}[{i}]")) for i, item in enumerate(items)], []


def _evaluate(element: Element, scope: _Scope, books: Terminology, full_urls: dict):
    """(value, source location, error) for one element, or None to leave it out."""
    if element.when and not _holds(element.when, scope):
        return None
    if element.reference is not None:
        return {"reference": full_urls[element.reference]}, None, None
    if not element.source:
        return element.value, None, None
    read = [scope.read(source.path) for source in element.source]
    if all(_empty(value) for value, _ in read):
        return None
    location = ", ".join(loc for value, loc in read if not _empty(value)) \
        if len(read) > 1 else read[0][1]
    try:
        parts = [_transformed(value, source.steps, books)
                 for (value, _), source in zip(read, element.source, strict=True)
                 if not _empty(value)]
        value = parts[0] if len(read) == 1 else "|".join(str(part) for part in parts)
        value = _transformed(value, element.steps, books)
    except TransformError as error:
        return None, location, error
    if _empty(value):
        return None
    return value, location, None


def _transformed(value, steps, books: Terminology):
    for name, argument in steps:
        value = TRANSFORMS[name].run(value, argument, books)
    return value


def _subfields(element: Element) -> list[tuple[str, str]]:
    """Fields of an object-valued source that land in the target under other names."""
    names = {name for name, _ in element.steps}
    return [pair for name in names for pair in SUBFIELDS.get(name, ())]


def _holds(when: dict, scope: _Scope) -> bool:
    (test, argument), = when.items()
    if test == "present":
        return not _empty(scope.read(argument)[0])
    if test == "absent":
        return _empty(scope.read(argument)[0])
    source, expected = argument
    return scope.read(source)[0] == expected


def _empty(value) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value) or \
        (isinstance(value, str) and not value.strip())


def business_key(resource: dict) -> tuple[str, str] | None:
    """(system, value) of the first identifier: what a keyed resource is found by."""
    identifiers = resource.get("identifier") or []
    first = identifiers[0] if identifiers else None
    if not isinstance(first, dict) or not first.get("system") or not first.get("value"):
        return None
    return first["system"], first["value"]
