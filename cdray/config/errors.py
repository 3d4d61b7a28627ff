"""Config errors and the checks each field's validate() makes: one line naming the field."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value; `field` is the dotted path of the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field '{field}': {message}")


def check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ConfigError(field_name, message)


def in_range(value, lo, hi, field_name, *, lo_open=False, hi_open=False):
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    check(ok_lo and ok_hi, field_name, f"{value!r} is outside {lb}{lo}, {hi}{rb}")


# Field metadata a stage's key reads (cdray.dag.keys.key_slice): an execution-only knob changes how
# fast an artifact is built, never what it holds, so it stays out of every key; a BabyLM setting
# reaches only the BabyLM evaluation nodes (their keys hold what of it they use), never the
# perplexity evaluation's
EXECUTION = {"key": False}
BABYLM = {"scope": "babylm"}
BABYLM_EXECUTION = {"key": False, "scope": "babylm"}
# A field added after artifacts were built, whose default reproduces what was built before: it
# enters a key only when set to something else, so adding it re-keys nothing already in a store
ADDED = {"key_default": "omit"}
