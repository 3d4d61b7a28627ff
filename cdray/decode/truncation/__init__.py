"""Truncation rules of a decoding step, registered by name, one module each (top_k, top_p, min_p,
typical, ...): a rule is its DecodingConfig field and a function over the step's scores; a
config applies the rules whose field it sets, in their order. A new rule is a new module here,
its field in cdray.config.generation and a test (docs/extending.md)."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

RULES: dict[str, "Rule"] = {}


@dataclass(frozen=True)
class Rule:
    """One truncation: the DecodingConfig field that turns it on, where it runs among the rules,
    what it keeps of scores [B, V] (dropped tokens become -inf), and its short label (K-50)."""

    field: str
    order: int
    keep: Callable[[Any, Any], Any]  # (scores, value) -> scores
    label: Callable[[Any], str]


def register(field: str, order: int, label: Callable[[Any], str]):
    """Register the decorated function as the rule of DecodingConfig.<field>."""
    def wrap(fn):
        if field in RULES:
            raise ValueError(f"a truncation rule for {field!r} is registered twice")
        RULES[field] = Rule(field, order, fn, label)
        return fn
    return wrap


def rules() -> list[Rule]:
    """Every registered rule in the order a step applies them."""
    return sorted(RULES.values(), key=lambda r: (r.order, r.field))


def active(d) -> list[tuple[Rule, Any]]:
    """The rules a DecodingConfig (or a raw decoding mapping) sets, with their values."""
    get = d.get if isinstance(d, dict) else lambda name: getattr(d, name, None)
    return [(r, get(r.field)) for r in rules() if get(r.field) is not None]


def truncate(scores, d):
    """Scores [B, V] after each rule d sets, in order; dropped tokens become -inf."""
    out = scores.float()
    for rule, value in active(d):
        out = rule.keep(out, value)
    return out


def label(d) -> str:
    """What a corpus's truncation is called (none, K-50, P-.9+K-50, ...)."""
    return "+".join(rule.label(value) for rule, value in active(d)) or "none"


for _module in pkgutil.iter_modules(__path__):  # every rule module registers itself
    importlib.import_module(f"{__name__}.{_module.name}")
