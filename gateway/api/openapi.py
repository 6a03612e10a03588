"""`GET /api/v1/openapi.json`: the OpenAPI document of the gateway's non-FHIR endpoints.

The document is written by hand in `openapi.yaml` next to this module (the FHIR API
is described by its CapabilityStatement, `GET /fhir/metadata`). It is public, like
the CapabilityStatement. tests/test_openapi.py keeps it and the routes in step and
fuzzes every operation it describes.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import yaml
from flask import Blueprint, Response

blueprint = Blueprint("openapi", __name__)
SOURCE = Path(__file__).with_name("openapi.yaml")


def document() -> dict:
    """The document as a dictionary (a fresh copy: callers may change it)."""
    return json.loads(_rendered())


@cache
def _rendered() -> bytes:
    with SOURCE.open(encoding="utf-8") as source:
        return json.dumps(yaml.safe_load(source), ensure_ascii=False).encode("utf-8")


@blueprint.get("/api/v1/openapi.json")
def openapi_json():
    return Response(_rendered(), mimetype="application/json",
                    headers={"Cache-Control": "public, max-age=300"})
