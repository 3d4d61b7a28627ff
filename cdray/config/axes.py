"""Grid axes over any config field (`grid.fields`): checked like `--set`, one config per combination."""
from __future__ import annotations

import dataclasses
import itertools
import typing
from typing import Any, Callable, Optional

from cdray.config.errors import ConfigError, check
from cdray.config.plain import Patch, get_dotted, set_dotted, to_dict

# sections that say where and how a sweep runs, never what it computes: no axis over them
PLUMBING = ("name", "profile", "data_root", "store", "tracking", "ray", "grid", "search")


def axis_field(root: type, name: str, at: str, section: bool = False) -> Optional[dataclasses.Field]:
    """The dataclass field a dotted axis name ends at (a leaf; a section when `section`, its values
    being patches of it), or a ConfigError."""
    parts = name.split(".")
    check(all(parts) and parts[0] not in PLUMBING, at,
          f"{name!r} is not a field of what a sweep computes (not an axis: {', '.join(PLUMBING)})")
    cls: Any = root
    found = None
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        check(part in fields, at, f"{name!r}: no field {'.'.join(parts[:i + 1])!r}")
        found = fields[part]
        tp = typing.get_type_hints(cls)[part]
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        cls = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner and typing.get_origin(tp) is not tuple else None)
    if section:
        check(cls is not None, at, f"{name!r} is a field, not a section: its values cannot be mappings")
        return found
    check(cls is None, at, f"{name!r} is a section: an axis names one field of it, or each of its values "
                           f"is a mapping of the section's fields")
    check(found.metadata.get("key") is not False, at,
          f"{name!r} is an execution knob: it changes how fast an artifact is built, never what it holds")
    return found


def apply(raw: dict, values: dict[str, Any]) -> dict:
    """The raw config tree with each dotted field set to its value (as `--set` does); a section's
    value (a Patch) sets its fields over the section as written."""
    tree = _deep_copy(raw)
    for name, value in values.items():
        if isinstance(value, Patch):
            current = get_dotted(tree, name)
            value = {**(current if isinstance(current, dict) else {}), **_deep_copy(dict(value))}
        set_dotted(tree, name, value)
    return tree


def _deep_copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _deep_copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deep_copy(x) for x in v]
    return v


def combinations(axes) -> list[dict[str, Any]]:
    """Every combination of the axes' values, in the order written ({} without axes)."""
    names = [a.name for a in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(a.values for a in axes))]


Build = Callable[[dict], Any]  # a raw config tree to a validated SweepConfig


def variants(cfg, build: Build) -> list[tuple[dict[str, Any], Any]]:
    """(axis values, the sweep's config with them set) per combination of grid.fields, each
    validated (check_axes names a bad value; a combination that fails only as a whole is named by
    its values). Without axes: [({}, cfg)]."""
    if not cfg.grid.fields:
        return [({}, cfg)]
    raw = _without_axes(cfg)
    out = []
    for values in combinations(cfg.grid.fields):
        try:
            out.append((values, build(apply(raw, values))))
        except ConfigError as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError("grid.fields", f"the combination {shown}: {e}") from None
    return out


def check_axes(cfg, build: Build) -> None:
    """Every axis of grid.fields names a field that changes what the sweep computes, and every
    value of it gives a valid config (the error names grid.fields.<name>[i]); an axis all of whose
    values are the config's own changes nothing and is refused."""
    from cdray.config.sweep import SweepConfig

    raw = _without_axes(cfg)
    for r in cfg.search.ranges:
        if r.name == "q":
            continue
        at = f"grid.fields.{r.name}"
        axis_field(SweepConfig, r.name, at)
        check(not any(a.name == r.name for a in cfg.grid.fields), at, "a list and a range at once")
        for end in ("low", "high"):
            try:
                build(apply(raw, {r.name: getattr(r, end)}))
            except ConfigError as e:
                raise ConfigError(f"{at}.{end}", f"{getattr(r, end)!r}: {e}") from None
    if not cfg.grid.fields:
        return
    for axis in cfg.grid.fields:
        at = f"grid.fields.{axis.name}"
        patches = [isinstance(v, Patch) for v in axis.values]
        check(all(patches) or not any(patches), at, "a section's axis takes mappings only, a field's no mapping")
        axis_field(SweepConfig, axis.name, at, section=all(patches))
        current = get_dotted(raw, axis.name)
        check(any(get_dotted(apply(raw, {axis.name: v}), axis.name) != current for v in axis.values), at,
              f"every value ({', '.join(map(repr, axis.values))}) is the sweep's own: the axis changes nothing")
        for i, value in enumerate(axis.values):
            try:
                build(apply(raw, {axis.name: value}))
            except ConfigError as e:
                raise ConfigError(f"{at}[{i}]", f"{value!r}: {e}") from None


def _without_axes(cfg) -> dict:
    raw = to_dict(cfg)
    raw["grid"]["fields"] = []
    raw.pop("search", None)  # a value's config is one point: no search over it
    if not raw["grid"]["q"]:
        raw["grid"]["q"] = [0.0]
    return raw

