"""Inline attachments: only PDF, JPEG and PNG, recognised by their bytes (pure).

A declared contentType is a claim; the first bytes of the file are the fact. The
upstream accepts only these three kinds and files up to 5 MB (DOMAIN.md), so a
mismatch or an oversized file is refused here, before anything is stored.
"""
from __future__ import annotations

import base64
import binascii

from gateway.issues import Issue

MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)
ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}

# Attachment elements per resource type, as (list element, attachment key or None).
ATTACHMENT_ELEMENTS = {"DiagnosticReport": ("presentedForm", None)}


def sniff(data: bytes) -> str | None:
    return next((kind for magic, kind in MAGIC if data.startswith(magic)), None)


def check(resource: dict, max_bytes: int) -> list[Issue]:
    rtype = resource.get("resourceType", "")
    element = ATTACHMENT_ELEMENTS.get(rtype)
    if element is None:
        return []
    issues = []
    for i, attachment in enumerate(resource.get(element[0]) or []):
        if isinstance(attachment, dict) and isinstance(attachment.get("data"), str):
            issues += check_attachment(attachment, f"{rtype}.{element[0]}[{i}]", max_bytes)
    return issues


def check_attachment(attachment: dict, path: str, max_bytes: int) -> list[Issue]:
    encoded = attachment["data"]
    if len(encoded) * 3 // 4 > max_bytes + 3:
        return [_too_large(path, max_bytes)]
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return [Issue("value", "Вложение не закодировано в base64: закодируйте файл целиком.",
                      "Attachment data is not valid base64.", f"{path}.data")]
    if len(data) > max_bytes:
        return [_too_large(path, max_bytes)]
    actual = sniff(data)
    if actual is None:
        return [Issue("value", "Недопустимый тип файла: принимаются только PDF, JPEG и PNG.",
                      "Unsupported file type: only PDF, JPEG and PNG are accepted "
                      "(checked by content).", f"{path}.data")]
    declared = attachment.get("contentType")
    declared = ALIASES.get(declared, declared) if isinstance(declared, str) else None
    if declared is not None and declared.split(";")[0].strip().lower() != actual:
        return [Issue("value", f"Указанный тип файла ({declared}) не совпадает с содержимым "
                               f"({actual}): исправьте contentType или приложите нужный файл.",
                      f"Declared contentType {declared} does not match the content ({actual}).",
                      f"{path}.contentType")]
    return []


def _too_large(path: str, max_bytes: int) -> Issue:
    megabytes = max_bytes / (1024 * 1024)
    return Issue("too-long", f"Вложение больше {megabytes:g} МБ: уменьшите файл.",
                 f"Attachment exceeds {max_bytes} bytes.", f"{path}.data")
