"""How a sweep searches its axes: the grid, or Tune's random or Optuna search, with ASHA early stopping."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from cdray.config.errors import check, in_range

ALGORITHMS = ("grid", "random", "optuna")
# what a trial reports at each milestone (the in-training eval split's perplexity): `best_ppl` is the
# best so far, i.e. the report's best-checkpoint selection over the milestones reached
METRICS = ("best_ppl", "eval_ppl")


@dataclass(frozen=True)
class RangeAxis:
    """An axis drawn from an interval by a random or Optuna search: grid.q or a grid.fields entry
    written as {low, high, log}."""

    name: str  # "q" or a dotted field name
    low: float
    high: float
    log: bool = False

    def validate(self, at: str) -> None:
        check(self.low < self.high, at, f"low={self.low!r} must be below high={self.high!r}")
        if self.log:
            check(self.low > 0, f"{at}.low", f"{self.low!r}: a log range needs low > 0")
        if self.name == "q":
            in_range(self.low, 0, 1, f"{at}.low")
            in_range(self.high, 0, 1, f"{at}.high")

    def rounded(self, value: float) -> float:
        """A drawn value to 3 significant digits: labels stay readable, and draws that close
        share their runs."""
        if value == 0:
            return 0.0
        digits = 2 - int(math.floor(math.log10(abs(value))))
        return min(max(round(value, digits), self.low), self.high)


@dataclass(frozen=True)
class SearchConfig:
    """Which cells a sweep runs: every grid combination, or `samples` points drawn by a random or
    Optuna search (seeded); ASHA stops the cells whose best milestone perplexity trails."""

    algorithm: Literal["grid", "random", "optuna"] = "grid"
    samples: int = 8  # cells a random or Optuna search runs
    seed: int = 0  # the search's own random state (not a training seed)
    scheduler: Literal["none", "asha"] = "none"
    metric: Literal["best_ppl", "eval_ppl"] = "best_ppl"
    mode: Literal["min", "max"] = "min"
    # ASHA never stops a cell before this step (a training milestone); None: the first milestone
    # at or past a quarter of train.steps (see docs/config.md for the rule)
    grace_steps: Optional[int] = None
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor of the cells at each rung
    # grid axes written as ranges, for random and Optuna (filled from grid.q / grid.fields)
    ranges: tuple[RangeAxis, ...] = field(default=())

    def validate(self, at: str) -> None:
        check(self.samples >= 1, f"{at}.samples", f"{self.samples!r} must be >= 1")
        check(self.seed >= 0, f"{at}.seed", f"{self.seed!r} must be >= 0")
        check(self.reduction_factor >= 2, f"{at}.reduction_factor", f"{self.reduction_factor!r} must be >= 2")
        # perplexities: lower is better, and a search that maximised one would find the worst arm
        check(self.mode == "min", f"{at}.mode", f"{self.mode!r}: {self.metric} is a perplexity, minimised")
        names = [r.name for r in self.ranges]
        for r in self.ranges:
            where = "grid.q" if r.name == "q" else f"grid.fields.{r.name}"
            check(names.count(r.name) == 1, where, "the axis is a range twice")
            check(self.algorithm != "grid", where,
                  "a range {low, high} needs search.algorithm: random or optuna (a grid takes a list)")
            r.validate(where)

    @property
    def samples_cells(self) -> bool:
        """Whether the cells are drawn by a search (not the grid's every combination)."""
        return self.algorithm != "grid"

