"""Element paths of mapping files: reading a vendor's record, writing a FHIR resource (pure).

Source paths: `field`, `a.b`, `a[0].b`, `$.field` (from the record root), `.` (the
current item). Target paths: `name[0].given[1]`, `code[0].coding[0]`.
"""
from __future__ import annotations

import re
from functools import lru_cache

_STEP = re.compile(r"^([A-Za-z_][\w-]*)?((?:\[\d+\])*)$")


@lru_cache(maxsize=8192)
def steps(path: str) -> tuple[str | int, ...]:
    """`a.b[0].c` → ('a', 'b', 0, 'c'); cached, since mappings repeat the same few paths."""
    out: list[str | int] = []
    for part in path.split("."):
        match = _STEP.match(part)
        if not match or (not match[1] and not match[2]):
            raise ValueError(f"bad path {path!r}")
        if match[1]:
            out.append(match[1])
        out.extend(int(i) for i in re.findall(r"\[(\d+)\]", match[2]))
    return tuple(out)


def render(base: str, path_steps) -> str:
    text = base
    for step in path_steps:
        text += f"[{step}]" if isinstance(step, int) else f".{step}"
    return text


def get(node, path_steps):
    for step in path_steps:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return None
        elif not isinstance(node, dict):
            return None
        node = node[step] if isinstance(step, int) else node.get(step)
    return node


def set_path(resource: dict, path: str, value) -> None:
    """Write `value` at `path`, creating the objects and arrays on the way."""
    path_steps = steps(path)
    node = resource
    for step, following in zip(path_steps, path_steps[1:], strict=False):
        child_default = [] if isinstance(following, int) else {}
        node = _child(node, step, child_default)
    last = path_steps[-1]
    if isinstance(last, int):
        _pad(node, last)
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise TypeError(f"cannot set {path!r}: parent is not an object")
        node[last] = value


def _child(node, step, default):
    if isinstance(step, int):
        if not isinstance(node, list):
            raise TypeError("index into something that is not an array")
        _pad(node, step)
        if node[step] is None:
            node[step] = default
        return node[step]
    if not isinstance(node, dict):
        raise TypeError(f"element {step!r} under something that is not an object")
    return node.setdefault(step, default)


def _pad(items: list, index: int) -> None:
    while len(items) <= index:
        items.append(None)


def compact(node):
    """Drop the holes left by sparse indexes (an optional given[0] missing, say)."""
    if isinstance(node, dict):
        return {k: compact(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [compact(v) for v in node if v is not None]
    return node


def compacted_steps(original, path_steps) -> list[str | int]:
    """Where `path_steps` of the sparse `original` lands after `compact(original)`."""
    out: list[str | int] = []
    node = original
    for step in path_steps:
        if isinstance(step, int):
            out.append(sum(1 for item in node[:step] if item is not None))
        else:
            out.append(step)
        node = node[step] if isinstance(step, int) else node.get(step)
    return out
