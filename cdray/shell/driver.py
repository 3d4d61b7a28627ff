"""The sweep driver on Ray: shared upstream work once, the missing cells as a Ray Tune run (each
trial drives a TorchTrainer and the cell's evaluations), MLflow parent and child runs."""
from __future__ import annotations

import json
import threading
import time
from typing import Callable, Optional

import ray
from ray import tune

from cdray.common import console
from cdray.common.redaction import redact
from cdray.config import SweepConfig, to_dict
from cdray.dag.graph import Cell, SweepGraph, build_graph
from cdray.dag.nodes import baselines
from cdray.dag.points import point_cell, with_baselines
from cdray.dag.store import Store
from cdray.decode.synthetic import budget_reachable
from cdray.eval.arm_table import format_table, regime_line
from cdray.dag.run_config import execution_of
from cdray.shell.dispatch import ensure, start_builds
from cdray.shell.ray_exec import build_node, build_nodes, init_ray
from cdray.shell.search import MilestoneReport, Outcome, point_param, run_trials, trial_cell
from cdray.sweep.cell_runs import cell_row, log_arm_table, log_cell, log_upstream, metric_prefix
from cdray.sweep.plan import anchored, family_key, open_store, plan, sweep_key
from cdray.sweep.preflight import check_data
from cdray.sweep.progress import Watcher, log_path
from cdray.tracking.runs import Tracker

Echo = Callable[[str], None]


def run_cell(cell: Cell, cfg: SweepConfig, store: Store, tracker: Tracker, parent_id: Optional[str],
             builds, callbacks: tuple = (), baseline: str = "BASELINE") -> dict:
    """A cell's own work in order, logged to its child run: its inputs from outside the cell (a
    synthetic corpus, the token streams) through the sweep's builds (built once, whoever asks
    first; a BASELINE's are ready as soon as the real corpus is), then its training run and its
    evaluations."""
    run_id, _ = tracker.child_run(parent_id, cell.id, f"{cell.label} q={cell.q:g} seed={cell.seed}")
    try:
        for _, dep in cell.train.inputs:
            ensure(dep, builds, store)
        build_node(cell.train, cfg, store, run_id=run_id, callbacks=callbacks)
        build_node(cell.evaluate, cfg, store)
        build_nodes(cell.babylm, cfg, store)
        row = log_cell(tracker, run_id, cell, cfg, store, baseline)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id)
    return row


def _cell_trial(config: dict, *, cfg: SweepConfig, cells: dict[str, Cell], parent_id: Optional[str],
                baselines: dict[str, str], builds) -> None:
    cell = trial_cell(cfg, config, cells)
    store = open_store(cfg)
    tracker = Tracker(cfg.tracking)
    if "cell" in config:
        baseline = baselines[cell.label]
    else:  # a drawn point: its BASELINE has the field values that change a BASELINE's run
        baseline = point_cell(cfg, {**config, "q": 0.0}).label
        run_id, _ = tracker.child_run(parent_id, cell.id, f"{cell.label} q={cell.q:g} seed={cell.seed}")
        tracker.log_params(run_id, {**cell.params(), "setting": cell.setting, "search_point": point_param(config)})
    row = run_cell(cell, cfg, store, tracker, parent_id, builds, callbacks=(MilestoneReport(),), baseline=baseline)
    tune.report({"final_ppl": row["final_ppl"], "best_ppl": row["best_ppl"], "step": cfg.train.steps, "done": True})


class Reporting(threading.Thread):
    """The thread that reports the shared nodes as they finish: `join` waits for all of them;
    `stop` ends it early (an interrupted run), before Ray shuts down under it."""

    def __init__(self, report: Callable[[threading.Event], None]):
        super().__init__(name="cdray-upstream", daemon=True)
        self._stopping = threading.Event()
        self._report = report

    def run(self) -> None:
        self._report(self._stopping)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(10)


def build_upstream(graph: SweepGraph, cfg: SweepConfig, store: Store, tracker: Tracker,
                   parent_id: Optional[str], echo: Echo, builds, watch: Optional[Watcher] = None) -> Reporting:
    """Submit every shared node not built yet to the sweep's builds, where each starts as soon as
    its inputs are built; a thread reports and logs each as it finishes (returned, to join).
    The seed prompts and what they need come first, here: a seed split too small for the token
    budget fails before anything is trained."""
    for node in graph.prompts.walk():
        if not store.is_done(node.stage, node.key):
            _done(node, ensure(node, builds, store), graph, cfg, tracker, parent_id, echo, time.time())
    todo = [n for n in graph.upstream() if not store.is_done(n.stage, n.key)]
    started = time.time()
    refs = {ray.get(builds.ensure.remote(n))[0]: n for n in todo}
    for node in todo:
        if watch is not None and node.stage == "train":
            watch.watch_run(node.label, node)
    if todo:
        echo(f"[cdray] building {len(todo)} shared stages, each as soon as its inputs are built: "
             + ", ".join(n.label for n in todo))

    def report(stopping: threading.Event) -> None:
        waiting = list(refs)
        while waiting and not stopping.is_set():
            # a timeout, to see a stop: a thread still in Ray when it shuts down ends the process
            ready, waiting = ray.wait(waiting, num_returns=1, timeout=1.0)
            if not ready:
                continue
            node = refs[ready[0]]
            if watch is not None:
                watch.forget_run(node.label)
            try:
                _done(node, ray.get(ready[0]), graph, cfg, tracker, parent_id, echo, started)
            except Exception as e:  # noqa: BLE001 - the trial needing it fails with the same error
                echo(f"[cdray] {node.label} failed: {type(e).__name__}")

    thread = Reporting(report)
    thread.start()
    return thread


def _done(node, manifest: dict, graph: SweepGraph, cfg: SweepConfig, tracker: Tracker,
          parent_id: Optional[str], echo: Echo, since: float) -> None:
    """Report a built shared node: its time and numbers on the sweep's MLflow run, and the checks
    its figures allow (the prompts' budget, a corpus short of its budget)."""
    echo(f"[cdray]   {node.label}: done in {manifest.get('seconds', 0.0):.1f}s "
         f"({time.time() - since:.0f}s into the sweep)")
    log_upstream(tracker, parent_id, node, manifest)
    if node.stage == "prompts" and graph.generations:
        budget_reachable(cfg.generation, manifest["stats"]["prompts"])
    if node.stage == "generate" and not manifest["stats"].get("budget_reached", True):
        short = cfg.generation.token_budget - manifest["stats"]["new_tokens"]
        echo(f"[cdray] WARNING: {node.label} holds {manifest['stats']['new_tokens']} new tokens, "
             f"{short} short of generation.token_budget={cfg.generation.token_budget} (its rows "
             f"stopped early at EOS): its arms train on a smaller synthetic corpus")
        tracker.log_metrics(parent_id, [(f"{metric_prefix(node)}.shortfall_tokens", float(short), 0)])


def run_sweep(cfg: SweepConfig, *, echo: Optional[Echo] = None, use_tune: bool = True,
              verbose: bool = False) -> list[dict]:
    """Plan, build shared upstream work once, run missing cells, print and log the arm table.
    Ray's, Tune's and MLflow's own output goes to a log file under the store unless `verbose`
    (or ray.log_to_driver); cdray's lines and progress stay on the terminal."""
    echo = echo or console.say
    cfg = anchored(cfg)
    check_data(cfg, echo)  # before any work: data that exists and reaches every node
    store = open_store(cfg)
    store.check_writable()
    graph = build_graph(cfg)
    with console.quiet(log_path(store, cfg.name), verbose=verbose or cfg.ray.log_to_driver):
        return _run(cfg, store, graph, echo, use_tune)


def _run(cfg: SweepConfig, store: Store, graph: SweepGraph, echo: Echo, use_tune: bool) -> list[dict]:
    tracker = Tracker(cfg.tracking)
    key = sweep_key(cfg)
    resolved = redact(to_dict(cfg))
    recipe = {k: v for k, v in resolved.items() if k not in ("grid", "search")}  # what a grown grid keeps
    parent_id = tracker.parent_run(cfg.name, family_key(cfg), key, {"sweep": recipe})  # creates the DB in the driver
    tracker.log_text(parent_id, json.dumps(resolved, indent=1, sort_keys=True), "sweep_config.json")
    rows = plan(graph, store)
    todo = sum(not r.cached for r in rows)
    echo(f"[cdray] sweep {cfg.name!r} ({key}): {len(graph.cells)} cells, {len(rows)} stages, {todo} to build")
    for r, info in graph.small_info.items():
        tracker.log_params(parent_id, {f"small_r{r:g}": info})
    if graph.babylm_note:
        echo(f"[cdray] BabyLM evaluation skipped ({graph.babylm_note}): perplexity only")
    base = baselines(graph.cells)
    searching = cfg.search.samples_cells
    pending = [c for c in graph.cells
               if not (all(store.is_done(n.stage, n.key) for n in (c.evaluate, *c.babylm))
                       and tracker.child_finished(parent_id, c.id))]
    # cells that read no synthetic corpus first: they can start at once, and a trial waiting for
    # its corpus would hold one of ray.max_concurrent_cells meanwhile
    pending.sort(key=lambda c: c.train.has_input("synthetic"))
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    outcome = Outcome([], [])
    with Watcher(store, cfg.train.steps, tokens_per_step) as watch:
        if todo or pending or searching:
            init_ray(cfg.ray)
            builds = start_builds(execution_of(cfg), cfg.tracking, key, parent_id)
            reporting = build_upstream(graph, cfg, store, tracker, parent_id, echo, builds, watch)
            try:
                if searching:
                    echo(f"[cdray] a {cfg.search.algorithm} search of {cfg.search.samples} cell(s) as a Ray Tune run"
                         + (" with ASHA" if cfg.search.scheduler == "asha" else "")
                         + ": each cell's inputs are built as its point asks for them")
                elif pending:
                    echo(f"[cdray] running {len(pending)} cell(s)" + (" as a Ray Tune run" if use_tune else "")
                         + ", each as soon as its inputs are built")
                    watch.watch_cells(pending)
                if use_tune and (pending or searching):
                    outcome = run_trials(cfg, pending, f"sweep-{cfg.name}-{key}", _cell_trial, known=graph.cells,
                                         on_start=watch.watch_cell if searching else None,
                                         parent_id=parent_id, baselines=base, builds=builds)
                    mark_stopped(outcome, tracker, parent_id)
                    if searching:  # a search draws points, not their BASELINEs: those are run here
                        run_baselines(cfg, outcome, store, tracker, parent_id, builds)
                elif pending:
                    for cell in pending:
                        run_cell(cell, cfg, store, tracker, parent_id, builds, baseline=base[cell.label])
                reporting.join()
            finally:  # also when interrupted: no thread left in Ray as it shuts down
                reporting.stop()
            for node in graph.upstream():  # a shared node no cell needed that failed: its error
                ensure(node, builds, store)
            ray.kill(builds)  # its name is the sweep's: a next run from this process starts its own
            watch.tick()  # the last cells' lines
    # the grid's every cell (those finished before this run too); a search's drawn ones
    cells = with_baselines(cfg, outcome.finished) if searching else graph.cells
    base = baselines(cells) if searching else base
    results = [row for c in cells if (row := cell_row(c, store, base[c.label])) is not None]
    table = format_table(results)
    echo(table)
    for line in stopped_lines(outcome):
        echo(line)
    echo(regime_line(epochs_over_real(graph, store, cfg), len({r["seed"] for r in results})))
    log_arm_table(tracker, parent_id, results, cfg.name)
    tracker.finish(parent_id)
    return results


def run_baselines(cfg: SweepConfig, outcome: Outcome, store: Store, tracker: Tracker, parent_id: Optional[str],
                  builds) -> None:
    """The BASELINE cells a search's finished cells are compared with, where not run yet (a
    BASELINE of the GOOD's seed and recipe is the GOOD's own run: only its evaluation is new)."""
    drawn = {c.id for c in outcome.finished}
    for cell in with_baselines(cfg, outcome.finished):
        if cell.id in drawn or (store.is_done(cell.evaluate.stage, cell.evaluate.key)
                                and tracker.child_finished(parent_id, cell.id)):
            continue
        console.say(f"[cdray] cell {cell.id}: the BASELINE the search's cells are compared with")
        run_cell(cell, cfg, store, tracker, parent_id, builds, baseline=cell.label)


def mark_stopped(outcome: Outcome, tracker: Tracker, parent_id: Optional[str]) -> None:
    """A cell ASHA stopped: its child run ends KILLED, tagged with the step it reached and its best
    milestone perplexity by then."""
    for cell, step, best in outcome.stopped:
        run_id, _ = tracker.child_run(parent_id, cell.id, f"{cell.label} q={cell.q:g} seed={cell.seed}")
        tracker.set_tags(run_id, {"cdray.status": "stopped", "cdray.stopped_at_step": str(step)})
        tracker.log_metrics(run_id, [("stopped_best_ppl", best, step)])
        tracker.finish(run_id, "KILLED")


def stopped_lines(outcome: Outcome) -> list[str]:
    """The cells ASHA stopped, under the arm table (they have no evaluation to put in it)."""
    return [f"stopped by ASHA at step {step}: {cell.label} q={cell.q:g} seed={cell.seed} "
            f"(best in-training eval perplexity by then {best:.2f})"
            for cell, step, best in sorted(outcome.stopped, key=lambda s: (s[1], s[0].label))]


def epochs_over_real(graph: SweepGraph, store: Store, cfg: SweepConfig) -> float:
    """Passes over the real train split one run makes (what the paper's regime is about)."""
    node = graph.tokens_train
    real = store.manifest(node.stage, node.key)["stats"]["tokens"] if store.is_done(node.stage, node.key) else 0
    return cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len / real if real else 0.0
