"""`POST /api/v1/ingest/{mapping}`: vendor JSON (one record or an array) or a CSV list."""
from __future__ import annotations

import csv

from flask import Blueprint, jsonify, request

from gateway import fhir, intake
from gateway.errors import InvalidRequest, MalformedBody, NotFound, UnsupportedMediaType
from gateway.mapping import csv_records
from gateway.services import services

blueprint = Blueprint("intake", __name__)


@blueprint.post("/ingest/<name>")
def ingest(name: str):
    gateway = services()
    mapping = gateway.mappings.get(name)
    if mapping is None:
        raise NotFound(f"Формат «{name}» не найден. Доступны: {', '.join(gateway.mappings)}.",
                       f"No mapping named {name!r}.")
    body = request.get_data(cache=False)         # MAX_CONTENT_LENGTH refuses huge bodies (413)
    if request.mimetype == "text/csv":
        records = _csv_records(body, mapping)
    else:
        records = _json_records(body, gateway.settings.max_json_depth,
                                gateway.settings.max_json_elements)
    if len(records) > intake.MAX_RECORDS:
        raise InvalidRequest(f"В одном запросе не больше {intake.MAX_RECORDS} записей.",
                             f"At most {intake.MAX_RECORDS} records per request.")
    results = intake.ingest(mapping, records, gateway.resources, gateway.books)
    return jsonify(mapping=name, summary=_summary(results),
                   records=[r.to_json() for r in results])


def _csv_records(body: bytes, mapping) -> list:
    try:
        return csv_records.read_records(body, mapping)
    except csv.Error as error:          # e.g. a field longer than the csv module's limit
        raise MalformedBody("Не удалось прочитать CSV-файл: проверьте кавычки и длину полей.",
                            f"Unreadable CSV: {error}.") from None


def _json_records(body: bytes, max_depth: int, max_elements: int) -> list:
    if request.mimetype not in ("application/json", "application/fhir+json"):
        raise UnsupportedMediaType(
            "Отправляйте application/json (запись или массив записей) или text/csv.",
            "Send application/json (a record or an array of records) or text/csv.")
    data = fhir.parse_json_value(body, max_depth, max_elements)
    return data if isinstance(data, list) else [data]


def _summary(results: list[intake.RecordResult]) -> dict:
    return {
        "records": len(results),
        "accepted": sum(r.status == "accepted" for r in results),
        "rejected": sum(r.status == "rejected" for r in results),
        "unchanged": sum(r.unchanged for r in results),
    }
