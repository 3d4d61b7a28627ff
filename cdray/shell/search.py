"""The cells as a Ray Tune run: the grid, or Tune's random or Optuna search over the sweep's axes,
ASHA on the milestone perplexities each cell reports, restored after a driver kill."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from cdray.config import SweepConfig
from cdray.config.search import RangeAxis
from cdray.dag.nodes import Cell
from cdray.dag.points import axes, point_cell
from cdray.shell.ray_exec import ray_storage
from cdray.shell.train_run import CELL_DRIVER_CPU
from cdray.sweep.plan import open_store


class MilestoneReport(TuneReportCallback):
    """What a cell's training reports to Tune: its milestones only (where the in-training eval
    split's perplexity is measured), each with `best_ppl`, the best so far: the report's
    best-checkpoint selection over the milestones reached, which ASHA compares at its rungs."""

    def __init__(self):
        super().__init__()
        self.best = math.inf

    def after_report(self, run_context, metrics, checkpoint):
        first = metrics[0]
        if "eval_ppl" not in first:
            return
        self.best = min(self.best, first["eval_ppl"])
        super().after_report(run_context, [{**first, "best_ppl": self.best}], checkpoint)


# what the driver does as each trial starts, by Tune run name: a callback holds the name only, so
# Tune can pickle it with the run (a restored run calls the hook the restoring driver registered)
_ON_START: dict[str, Callable[[dict], None]] = {}


class TrialStarts(tune.Callback):
    """Hands each trial's config to the driver as the trial starts (a search's cells are known only
    once drawn: the progress lines follow them from there)."""

    def __init__(self, name: str):
        self.name = name

    def on_trial_start(self, iteration, trials, trial, **info):
        hook = _ON_START.get(self.name)
        if hook is not None:
            hook(trial.config)


def param_space(cfg: SweepConfig, cells: list[Cell]) -> dict:
    """The grid's cells by id, or the search's axes as Tune domains (a range: uniform, or
    log-uniform; a list: a choice)."""
    if not cfg.search.samples_cells:
        return {"cell": tune.grid_search([c.id for c in cells])}
    space = {}
    for name, axis in axes(cfg).items():
        if isinstance(axis, RangeAxis):
            space[name] = (tune.loguniform if axis.log else tune.uniform)(axis.low, axis.high)
        else:
            space[name] = tune.choice(axis)
    return space


def _search_alg(cfg: SweepConfig):
    s = cfg.search
    if s.algorithm == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # a SearchGenerator: Tune leaves max_concurrent_trials to it
        return BasicVariantGenerator(random_state=s.seed, max_concurrent=cfg.ray.max_concurrent_cells)
    if s.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=s.seed)
    return None


def _scheduler(cfg: SweepConfig):
    if cfg.search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="step", max_t=cfg.train.steps, grace_period=cfg.asha_grace,
                         reduction_factor=cfg.search.reduction_factor)


@dataclass
class Outcome:
    """A Tune run's cells: finished, and stopped by ASHA (with the step and best perplexity so far)."""

    finished: list[Cell]
    stopped: list[tuple[Cell, int, float]]


def trial_cell(cfg: SweepConfig, config: dict, cells: dict[str, Cell]) -> Cell:
    """The cell a trial runs: a grid cell by id, or the cell of a point a search drew."""
    if "cell" in config:
        return cells[config["cell"]]
    return point_cell(cfg, config)


def run_trials(cfg: SweepConfig, cells: list[Cell], name: str, trial: Callable, known: list[Cell] = (),
               resources: Optional[dict] = None, on_start: Optional[Callable[[Cell], None]] = None,
               **params: Any) -> Outcome:
    """Run `trial(config, cfg=, cells=, **params)` per cell of `cells` (the grid; `known` the
    sweep's every cell, by which a restored trial is found) or per drawn point (a search)
    as one Tune run; a search or an ASHA run resumes a killed driver's Tune run (Tune's restore:
    its finished and stopped trials stay so, its search state is kept). `on_start(cell)` is
    called in the driver as each trial starts."""
    by_id = {c.id: c for c in (*known, *cells)}
    if on_start is not None:
        _ON_START[name] = lambda config: on_start(trial_cell(cfg, config, by_id))
    trainable = tune.with_resources(
        tune.with_parameters(trial, cfg=cfg, cells=by_id, **params),
        resources or {"CPU": CELL_DRIVER_CPU},  # the trial only drives a TorchTrainer
    )
    storage = ray_storage(open_store(cfg), "_ray")
    path = f"{storage['storage_path'].rstrip('/')}/{name}"
    restorable = cfg.search.samples_cells or cfg.search.scheduler == "asha"
    if restorable and tune.Tuner.can_restore(path, storage_filesystem=storage.get("storage_filesystem")):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space(cfg, cells),
                                   storage_filesystem=storage.get("storage_filesystem"))
    else:
        scheduled = cfg.search.samples_cells or cfg.search.scheduler != "none"
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg, cells),
            tune_config=tune.TuneConfig(
                # random search: its generator limits the trials itself (Tune refuses both)
                max_concurrent_trials=None if cfg.search.algorithm == "random" else cfg.ray.max_concurrent_cells,
                num_samples=cfg.search.samples if cfg.search.samples_cells else 1,
                search_alg=_search_alg(cfg), scheduler=_scheduler(cfg),
                metric=cfg.search.metric if scheduled else None, mode=cfg.search.mode if scheduled else None),
            # cdray reports the cells itself (sweep.progress); Tune's trial tables go to the log.
            # A trial on a lost node is started again elsewhere: its training resumes from its
            # newest committed milestone, its finished evaluations are in the store
            run_config=tune.RunConfig(name=name, **storage, verbose=0, callbacks=[TrialStarts(name)],
                                      failure_config=tune.FailureConfig(max_failures=3)),
        )
    try:
        results = tuner.fit()
    finally:
        _ON_START.pop(name, None)
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} sweep cell(s) failed; first: {errors[0]}")
    return sort_trials(cfg, [(trial_cell(cfg, r.config, by_id), r.metrics or {}) for r in results])


def sort_trials(cfg: SweepConfig, trials: list[tuple[Cell, dict]]) -> Outcome:
    """A finished Tune run's cells by their last report: finished, or stopped by ASHA (which stops
    none before its grace step). Any other unfinished cell means the run was interrupted (Tune
    returns from Ctrl-C as from a finished run): KeyboardInterrupt, so no cell is reported as
    stopped that was not."""
    outcome, interrupted = Outcome([], []), []
    for cell, metrics in trials:
        step = int(metrics.get("step", 0))
        if metrics.get("done"):
            outcome.finished.append(cell)
        elif cfg.search.scheduler == "asha" and step >= cfg.asha_grace:
            outcome.stopped.append((cell, step, float(metrics.get("best_ppl", math.nan))))
        else:
            interrupted.append(cell)
    if interrupted:
        raise KeyboardInterrupt(f"{len(interrupted)} cell(s) unfinished")
    return outcome


def point_param(config: dict) -> str:
    """A drawn point as one MLflow param (what `cdray report` rebuilds the cell from)."""
    return json.dumps(config, sort_keys=True)
