"""Loading a sweep file: strict coercion to the typed tree, presets, profiles, dotted overrides."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from cdray.config.errors import ConfigError, check
from cdray.config.generation import PAPER_COMPAT, PAPER_COMPAT_PENALTY, GenerationConfig
from cdray.config.models import MODEL_PRESETS, ModelConfig
from cdray.config.plain import Patch, set_dotted
from cdray.config.sweep import GridConfig, ProfileConfig, SweepConfig


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) > 2:  # one of several kinds
        return " or ".join("None" if a is type(None) else _type_name(a) for a in args)
    return str(tp).replace("typing.", "").replace("cdray.config.", "")


def _coerce(value: Any, tp: Any, at: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `at`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, at)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if tp is Any:  # an axis value: checked where it is applied (cdray.config.axes)
        return value
    if origin is Literal:
        check(value in args, at, f"{value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]  # a scalar where a list is expected is a one-element list
        item_tp = args[0]
        return tuple(_coerce(v, item_tp, f"{at}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, at)
    if tp is bool:
        check(isinstance(value, bool), at, f"{value!r} is not a boolean")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), at, f"{value!r} is not an integer")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower() in ("-inf", "-.inf", "inf", ".inf", "nan"):
            value = float(value.replace(".", ""))
        check(isinstance(value, (int, float)) and not isinstance(value, bool), at,
               f"{value!r} is not a number")
        return float(value)
    if tp is str:
        check(isinstance(value, str), at, f"{value!r} is not a string")
        return value
    raise ConfigError(at, f"unsupported type {_type_name(tp)}")


def _build(cls: type, data: Any, at: str) -> Any:
    if data is None:
        data = {}
    check(isinstance(data, dict), at or "<root>", f"expected a mapping, got {type(data).__name__}")
    data = dict(data)
    if cls is ModelConfig and "preset" in data:
        preset = data.pop("preset")
        where = f"{at}.preset" if at else "preset"
        check(preset in MODEL_PRESETS, where, f"{preset!r} is not one of {sorted(MODEL_PRESETS)}")
        data = {**MODEL_PRESETS[preset], **data}
    if cls is SweepConfig and isinstance(data.get("grid"), dict):
        data = _ranges_to_search(data)
    if cls is GridConfig and isinstance(data.get("fields"), dict):
        # written as a mapping {train.weight_decay: [0.1, 1.0]}: one axis per entry, in order
        data["fields"] = [{"name": k, "values": v} for k, v in data["fields"].items()]
    if cls is GridConfig and isinstance(data.get("fields"), (list, tuple)):
        # a mapping among an axis's values patches a section (cdray.config.plain.Patch)
        data["fields"] = [{**a, "values": [Patch(x) if isinstance(x, dict) else x for x in _listed(a["values"])]}
                          if isinstance(a, dict) and "values" in a else a for a in data["fields"]]
    if cls is GenerationConfig and data.get("paper_compat") is True:
        # the switch fills in the paper's values; explicit conflicting ones fail in validate()
        data = {**PAPER_COMPAT, **data}
        dec = dict(data.get("decoding") or {})
        dec.setdefault("penalty", PAPER_COMPAT_PENALTY)
        data["decoding"] = dec
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        check(key in names, f"{at}.{key}" if at else str(key),
               f"unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{at}.{k}" if at else k) for k, v in data.items()}
    infinite = {f.name for f in dataclasses.fields(cls) if f.metadata.get("infinite")}
    for k, v in kwargs.items():
        for i, x in enumerate(v if isinstance(v, tuple) else (v,)):
            if isinstance(x, float) and not math.isfinite(x) and (k not in infinite or math.isnan(x)):
                where = (f"{at}.{k}" if at else k) + (f"[{i}]" if isinstance(v, tuple) else "")
                raise ConfigError(where, f"{x!r} must be a finite number")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(at or "<root>", str(e)) from None


def _listed(v: Any) -> Any:
    return v if isinstance(v, (list, tuple)) else [v]


def _is_range(value: Any) -> bool:
    return isinstance(value, dict) and {"low", "high"} <= set(value) and set(value) <= {"low", "high", "log"}


def _ranges_to_search(data: dict) -> dict:
    """grid.q or a grid.fields entry written as a range {low, high[, log]}: moved to search.ranges
    (the grid keeps the axes that are lists)."""
    grid = dict(data["grid"])
    ranges = []
    if _is_range(grid.get("q")):
        ranges.append({"name": "q", **grid.pop("q")})
        grid["q"] = []
    fields = grid.get("fields")
    if isinstance(fields, dict):
        ranges += [{"name": k, **v} for k, v in fields.items() if _is_range(v)]
        grid["fields"] = {k: v for k, v in fields.items() if not _is_range(v)}
    if not ranges:
        return data
    search = data.get("search")
    search = dict(search) if isinstance(search, dict) else {}
    check("ranges" not in search, "search.ranges", "write ranges on the grid's axes (grid.q: {low, high})")
    return {**data, "grid": grid, "search": {**search, "ranges": ranges}}


def parse_section(cls: type, data: Any, at: str) -> Any:
    """Build one config dataclass from its raw mapping, strictly (as load() does for the whole tree)."""
    return _build(cls, data, at)


def parse_override(text: str) -> tuple[str, Any]:
    check("=" in text, text, "an override must look like a.b=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a mapping holding one key twice (YAML keeps the last one,
    silently: a sweep file saying a thing twice would mean the other thing)."""


def _mapping_once(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise _TwiceError(f"the key {key!r} is there twice (lines {seen[key]} and {key_node.start_mark.line + 1})")
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


class _TwiceError(Exception):
    pass


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def load_raw(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), "config file not found")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except _TwiceError as e:
        raise ConfigError(str(path), str(e)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), f"malformed YAML{where}") from None
    if data is None:
        data = {}
    check(isinstance(data, dict), str(path), "the top level must be a mapping")
    return data


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_profile(data: dict, name: Optional[str] = None) -> dict:
    """Pop `profiles:` from a raw tree, check every profile strictly, merge the selected one
    (`name`, else the tree's own `profile:` key; none selected: the tree as written)."""
    data = dict(data)
    if name is None and "profiles" not in data:
        return data  # no profiles, or a tree whose profile is already applied (to_dict round trip)
    profiles = data.pop("profiles", None) or {}
    check(isinstance(profiles, dict), "profiles", "expected a mapping of profile name -> settings")
    for pname, body in profiles.items():
        _build(ProfileConfig, body, f"profiles.{pname}")
    name = name if name is not None else data.get("profile")
    if name is None:
        return data
    check(name in profiles, "profile", f"{name!r} is not one of the sweep file's profiles {sorted(profiles)}")
    merged = _merge(data, profiles[name] or {})
    merged["profile"] = name
    return merged


def from_dict(data: dict, profile: Optional[str] = None) -> SweepConfig:
    return _with_axes(_build(SweepConfig, apply_profile(data, profile), "").validate())


def _with_axes(cfg: SweepConfig) -> SweepConfig:
    """cfg once its grid.fields axes are checked (each value gives a valid config)."""
    from cdray.config.axes import check_axes

    check_axes(cfg, lambda raw: _build(SweepConfig, raw, "").validate())
    return cfg


def load(path: str | Path, overrides: tuple[str, ...] | list[str] = (), profiles: bool = True) -> SweepConfig:
    """Load a sweep/config YAML strictly, apply the selected profile, then `a.b=v` overrides
    (`profile=NAME` selects the profile), validate, return it frozen. `profiles=False`: the file
    as if no profile were selected (what a profile changes is measured against it)."""
    data = load_raw(path)
    parsed = [parse_override(text) for text in overrides]
    if not profiles:
        data.pop("profile", None)
        data.pop("profiles", None)
        parsed = [(k, v) for k, v in parsed if k != "profile"]
    chosen = [v for k, v in parsed if k == "profile"]
    data = apply_profile(data, str(chosen[-1]) if chosen else None)
    for key, value in parsed:
        if key != "profile":
            set_dotted(data, key, value)
    return _with_axes(_build(SweepConfig, data, "").validate())
