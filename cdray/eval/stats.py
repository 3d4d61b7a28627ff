"""Paper statistics: checkpoint selection, mean ± se over seeds, relative change, μΔREL, paired bootstrap."""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from cdray.eval.babylm import SCORE_TASK, SCORES, SHOWN_SCORES, load_item_dir, task_scores

PPL = "ppl"
BASELINE = "BASELINE"


def is_baseline(arm: str) -> bool:
    """A BASELINE arm, with or without the grid.fields values of its cells ("BASELINE weight_decay=1")."""
    return arm == BASELINE or arm.startswith(BASELINE + " ")


def nearest_baseline(arm: str) -> str:
    """The BASELINE an arm is compared with when none is given: the plain one."""
    return arm if is_baseline(arm) else BASELINE


@dataclass
class Checkpoint:
    """The scores of one milestone of one cell, and where its per-item files are."""

    arm: str
    q: float
    seed: int
    step: int
    scores: dict[str, float] = field(default_factory=dict)  # the seven scores and ppl
    item_dirs: dict[str, Path] = field(default_factory=dict)  # task -> items/ directory


def higher_is_better(score: str) -> bool:
    return score != PPL


def select(checkpoints: Iterable[Checkpoint], mode: str = "best") -> dict[tuple, dict[str, Checkpoint]]:
    """Per (arm, q, seed) and score, the checkpoint used: best on that score, or the final one."""
    if mode not in ("best", "final"):
        raise ValueError(f"selection {mode!r} is not 'best' or 'final'")
    runs: dict[tuple, list[Checkpoint]] = defaultdict(list)
    for c in checkpoints:
        runs[(c.arm, c.q, c.seed)].append(c)
    chosen: dict[tuple, dict[str, Checkpoint]] = {}
    for key, cps in runs.items():
        cps = sorted(cps, key=lambda c: c.step)
        per_score = {}
        for s in {s for c in cps for s, v in c.scores.items() if _finite(v)}:
            have = [c for c in cps if _finite(c.scores.get(s))]
            if mode == "final":
                per_score[s] = have[-1]
            else:  # ties go to the earlier checkpoint
                sign = 1.0 if higher_is_better(s) else -1.0
                per_score[s] = max(have, key=lambda c: (sign * c.scores[s], -c.step))
        chosen[key] = per_score
    return chosen


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample sd / √n; 0 for a single seed)."""
    a = np.asarray(values, dtype=float)
    if len(a) == 0:
        return math.nan, math.nan
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0
    return float(a.mean()), se


def relative_change(method: float, baseline: float, score: str) -> float:
    """Percent change vs BASELINE, positive = better: (m − b)/b, and (b − m)/b for perplexity."""
    if not (_finite(method) and _finite(baseline)) or baseline == 0:
        return math.nan
    diff = (method - baseline) if higher_is_better(score) else (baseline - method)
    return 100.0 * diff / abs(baseline)


def mu_delta_rel(rel: dict[str, float]) -> float:
    """Mean relative change over the paper's seven non-perplexity scores that are present (its
    definition: WUG counts as accuracy; SHOWN_SCORES stay out)."""
    vals = [rel[s] for s in SCORES if _finite(rel.get(s))]
    return float(np.mean(vals)) if vals else math.nan


# ---------------------------------------------------------------- paired bootstrap


def draw(task: str, name: str, n: int, B: int = 1000, seed: int = 42) -> np.ndarray:
    """The B resamples (with replacement) of one item file: a function of (seed, task, file, n) only."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{task}/{name}".encode())])
    return rng.integers(0, n, size=(B, n), dtype=np.int32)


class IndexSets(Mapping):
    """Every item file's index sets, drawn on demand (the full BLiMP would need ~0.5 GB at once).

    Drawing is deterministic, so the sets are the same for every model and checkpoint: that is
    what makes the bootstrap paired.
    """

    def __init__(self, task: str, sizes: dict[str, int], B: int = 1000, seed: int = 42):
        self.task, self.sizes, self.B, self.seed = task, dict(sizes), B, seed
        self._recent: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._recent:
            if len(self._recent) >= 4:
                self._recent.pop(next(iter(self._recent)))
            self._recent[name] = draw(self.task, name, self.sizes[name], self.B, self.seed)
        return self._recent[name]

    def __iter__(self):
        return iter(self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)


def index_sets(task: str, sizes: dict[str, int], B: int = 1000, seed: int = 42) -> IndexSets:
    """B resamples of each item file, drawn once per (seed, task, file name)."""
    return IndexSets(task, sizes, B, seed)


def resampled(task: str, files: dict[str, dict[str, np.ndarray]], idx: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every score of `task` recomputed on each of the B resamples (shape (B,) per score)."""
    B = idx.B if isinstance(idx, IndexSets) else next(iter(idx.values())).shape[0]
    if task in ("blimp", "supplement", "ewok"):
        per_file = np.stack([files[n]["correct"][idx[n]].mean(axis=1) for n in sorted(files)])
        return {task: 100.0 * per_file.mean(axis=0)}
    if task == "entity_tracking":
        per_file = []
        for n in sorted(files):
            c, ops = files[n]["correct"][idx[n]], files[n]["numops"][idx[n]]
            groups = []
            for v in np.unique(files[n]["numops"]):
                hit = ops == v
                cnt = hit.sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    groups.append(np.where(cnt > 0, (c * hit).sum(axis=1) / np.maximum(cnt, 1), np.nan))
            per_file.append(np.nanmean(np.stack(groups), axis=0))
        return {task: 100.0 * np.mean(per_file, axis=0)}
    sets = {n: idx[n] for n in files}  # wug and reading have one file each
    rows = [task_scores(task, files, {n: sets[n][b] for n in files}) for b in range(B)]
    return {s: np.array([r[s] for r in rows]) for s in rows[0]}


@dataclass
class Comparison:
    """A paired bootstrap of (method − baseline) on one score."""

    diff: float
    ci: tuple[float, float]
    p: float
    significant: bool


def paired_bootstrap(method: np.ndarray, baseline: np.ndarray, observed: float) -> Comparison:
    """CI at the 2.5/97.5 percentiles of the resampled differences; one-sided p from the sign of
    the observed difference: (#resamples contradicting it + 1) / (B + 1)."""
    d = np.asarray(method, float) - np.asarray(baseline, float)
    d = d[np.isfinite(d)]
    if not len(d) or not _finite(observed):
        return Comparison(observed, (math.nan, math.nan), math.nan, False)
    lo, hi = np.percentile(d, [2.5, 97.5])
    contradicting = int((d <= 0).sum()) if observed > 0 else int((d >= 0).sum())
    p = (contradicting + 1) / (len(d) + 1)
    return Comparison(observed, (float(lo), float(hi)), p, bool(lo > 0 or hi < 0))


# ---------------------------------------------------------------- arm summaries


@dataclass
class Cell:
    """One table cell: mean ± se over seeds, relative change, bootstrap vs BASELINE."""

    mean: float
    se: float
    n: int
    rel: float = math.nan
    comparison: Optional[Comparison] = None


@dataclass
class ArmSummary:
    arm: str
    q: float
    n_seeds: int
    cells: dict[str, Cell]
    mu_delta_rel: float
    mu_delta_rel_se: float = math.nan


Loader = Callable[[Path], dict[str, dict[str, np.ndarray]]]


def summarize(checkpoints: list[Checkpoint], mode: str = "best", B: int = 1000, seed: int = 42,
              loader: Loader = load_item_dir,
              baseline_of: Callable[[str], str] = nearest_baseline) -> list[ArmSummary]:
    """The paper's table rows: per (arm, q) and score the selected checkpoints' mean ± se over seeds,
    relative change vs its BASELINE (baseline_of(arm): the one trained with the arm's grid.fields
    values, when they apply to it) and a paired bootstrap of the difference of seed means."""
    chosen = select(checkpoints, mode)
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for key in chosen:
        groups[key[:2]].append(key)
    bases: dict[str, list[tuple]] = defaultdict(list)
    for g, ks in groups.items():
        if is_baseline(g[0]):
            bases[g[0]] += ks
    cache: dict[tuple, dict] = {}

    def items(cp: Checkpoint, task: str):
        k = (id(cp), task)
        if k not in cache:
            cache[k] = loader(cp.item_dirs[task])
        return cache[k]

    sets: dict[str, dict] = {}

    def boot(keys: list[tuple], score: str) -> Optional[np.ndarray]:
        task = SCORE_TASK.get(score)
        per_seed = []
        for k in keys:
            cp = chosen[k].get(score)
            if cp is None or task not in cp.item_dirs:
                return None
            files = items(cp, task)
            if task not in sets:
                sets[task] = index_sets(task, {n: len(v["correct" if "correct" in v else "pred"])
                                               for n, v in files.items()}, B, seed)
            rk = ("resampled", id(cp), task)
            if rk not in cache:  # reading and eye tracking share one set of resampled fits
                cache[rk] = resampled(task, files, sets[task])
            per_seed.append(cache[rk][score])
        return np.mean(per_seed, axis=0) if per_seed else None

    def stats(keys, score) -> Cell:
        vals = [chosen[k][score].scores[score] for k in keys if score in chosen[k]]
        m, se = mean_se(vals)
        return Cell(m, se, len(vals))

    out = []
    all_scores = [*SCORES, *SHOWN_SCORES, PPL]
    base_stats = {b: {s: stats(ks, s) for s in all_scores} for b, ks in bases.items()}
    base_boot: dict[tuple[str, str], Optional[np.ndarray]] = {}
    for g in sorted(groups, key=lambda g: (not is_baseline(g[0]), g[0], g[1])):
        keys = sorted(groups[g])
        base = baseline_of(g[0])
        base_cells = {} if is_baseline(g[0]) else base_stats.get(base, {})
        cells = {}
        for s in all_scores:
            cell = stats(keys, s)
            if not cell.n:
                continue
            if base_cells and base_cells[s].n:
                cell.rel = relative_change(cell.mean, base_cells[s].mean, s)
                if s != PPL and B > 0:
                    if (base, s) not in base_boot:
                        base_boot[(base, s)] = boot(bases[base], s)
                    mine = boot(keys, s)
                    if mine is not None and base_boot[(base, s)] is not None:
                        cell.comparison = paired_bootstrap(mine, base_boot[(base, s)], cell.mean - base_cells[s].mean)
            cells[s] = cell
        rel = {s: c.rel for s, c in cells.items()}
        per_seed = []  # each seed's μΔREL against the baseline mean: the error bar of μΔREL
        if base_cells:
            for k in keys:
                r = {s: relative_change(cp.scores[s], base_cells[s].mean, s) for s, cp in chosen[k].items()
                     if s in base_cells and base_cells[s].n}
                per_seed.append(mu_delta_rel(r))
        mu_se = mean_se([v for v in per_seed if _finite(v)])[1] if per_seed else math.nan
        out.append(ArmSummary(g[0], g[1], len(keys), cells, mu_delta_rel(rel), mu_se))
    return out
