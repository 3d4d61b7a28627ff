"""The config reference (every field, its type and default) as markdown: docs/config.md."""
from __future__ import annotations

import dataclasses
import typing

from cdray.config.loading import _type_name
from cdray.config.plain import to_dict
from cdray.config.sweep import ProfileConfig, SweepConfig


def field_reference(cls: type = SweepConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type, default) for every leaf field: the README's config reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_reference(tp, name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((name, _type_name(tp), repr(to_dict(default))))
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if inner:  # a list of (or optional) sections: document the element's own fields too
            suffix = "[]." if typing.get_origin(tp) is tuple else "."
            rows.extend(field_reference(inner[0], name + suffix))
    return rows



def reference_markdown() -> str:
    """The config reference table, generated from the dataclasses (docs/config.md holds it; a test
    keeps the two in sync)."""
    lines = ["| field | type | default |", "|---|---|---|"]
    rows = field_reference() + field_reference(ProfileConfig, "profiles.<name>.")
    for name, tp, default in rows:
        tp = tp.replace("|", "\\|")
        lines.append(f"| `{name}` | {tp} | `{default}` |")
    return "\n".join(lines)


DOC = """# cdray config reference

Every field of a sweep file, its type and its default, generated from `cdray/config/` (regenerate
with `python -m cdray.config.reference > docs/config.md`; `tests/test_config.py` checks it). What
each field means is said where it is defined, in `cdray/config/*.py`. A profile
(`profiles.<name>.`) may set only the plumbing listed at the end.

"""


if __name__ == "__main__":
    print(DOC + reference_markdown())
