"""Ray Tune sweep driver: shared upstream work once, missing cells as Tune trials, MLflow runs."""
from __future__ import annotations

import calendar
import json
import re
import time
from pathlib import Path
from typing import Callable, Optional

from ray import tune

from cdray.config import SweepConfig, to_dict
from cdray.generation import budget_reachable
from cdray.pipeline import Cell, SweepGraph, build_graph, format_plan, plan
from cdray.ray_exec import CELL_DRIVER_CPU, build_node, build_nodes, init_ray, open_store, ray_storage
from cdray.report import format_table
from cdray.store import Store, stage_key
from cdray.redaction import redact
from cdray.tracking import Tracker

Echo = Callable[[str], None]


def anchored(cfg: SweepConfig) -> SweepConfig:
    """Resolve relative store / tracking paths against the driver's cwd (trials run elsewhere)."""
    from dataclasses import replace

    from cdray.tracking import resolve_uri

    from pathlib import Path

    opened = Store.at(cfg.store.root, cfg.store.cache)
    store = replace(cfg.store, root=opened.location, cache=str(opened.root) if opened.remote else None)
    tracking = replace(cfg.tracking, uri=resolve_uri(cfg.tracking.uri))
    ev = cfg.eval
    if ev.babylm_dir:
        ev = replace(ev, babylm_dir=str(Path(ev.babylm_dir).expanduser().resolve()))
    return replace(cfg, store=store, tracking=tracking, eval=ev)


def sweep_key(cfg: SweepConfig) -> str:
    """Identity of a sweep for MLflow: everything but where it runs and is stored."""
    d = to_dict(cfg)
    for plumbing in ("store", "tracking", "ray", "profile"):
        d.pop(plumbing)
    for where in ("babylm_dir", "fetch_url", "fetch_sha256"):  # the babylm nodes hash the data itself
        d["eval"].pop(where)
    d["grid"].pop("max_cells")  # a guard on the grid's size, not part of it
    return stage_key("sweep", 1, d, {})


def model_sizes(model_cfg: dict, vocab: int) -> dict:
    from cdray.config import ModelConfig, parse_section
    from cdray.shapes import shape_params

    counts = shape_params(parse_section(ModelConfig, model_cfg, "model"), vocab)
    return {"params_total": counts["total"], "params_non_embedding": counts["non_embedding"]}


def cell_row(cell: Cell, store: Store) -> Optional[dict]:
    """The numbers of a finished cell, read from the store (None if not built)."""
    if not store.is_done(cell.evaluate.stage, cell.evaluate.key):
        return None
    ev = store.manifest(cell.evaluate.stage, cell.evaluate.key)["stats"]
    tr = store.manifest(cell.train.stage, cell.train.key)["stats"]
    return {**cell.params(), "final_ppl": ev["final_ppl"], "best_ppl": ev["best_ppl"],
            "best_step": ev["best_step"], "realised_q": tr.get("realised_q")}


def log_cell(tracker: Tracker, run_id: Optional[str], cell: Cell, cfg: SweepConfig, store: Store) -> dict:
    """Params, metrics, tags and dataset inputs of a finished cell's child run."""
    row = cell_row(cell, store)
    train_dir = store.fetch(cell.train.stage, cell.train.key)
    tr = store.manifest(cell.train.stage, cell.train.key)["stats"]
    params = {**cell.params(), **model_sizes(cell.train.config["model"], cfg.tokenizer.vocab_size),
              "model": cell.train.config["model"], "steps": cfg.train.steps,
              "batch_size": cfg.train.batch_size, "seq_len": cfg.train.seq_len,
              "realised_q": tr.get("realised_q"), "mixing": cfg.train.mixing}
    tracker.log_params(run_id, params)
    metrics = []
    curve = train_dir / "metrics.jsonl"
    if curve.is_file():
        for line in curve.read_text().splitlines():
            m = json.loads(line)
            metrics.append(("train_loss", m["loss"], m["step"]))
            metrics.append(("lr", m["lr"], m["step"]))
    ms = train_dir / "milestones.jsonl"
    if ms.is_file():
        for line in ms.read_text().splitlines():
            m = json.loads(line)
            metrics.append(("eval_loss", m.get("eval_loss"), m["step"]))
    ev = store.manifest(cell.evaluate.stage, cell.evaluate.key)["stats"]
    for m in ev["milestones"]:
        metrics.append(("eval_ppl", m["ppl"], m["step"]))
    for node in cell.babylm:
        if store.is_done(node.stage, node.key):
            stats = store.manifest(node.stage, node.key)["stats"]
            for name, value in stats["scores"].items():
                metrics.append((f"babylm.{name}", value, stats["step"]))
    metrics += [("final_ppl", row["final_ppl"], 0), ("best_ppl", row["best_ppl"], 0),
                ("realised_q", tr.get("realised_q"), 0)]
    speed = tr.get("throughput") or {}  # the loop's own step clock (steady-state steps only)
    metrics += [(f"train_{k}", speed[k], 0) for k in ("tokens_per_s", "data_wait_share")
                if speed.get(k) is not None]
    created = store.manifest(cell.evaluate.stage, cell.evaluate.key)["created"]
    stamp = int(calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) * 1000)
    tracker.log_metrics(run_id, metrics, timestamp_ms=stamp)  # idempotent: a re-run logs no duplicates
    tags = {"cdray.train_key": cell.train.key, "cdray.evaluate_key": cell.evaluate.key,
            "cdray.arm": cell.arm}
    real = cell.train.input("real")
    tracker.log_dataset(run_id, "real-train", store.url(real.stage, real.key), real.key, "training")
    if cell.train.has_input("synthetic"):
        syn = cell.train.input("synthetic")
        tags["cdray.synthetic_key"] = syn.key
        tracker.log_dataset(run_id, f"synthetic {cell.arm}", store.url(syn.stage, syn.key),
                            syn.key, "training")
    tracker.set_tags(run_id, tags)
    return row


def run_cell(cell: Cell, cfg: SweepConfig, store: Store, tracker: Tracker, parent_id: Optional[str],
             callbacks: tuple = ()) -> dict:
    """A cell's own work in order (its training run, then its evaluations: every input it reads
    from outside the cell is upstream work, built before any cell), logged to its child run."""
    run_id, _ = tracker.child_run(parent_id, cell.id, cell.id)
    try:
        build_node(cell.train, cfg, store, run_id=run_id, callbacks=callbacks)
        build_node(cell.evaluate, cfg, store)
        build_nodes(cell.babylm, cfg, store)
        row = log_cell(tracker, run_id, cell, cfg, store)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id)
    return row


def _cell_trial(config: dict, *, cfg: SweepConfig, cells: dict[str, Cell], parent_id: Optional[str]) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    cell = cells[config["cell"]]
    store = open_store(cfg)
    tracker = Tracker(cfg.tracking)
    row = run_cell(cell, cfg, store, tracker, parent_id, callbacks=(TuneReportCallback(),))
    tune.report({"final_ppl": row["final_ppl"], "best_ppl": row["best_ppl"], "done": True})


def run_cells_with_tune(cfg: SweepConfig, cells: list[Cell], parent_id: Optional[str], name: str) -> None:
    """One Tune trial per missing cell; each trial drives a TorchTrainer and the evaluation."""
    trainable = tune.with_resources(
        tune.with_parameters(_cell_trial, cfg=cfg, cells={c.id: c for c in cells}, parent_id=parent_id),
        {"CPU": CELL_DRIVER_CPU},  # the trial only drives a TorchTrainer, whose worker holds the real CPU
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search([c.id for c in cells])},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.ray.max_concurrent_cells),
        run_config=tune.RunConfig(name=name, **ray_storage(open_store(cfg), "_ray"),
                                  verbose=1),
    )
    results = tuner.fit()
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} sweep cell(s) failed; first: {errors[0]}")


def build_upstream(graph: SweepGraph, cfg: SweepConfig, store: Store, tracker: Tracker,
                   parent_id: Optional[str], echo: Echo) -> None:
    for node in graph.upstream():
        if store.is_done(node.stage, node.key):
            continue
        started = time.time()
        echo(f"[cdray] building {node.label} ({node.stage}/{node.key}) ...")
        manifest = build_node(node, cfg, store, run_id=parent_id,
                              progress=_live_metrics(tracker, parent_id, node, echo))
        echo(f"[cdray]   done in {time.time() - started:.1f}s")
        _log_upstream(tracker, parent_id, node, manifest)
        if node.stage == "prompts" and graph.generations:
            budget_reachable(cfg.generation, manifest["stats"]["prompts"])
        if node.stage == "generate" and not manifest["stats"].get("budget_reached", True):
            short = cfg.generation.token_budget - manifest["stats"]["new_tokens"]
            echo(f"[cdray] WARNING: {node.label} holds {manifest['stats']['new_tokens']} new tokens, "
                 f"{short} short of generation.token_budget={cfg.generation.token_budget} (its rows "
                 f"stopped early at EOS): its arms train on a smaller synthetic corpus")
            tracker.log_metrics(parent_id, [(f"{_metric_prefix(node)}.shortfall_tokens", float(short), 0)])


def _metric_prefix(node) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", node.label).strip("_")


def _live_metrics(tracker: Tracker, parent_id: Optional[str], node,
                  echo: Echo) -> Callable[[dict], None]:
    """A shared stage's progress figures as parent-run metric histories, step = the "shards"
    committed: a long generate stage can be watched in MLflow. A tracking failure mid-stage is
    reported once and never stops the stage (its committed work would survive, but the pool
    would be stopped)."""
    prefix, failed = _metric_prefix(node), []

    def log(figures: dict) -> None:
        if failed:
            return
        try:
            tracker.log_metrics(parent_id, [(f"{prefix}.progress.{k}", v, figures["shards"])
                                            for k, v in figures.items() if k != "shards"])
        except Exception as e:  # noqa: BLE001 - any tracking error; the stage matters more
            failed.append(e)
            # the error's type only: its text may hold the tracking URI's credentials
            echo(f"[cdray] MLflow: progress of {node.label} is not logged from here on "
                 f"({type(e).__name__})")

    return log


def _log_upstream(tracker: Tracker, parent_id: Optional[str], node, manifest: dict) -> None:
    """Numbers of a shared stage as parent-run metrics, its key as a parameter."""
    stats = manifest.get("stats", {})
    prefix = _metric_prefix(node)
    numbers = [(f"{prefix}.{k}", float(v), 0) for k, v in stats.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    tracker.log_metrics(parent_id, numbers)
    tracker.log_params(parent_id, {f"{prefix}.key": node.key})


def run_sweep(cfg: SweepConfig, *, echo: Echo = print, use_tune: bool = True) -> list[dict]:
    """Plan, build shared upstream work once, run missing cells, print and log the arm table."""
    cfg = anchored(cfg)
    store = open_store(cfg)
    store.check_writable()
    graph = build_graph(cfg)
    tracker = Tracker(cfg.tracking)
    key = sweep_key(cfg)
    parent_id = tracker.parent_run(cfg.name, key, {"sweep": redact(to_dict(cfg))})  # creates the DB in the driver
    rows = plan(graph, store)
    todo = sum(not r.cached for r in rows)
    echo(f"[cdray] sweep {cfg.name!r} ({key}): {len(graph.cells)} cells, {len(rows)} stages, {todo} to build")
    for r, info in graph.small_info.items():
        tracker.log_params(parent_id, {f"small_r{r:g}": info})
    if graph.babylm_note:
        echo(f"[cdray] BabyLM evaluation skipped ({graph.babylm_note}): perplexity only")
    pending = [c for c in graph.cells
               if not (all(store.is_done(n.stage, n.key) for n in (c.evaluate, *c.babylm))
                       and tracker.child_finished(parent_id, c.id))]
    if todo or pending:
        init_ray(cfg.ray)
        build_upstream(graph, cfg, store, tracker, parent_id, echo)
    if pending:
        echo(f"[cdray] running {len(pending)} cell(s)" + (" as a Ray Tune run" if use_tune else ""))
        if use_tune:
            run_cells_with_tune(cfg, pending, parent_id, name=f"sweep-{cfg.name}-{key}")
        else:
            for cell in pending:
                run_cell(cell, cfg, store, tracker, parent_id)
    results = [row for c in graph.cells if (row := cell_row(c, store)) is not None]
    table = format_table(results)
    echo(table)
    tracker.log_text(parent_id, table, "arm_table.txt")
    tracker.finish(parent_id)
    return results


def print_plan(cfg: SweepConfig, echo: Echo = print) -> None:
    graph = build_graph(cfg)
    echo(format_plan(plan(graph, open_store(cfg))))
    if graph.babylm_note:
        echo(f"BabyLM evaluation skipped ({graph.babylm_note}): perplexity only")
    echo(cells_summary(graph.cells))


def cells_summary(cells, list_up_to: int = 8) -> str:
    """One line: every cell id for a small sweep, else its arms (with their q) and seeds."""
    if len(cells) <= list_up_to:
        return f"cells: {len(cells)} ({', '.join(c.id for c in cells)})"
    arms = dict.fromkeys(f"{c.arm} q={c.q:g}" for c in cells)
    seeds = dict.fromkeys(c.seed for c in cells)
    return (f"cells: {len(cells)}: {len(arms)} arms ({', '.join(arms)}) "
            f"x {len(seeds)} seeds ({', '.join(map(str, seeds))})")


def report_from_mlflow(cfg: SweepConfig, echo: Echo = print) -> list[dict]:
    """Re-print the arm table from the sweep's MLflow child runs."""
    cfg = anchored(cfg)
    tracker = Tracker(cfg.tracking)
    parent_id = tracker.find_parent(sweep_key(cfg))
    if parent_id is None:
        raise SystemExit(f"cdray: error: no MLflow run for sweep {cfg.name!r} in {tracker.uri}; run `cdray sweep` first")
    rows = []
    for run in tracker.children(parent_id):
        p, m = run.data.params, run.data.metrics
        if "final_ppl" not in m:
            continue
        rows.append({"arm": p["arm"], "q": float(p["q"]), "seed": int(p["seed"]),
                     "final_ppl": m["final_ppl"], "best_ppl": m.get("best_ppl"),
                     "realised_q": m.get("realised_q")})
    echo(format_table(rows))
    return rows



def report_dir(cfg: SweepConfig) -> Path:
    """Where a sweep's report goes: beside a local store, or in a remote store's local cache,
    never a path made from the remote URI (its query may hold credentials)."""
    opened = Store.at(cfg.store.root, cfg.store.cache)
    base = opened.root / "_reports" if opened.remote else opened.root.parent / "reports"
    return base / cfg.name


def write_report(cfgs: list[SweepConfig], echo: Echo = print, B: int = 1000) -> Path:
    """The paper's table (best and final checkpoint), bootstrap details and figures of one or more
    sweeps (several sweeps = the settings of a truncation sweep); logged to the first one's parent run."""
    from cdray import paper_report as pr
    from cdray.stats import summarize

    cfgs = [anchored(c) for c in cfgs]
    main = cfgs[0]
    out = report_dir(main)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# cdray report: {', '.join(c.name for c in cfgs)}", "", pr.legend(B), ""]
    settings = []
    for cfg in cfgs:
        graph = build_graph(cfg)
        if graph.babylm_note:
            echo(f"[cdray] {cfg.name}: BabyLM scores not evaluated ({graph.babylm_note}): perplexity only")
        store = Store.at(cfg.store.root)
        cps = pr.collect(graph, store)
        best, final = summarize(cps, "best", B=B), summarize(cps, "final", B=B)
        cuts = pr.context_cuts(graph, store)
        if cuts:
            md += [f"{cfg.name}: {cuts}", ""]
            echo(f"[cdray] {cfg.name}: {cuts}")
        label = pr.truncation_label(cfg)
        settings.append((label, best))
        md += [pr.markdown_table(best, f"{cfg.name} (truncation: {label}): best checkpoint per (arm, task, seed)"),
               "", pr.markdown_table(final, f"{cfg.name} (truncation: {label}): final checkpoint"), "",
               f"#### {cfg.name}: paired bootstrap vs BASELINE (best checkpoints)", "", pr.bootstrap_table(best), ""]
    figures = [pr.truncation_figure(settings, out / "truncation.png"), pr.mixing_figure(settings[0][1], out / "mixing.png")]
    figures = [f for f in figures if f is not None]
    md += [f"![{f.stem}]({f.name})" for f in figures]
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n", encoding="utf-8")
    echo(pr.markdown_table(settings[0][1], f"{main.name}: best checkpoint per (arm, task, seed)"))
    echo(f"[cdray] report: {report}" + "".join(f", {f}" for f in figures))
    tracker = Tracker(main.tracking)
    parent_id = tracker.find_parent(sweep_key(main)) if tracker.enabled else None
    if parent_id is not None:
        for f in [report, *figures]:
            tracker.log_file(parent_id, f, "report")
        echo(f"[cdray] logged to MLflow run {parent_id}")
    return report
