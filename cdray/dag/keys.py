"""Content keys of stage outputs: sha256 over canonical JSON of the stage, its version, its whole
config slice and its inputs' keys."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

KEY_LENGTH = 16


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace; infinities spelled out) used for hashing."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return {"__float__": repr(v)}
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def stage_key(stage: str, version: int, config: Any, input_keys: dict[str, str]) -> str:
    """sha256 over stage name, stage version, the whole config slice and the input keys."""
    payload = canonical_json({"stage": stage, "version": version, "config": config, "inputs": input_keys})
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def key_slice(section: Any, leave_scope: str | None = None) -> dict:
    """A config section as it enters a stage's key: every field but the execution-only ones
    (metadata {"key": False}), those of scope `leave_scope` (BabyLM settings in the perplexity
    evaluation's key), and fields marked ADDED while they hold their default (so adding a field
    re-keys nothing already built). Nested sections follow the same rules."""
    out = {}
    for f in dataclasses.fields(section):
        if f.metadata.get("key") is False or (leave_scope and f.metadata.get("scope") == leave_scope):
            continue
        value = getattr(section, f.name)
        if f.metadata.get("key_default") == "omit" and value == f.default:
            continue
        out[f.name] = _keyed(value)
    return out


def _keyed(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return key_slice(value)
    if isinstance(value, (list, tuple)):
        return [_keyed(v) for v in value]
    return value


def without_added(obj: Any) -> Any:
    """A config as plain data (tuples as lists), fields marked ADDED left out while they hold
    their default: what identifies a whole sweep (cdray.sweep.plan.sweep_key) then survives
    adding a field, as stage keys do."""
    if dataclasses.is_dataclass(obj):
        return {f.name: without_added(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("key_default") == "omit" and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return [without_added(v) for v in obj]
    return obj
