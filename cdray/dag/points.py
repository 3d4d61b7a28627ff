"""A search's cells: the axes a search draws from, and one drawn point (arm, q, seed, field values)
turned into its cell of the DAG, keyed as the grid would key it."""
from __future__ import annotations

import dataclasses
from typing import Any

from cdray.config import NEEDS_AMATEUR, SweepConfig, parse_section, set_dotted, to_dict
from cdray.config.plain import get_dotted
from cdray.config.search import RangeAxis
from cdray.dag.nodes import Amateur, Cell, arm_name

FIXED = ("arm", "q", "seed")  # the point's keys besides the grid.fields names


def arm_choices(cfg: SweepConfig) -> dict[str, tuple[str, Amateur | None]]:
    """Each synthetic arm the grid names (strategy x amateur), by its label: what a search draws."""
    amateurs = ([Amateur("early", k) for k in cfg.grid.k] + [Amateur("small", r) for r in cfg.grid.r]
                + [Amateur("dropout", p) for p in cfg.grid.p])
    out: dict[str, tuple[str, Amateur | None]] = {}
    for strategy in cfg.grid.strategy:
        for amateur in (amateurs if strategy in NEEDS_AMATEUR else [None]):
            out.setdefault(arm_name(strategy, amateur, 1.0), (strategy, amateur))
    return out


def axes(cfg: SweepConfig) -> dict[str, list | RangeAxis]:
    """The search space: each axis's choices (a list) or range, in a fixed order."""
    ranges = {r.name: r for r in cfg.search.ranges}
    space: dict[str, list | RangeAxis] = {"arm": list(arm_choices(cfg)),
                                          "q": ranges.get("q") or list(cfg.grid.q),
                                          "seed": list(cfg.grid.seed)}
    for a in cfg.grid.fields:
        space[a.name] = list(a.values)
    for r in cfg.search.ranges:
        if r.name != "q":
            space[r.name] = r
    return space


def rounded(cfg: SweepConfig, point: dict[str, Any]) -> dict[str, Any]:
    """A point as the search drew it, with each value from a range to 3 significant digits."""
    ranges = {r.name: r for r in cfg.search.ranges}
    return {k: ranges[k].rounded(v) if k in ranges else v for k, v in point.items()}


def point_config(cfg: SweepConfig, point: dict[str, Any]) -> SweepConfig:
    """The sweep's config narrowed to one point: its field values set, a one-cell grid (a q of 0
    is the BASELINE), no search."""
    point = rounded(cfg, point)
    strategy, amateur = arm_choices(cfg)[point["arm"]]
    kind = amateur.kind if amateur else None
    raw = to_dict(cfg)
    raw.pop("search", None)
    for name, value in point.items():
        if name not in FIXED:
            set_dotted(raw, name, value)
    raw["grid"] = {"k": [amateur.value] if kind == "early" else [], "r": [amateur.value] if kind == "small" else [],
                   "p": [amateur.value] if kind == "dropout" else [], "strategy": [strategy],
                   "q": [float(point["q"])], "seed": [int(point["seed"])], "fields": {}}
    return parse_section(SweepConfig, raw, "").validate()


def point_cell(cfg: SweepConfig, point: dict[str, Any]) -> Cell:
    """The cell a drawn point trains and evaluates, keyed as the grid keys it (the GOOD and SMALL
    runs by the sweep's own recipe), carrying the field values that change its training run."""
    point = rounded(cfg, point)
    cell = _cell(cfg, point)
    own = to_dict(cfg)
    applying = []
    for name, value in point.items():
        if name in FIXED:
            continue
        default = get_dotted(own, name)
        if value != default and _cell(cfg, {**point, name: default}).train.key == cell.train.key:
            continue  # the field changes nothing this cell builds (generation.* for a BASELINE)
        applying.append((name, value))
    return dataclasses.replace(cell, fields=tuple(applying))


def with_baselines(cfg: SweepConfig, drawn: list[Cell]) -> list[Cell]:
    """A search's drawn cells, each once, and the BASELINE of each (its seed and the field values
    that change a BASELINE's run): what its arm table compares, where the store has them."""
    out: dict[str, Cell] = {}
    for cell in drawn:
        out.setdefault(cell.id, cell)
    any_arm = next(iter(arm_choices(cfg)))  # a q of 0 is the BASELINE whatever the arm
    for cell in drawn:
        base = point_cell(cfg, {"arm": any_arm, "q": 0.0, "seed": cell.seed, **dict(cell.fields)})
        out.setdefault(base.id, base)
    return sorted(out.values(), key=lambda c: (c.arm != "BASELINE", c.arm, c.setting, c.q, c.seed))


def _cell(cfg: SweepConfig, point: dict[str, Any]) -> Cell:
    from cdray.dag.graph import expand

    (cell,) = expand(point_config(cfg, point), recipe=cfg.train).cells
    return cell

