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


def to_dict(obj: Any) -> Any:
    """Plain JSON-able form of a config (tuples become lists; -inf stays a float)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
