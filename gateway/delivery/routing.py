"""Where a changed resource goes upstream, and what must reach the upstream first (pure).

ЕГИСЗ is several services: ФРМО registers medical organizations, ФРМР medical
workers and their posts, the medical-book service (ЭЛМК) patients' vaccinations,
exams and results. Each accepted change becomes one submission to one of them.

The upstream checks references against what it already registered, so order
matters: an Organization before a department or a PractitionerRole that points
at it, a Practitioner before his roles, a Patient before his records, an
Observation before the report that cites it. `dependencies` names those
resources; the worker sends a submission only when each of them is approved.
"""
from __future__ import annotations

from gateway.validation import systems

FRMO = "frmo"
FRMR = "frmr"
ELMK = "elmk"
DESTINATIONS = (FRMO, FRMR, ELMK)

_BY_TYPE = {
    "Practitioner": FRMR,
    "PractitionerRole": FRMR,
    "Patient": ELMK,
    "Immunization": ELMK,
    "DiagnosticReport": ELMK,
    "Observation": ELMK,
}

# The references whose targets must be registered upstream first: (path, target type).
_DEPENDENCY_PATHS = {
    "Organization": (("partOf", "Organization"),),
    "PractitionerRole": (("practitioner", "Practitioner"), ("organization", "Organization")),
    "Immunization": (("patient", "Patient"),),
    "DiagnosticReport": (("subject", "Patient"), ("result", "Observation")),
    "Observation": (("subject", "Patient"),),
}
SENT_TYPES = frozenset(_BY_TYPE) | {"Organization"}


def destination(resource_type: str, resource: dict | None) -> str | None:
    """The upstream service for a resource; None for what is not sent (Provenance).

    An Organization goes to ФРМО only when it carries a ФРМО OID: an employer in
    a medical-book record is not a medical organization and travels with the book.
    A deletion (no content) goes where the type usually goes.
    """
    if resource_type == "Organization":
        if resource is None:
            return FRMO
        return FRMO if frmo_oid(resource) else ELMK
    return _BY_TYPE.get(resource_type)


def frmo_oid(organization: dict) -> str | None:
    """The organization's own ФРМО OID (without `urn:oid:`), if it has one."""
    for identifier in organization.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == systems.FRMO \
                and isinstance(identifier.get("value"), str):
            return identifier["value"].removeprefix("urn:oid:")
    return None


def dependencies(resource_type: str, resource: dict | None) -> list[str]:
    """Every sent resource this one refers to and needs registered first.

    A literal reference gives `Type/id`; a logical one (an MIS names a clinic by
    its ФРМО OID) gives `Type?identifier=system|value`, resolved when it is time to
    send, since the clinic may reach the gateway only later.
    """
    if resource is None:
        return []
    found: list[str] = []
    for path, target_type in _DEPENDENCY_PATHS.get(resource_type, ()):
        for reference in _references(resource, path):
            target = _target(reference, target_type)
            if target and target.split("/")[0].split("?")[0] in SENT_TYPES \
                    and target not in found:
                found.append(target)
    return found


def logical(dependency: str) -> tuple[str, str, str] | None:
    """(type, system, value) of a logical dependency `Type?identifier=system|value`."""
    if "?identifier=" not in dependency:
        return None
    rtype, _, token = dependency.partition("?identifier=")
    system, _, value = token.partition("|")
    return rtype, system, value


def organization_of(resource_type: str, resource: dict | None, rid: str) -> str | None:
    """The organization a change belongs to (its Bundle is signed for it), as a target.

    A department belongs to its parent; a role, a vaccination or a report to the
    organization it names (`Organization/id`, or by identifier). Practitioners and
    patients name none themselves: the write path gives them the organization of
    the record they arrived with.
    """
    if resource_type == "Organization":
        parent = _target(resource.get("partOf") or {}, "Organization") if resource else None
        return parent if parent and parent.startswith("Organization") else f"Organization/{rid}"
    if resource is None:
        return None
    for reference in organization_references(resource_type, resource):
        target = _target(reference, "Organization")
        if target and target.startswith("Organization"):
            return target
    return None


def organization_references(resource_type: str, resource: dict) -> list[dict]:
    """The references by which a role or a record names the organization it belongs to.

    Practitioners among a record's performers are returned too: whoever reads them
    keeps the Organization ones (by type or by the target they resolve to).
    """
    candidates = {
        "PractitionerRole": [resource.get("organization")],
        "Immunization": [p.get("actor") for p in resource.get("performer") or []
                         if isinstance(p, dict)],
        "DiagnosticReport": resource.get("performer") or [],
        "Observation": resource.get("performer") or [],
    }.get(resource_type, [])
    return [reference for reference in candidates if isinstance(reference, dict)]


def _references(resource: dict, path: str) -> list[dict]:
    value = resource.get(path)
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, dict)]


def _target(reference: dict, target_type: str) -> str | None:
    """`Type/id` or `Type?identifier=system|value` of a Reference; None if neither."""
    literal = _local(reference.get("reference") if isinstance(reference.get("reference"), str)
                     else None)
    if literal:
        return literal
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
        return f"{reference.get('type') or target_type}?identifier=" \
               f"{identifier['system']}|{identifier['value']}"
    return None


def _local(reference: str | None) -> str | None:
    """`Type/id` of a relative reference; None for absolute, contained or empty ones."""
    if not reference or reference.startswith("#") or "://" in reference \
            or reference.startswith("urn:"):
        return None
    parts = reference.split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else None
