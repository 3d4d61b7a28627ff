"""A config as plain data: to and from the raw tree a YAML file holds (dotted overrides included)."""
from __future__ import annotations

import dataclasses
from typing import Any

from cdray.config.errors import check


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Apply one `a.b.c=value` override to a raw YAML tree (lists by index: a.0.b)."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            check(part.isdigit() and int(part) < len(node), dotted, f"no list index {part!r}")
            node = node[int(part)]
            continue
        check(isinstance(node, dict), dotted, f"{'.'.join(parts[:i])} is not a mapping")
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        node = nxt
    last = parts[-1]
    check(isinstance(node, (dict, list)), dotted, f"{'.'.join(parts[:-1])} is not a mapping")
    if isinstance(node, list):
        check(last.isdigit() and int(last) < len(node), dotted, f"no list index {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def get_dotted(tree: dict, dotted: str) -> Any:
    """The value at `a.b.c` of a raw tree (None where a part is missing)."""
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def to_dict(obj: Any) -> Any:
    """Plain JSON-able form of a config (tuples become lists; -inf stays a float)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Patch):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class Patch(dict):
    """A value of an axis over a section (grid.fields: {generation.decoding: [{top_k: 50}, ...]}):
    the fields it sets over the section as written; hashable, shown as `top_k=50`."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, repr(v)) for k, v in self.items())))

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.items()) or "as-written"
