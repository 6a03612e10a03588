"""The searchset Bundle of one page, and the shapes `_summary` and `_elements` ask for (pure).

Entries carry `fullUrl` and `search.mode`: `match` for what the search found,
`include` for what `_include`/`_revinclude` brought, and one `outcome` entry (an
OperationOutcome) when something was ignored or limited: an unknown parameter
under `Prefer: handling=lenient`, a `_count` above the maximum, the include limit.

`_summary` and `_elements` shape the matches only; included resources come whole.
A shaped resource keeps `id`, `meta` and every mandatory element (so it stays
valid FHIR, in JSON and against the XML schema) and is tagged SUBSETTED.
"""
from __future__ import annotations

from gateway import fhir
from gateway.issues import Issue
from gateway.search.params import SearchRequest
from gateway.search.query import Match, Page

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "Resource encoded in summary mode"}


def searchset(request: SearchRequest, page: Page, base: str,
              links: list[tuple[str, str]]) -> dict:
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        bundle["total"] = page.total
    if links:
        bundle["link"] = [{"relation": relation, "url": url} for relation, url in links]
    entries = [_entry(base, m, shape(m.content, request), "match") for m in page.matches]
    entries += [_entry(base, m, m.content, "include") for m in page.included]
    issues: list[Issue] = [*request.warnings, *page.warnings]
    if issues:
        entries.append({"resource": {"resourceType": "OperationOutcome",
                                     "issue": [i.to_fhir() for i in issues]},
                        "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle


def _entry(base: str, match: Match, resource: dict | None, mode: str) -> dict:
    return {"fullUrl": f"{base}/{match.resource_type}/{match.id}", "resource": resource,
            "search": {"mode": mode}}


def shape(resource: dict | None, request: SearchRequest) -> dict | None:
    """The resource as `_summary` or `_elements` asks, or unchanged."""
    if resource is None or not (request.elements or request.summary):
        return resource
    info = fhir.elements(resource["resourceType"])
    if info is None:
        return resource
    if request.summary == "data":
        keep = set(info.names) - {"text"}
    elif request.summary == "text":
        keep = {"id", "meta", "text", *info.required}
    elif request.summary == "true":
        keep = {*info.summary, *info.required}
    else:
        keep = {"id", "meta", *request.elements, *info.required}

    def kept(key: str) -> bool:
        name = key[1:] if key.startswith("_") else key      # _status: status's extensions
        return name in keep or info.choice.get(name) in keep

    shaped = {key: value for key, value in resource.items()
              if key == "resourceType" or kept(key)}
    meta = dict(shaped.get("meta") or {})
    tags = [tag for tag in meta.get("tag") or [] if tag.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    shaped["meta"] = meta
    return {"resourceType": shaped.pop("resourceType"), **shaped}
