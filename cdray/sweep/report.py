"""`cdray report`: the arm table from MLflow, and the paper's tables and figures of one or more
sweeps written to markdown and PNG and logged to the sweep's parent run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from cdray.config import SweepConfig
from cdray.dag.graph import build_graph
from cdray.dag.nodes import baselines
from cdray.dag.store import Store
from cdray.eval.arm_table import format_table
from cdray.eval.figures import arms_figure, mixing_figure, truncation_figure
from cdray.sweep.plan import anchored, family_key, sweep_key
from cdray.tracking.runs import Tracker, TrackingError

Echo = Callable[[str], None]


def report_from_mlflow(cfg: SweepConfig, echo: Echo = print) -> list[dict]:
    """Re-print the arm table from the sweep's MLflow child runs."""
    cfg = anchored(cfg)
    tracker = Tracker(cfg.tracking)
    parent_id = tracker.find_parent(family_key(cfg), sweep_key(cfg))
    if parent_id is None:
        raise TrackingError(f"no MLflow run for sweep {cfg.name!r} in {tracker.uri}; run `cdray sweep` first")
    rows = []
    for run in tracker.children(parent_id):
        p, m = run.data.params, run.data.metrics
        if "final_ppl" not in m:
            continue
        arm = f"{p['arm']} {p.get('setting', '')}".strip()  # with its grid.fields values
        rows.append({"arm": arm, "baseline": p.get("baseline", "BASELINE"), "q": float(p["q"]), "seed": int(p["seed"]),
                     "final_ppl": m["final_ppl"], "best_ppl": m.get("best_ppl"),
                     "realised_q": m.get("realised_q")})
    echo(format_table(rows))
    for run in tracker.children(parent_id):
        if run.data.tags.get("cdray.status") == "stopped":
            p = run.data.params
            echo(f"stopped by ASHA at step {run.data.tags['cdray.stopped_at_step']}: "
                 f"{p.get('arm', '?')} {p.get('setting', '')} q={p.get('q', '?')} seed={p.get('seed', '?')} "
                 f"(best in-training eval perplexity by then {run.data.metrics.get('stopped_best_ppl', float('nan')):.2f})")
    return rows


def searched_cells(cfg: SweepConfig) -> tuple[list, list[str]]:
    """A search's cells, rebuilt from the points its MLflow child runs recorded: the finished ones
    with their BASELINEs, and a line per cell ASHA stopped."""
    from cdray.dag.points import point_cell, with_baselines

    tracker = Tracker(cfg.tracking)
    parent_id = tracker.find_parent(family_key(cfg), sweep_key(cfg))
    if parent_id is None:
        raise TrackingError(f"no MLflow run for sweep {cfg.name!r} in {tracker.uri}; run `cdray sweep` first")
    finished, stopped = [], []
    for run in tracker.children(parent_id):
        point = run.data.params.get("search_point")
        if point is None:
            continue
        cell = point_cell(cfg, json.loads(point))
        if run.data.tags.get("cdray.status") == "stopped":
            stopped.append(f"- {cell.label} q={cell.q:g} seed={cell.seed}: stopped by ASHA at step "
                           f"{run.data.tags['cdray.stopped_at_step']}")
        elif run.info.status == "FINISHED":
            finished.append(cell)
    return with_baselines(cfg, finished), sorted(stopped)


def report_dir(cfg: SweepConfig) -> Path:
    """Where a sweep's report goes: beside a local store, or in a remote store's local cache,
    never a path made from the remote URI (its query may hold credentials)."""
    opened = Store.at(cfg.store.root, cfg.store.cache)
    base = opened.root / "_reports" if opened.remote else opened.root.parent / "reports"
    return base / cfg.name


def write_report(cfgs: list[SweepConfig], echo: Echo = print, B: int = 1000) -> Path:
    """The paper's table (best and final checkpoint), bootstrap details and figures of one or more
    sweeps (several sweeps = the settings of a truncation sweep); logged to the first one's parent run."""
    from cdray.eval import report as pr
    from cdray.eval.best_baseline import verdicts
    from cdray.eval.stats import nearest_baseline, summarize

    cfgs = [anchored(c) for c in cfgs]
    main = cfgs[0]
    out = report_dir(main)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# cdray report: {', '.join(c.name for c in cfgs)}", "", pr.legend(B), ""]
    settings = []
    for cfg in cfgs:
        graph = build_graph(cfg)
        if cfg.search.samples_cells:
            graph.cells, stopped = searched_cells(cfg)
            if stopped:
                md += [f"{cfg.name}: cells ASHA stopped (no evaluation to report):", "", *stopped, ""]
        if graph.babylm_note:
            echo(f"[cdray] {cfg.name}: BabyLM scores not evaluated ({graph.babylm_note}): perplexity only")
        store = Store.at(cfg.store.root)
        cps = pr.collect(graph, store)
        base = baselines(graph.cells)
        best, final = (summarize(cps, mode, B=B, baseline_of=lambda arm: base.get(arm, nearest_baseline(arm)))
                       for mode in ("best", "final"))
        cuts = pr.context_cuts(graph, store)
        if cuts:
            md += [f"{cfg.name}: {cuts}", ""]
            echo(f"[cdray] {cfg.name}: {cuts}")
        label = pr.truncation_label(cfg)
        split = pr.by_truncation(graph.cells, best)  # one sweep with an axis over the decoding
        settings += split or [(label, best)]
        md += [pr.markdown_table(best, f"{cfg.name} (truncation: {label}): best checkpoint per (arm, task, seed)"),
               "", pr.markdown_table(final, f"{cfg.name} (truncation: {label}): final checkpoint"), "",
               f"#### {cfg.name}: paired bootstrap vs BASELINE (best checkpoints)", "", pr.bootstrap_table(best), ""]
        md += verdicts(cps, best, B=B)  # a sweep with several BASELINE settings: against the best one
    figures = [arms_figure(settings[0][1], out / "arms.png", main.name),
               truncation_figure(settings, out / "truncation.png"),
               mixing_figure(settings[0][1], out / "mixing.png")]
    for stale in ("arms.png", "truncation.png", "mixing.png"):  # a figure with nothing to show is not drawn
        if out / stale not in figures:
            (out / stale).unlink(missing_ok=True)
    figures = [f for f in figures if f is not None]
    md += [f"![{f.stem}]({f.name})" for f in figures]
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n", encoding="utf-8")
    echo(pr.markdown_table(settings[0][1], f"{main.name}: best checkpoint per (arm, task, seed)"))
    echo(f"[cdray] report: {report}" + "".join(f", {f}" for f in figures))
    tracker = Tracker(main.tracking)
    parent_id = tracker.find_parent(family_key(main), sweep_key(main)) if tracker.enabled else None
    if parent_id is not None:
        for f in [report, *figures]:
            tracker.log_file(parent_id, f, "report")
        echo(f"[cdray] logged to MLflow run {parent_id}")
    return report
