"""What a sweep logs to MLflow: a finished cell's child run, and the shared stages' numbers and
live progress on the parent run."""
from __future__ import annotations

import calendar
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from cdray.config import ModelConfig, SweepConfig, parse_section
from cdray.dag.graph import Cell
from cdray.dag.store import Store
from cdray.eval.arm_table import aggregate, format_markdown, format_table
from cdray.eval.figures import arm_table_figure
from cdray.models.checkpoints import LOGS
from cdray.models.shapes import shape_params
from cdray.tracking.runs import Tracker

Echo = Callable[[str], None]


def model_sizes(model_cfg: dict, vocab: int) -> dict:
    counts = shape_params(parse_section(ModelConfig, model_cfg, "model"), vocab)
    return {"params_total": counts["total"], "params_non_embedding": counts["non_embedding"]}


def cell_row(cell: Cell, store: Store, baseline: str = "BASELINE") -> Optional[dict]:
    """The numbers of a finished cell, read from the store (None if not built); its arm is shown
    with its grid.fields values, and compared with `baseline` (cdray.dag.nodes.baselines)."""
    if not store.is_done(cell.evaluate.stage, cell.evaluate.key):
        return None
    ev = store.manifest(cell.evaluate.stage, cell.evaluate.key)["stats"]
    tr = store.manifest(cell.train.stage, cell.train.key)["stats"]
    return {**cell.params(), "arm": cell.label, "baseline": baseline, "final_ppl": ev["final_ppl"],
            "best_ppl": ev["best_ppl"], "best_step": ev["best_step"], "realised_q": tr.get("realised_q")}


def cell_config(cell: Cell) -> dict:
    """What the cell's stages were keyed by: its training run's config, its evaluation's and, for a
    mixed run, its synthetic corpus's generation settings (the resolved config, axis values set)."""
    out = {"train": cell.train.config, "evaluate": cell.evaluate.config}
    if cell.train.has_input("synthetic"):
        out["generate"] = cell.train.input("synthetic").input("generate").config
    return out


def log_cell(tracker: Tracker, run_id: Optional[str], cell: Cell, cfg: SweepConfig, store: Store,
             baseline: str = "BASELINE") -> dict:
    """Params, metrics, tags and dataset inputs of a finished cell's child run (its recipe, decoding
    settings and grid.fields values among the params, its resolved config as an artifact)."""
    row = cell_row(cell, store, baseline)
    train_dir = store.fetch(cell.train.stage, cell.train.key, lambda rel: rel in LOGS)  # not its weights
    tr = store.manifest(cell.train.stage, cell.train.key)["stats"]
    resolved = cell_config(cell)
    recipe = resolved["train"]["recipe"]
    params = {**cell.params(), **model_sizes(cell.train.config["model"], cell.train.config["vocab_size"]),
              "model": cell.train.config["model"], "setting": cell.setting, "baseline": baseline,
              **{k: recipe[k] for k in ("steps", "batch_size", "seq_len", "lr", "weight_decay", "warmup_steps",
                                       "precision", "mixing", "checkpoint_words") if k in recipe},
              "realised_q": tr.get("realised_q")}
    if "generate" in resolved:
        decoding = resolved["generate"]["generation"].get("decoding", {})
        params.update({f"decoding.{k}": v for k, v in decoding.items()})
    tracker.log_params(run_id, params)
    tracker.log_text(run_id, json.dumps(resolved, indent=1, sort_keys=True), "cell_config.json")
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
            metrics.append(("words_seen", m.get("words"), m["step"]))  # with train.checkpoint_words
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


def metric_prefix(node) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", node.label).strip("_")


def live_metrics(tracker: Tracker, parent_id: Optional[str], node,
                  echo: Echo) -> Callable[[dict], None]:
    """A shared stage's progress figures as parent-run metric histories, step = the "shards"
    committed: a long generate stage can be watched in MLflow. A tracking failure mid-stage is
    reported once and never stops the stage (its committed work would survive, but the pool
    would be stopped)."""
    prefix, failed = metric_prefix(node), []

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


def log_upstream(tracker: Tracker, parent_id: Optional[str], node, manifest: dict) -> None:
    """Numbers of a shared stage as parent-run metrics, its key as a parameter."""
    stats = manifest.get("stats", {})
    prefix = metric_prefix(node)
    numbers = [(f"{prefix}.{k}", float(v), 0) for k, v in stats.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    tracker.log_metrics(parent_id, numbers)
    tracker.log_params(parent_id, {f"{prefix}.key": node.key})


def log_arm_table(tracker: Tracker, parent_id: Optional[str], results: list[dict], name: str) -> None:
    """The arm table on the sweep's parent run: text, markdown and a picture as artifacts, and as
    the run's description (MLflow shows it on the run's page, above its children to compare)."""
    if not tracker.enabled or parent_id is None:
        return
    tracker.log_text(parent_id, format_table(results), "arm_table.txt")
    markdown = format_markdown(results)
    tracker.log_text(parent_id, markdown, "arm_table.md")
    with tempfile.TemporaryDirectory() as tmp:
        png = arm_table_figure(aggregate(results), Path(tmp) / "arm_table.png", name)
        if png is not None:
            tracker.log_file(parent_id, png)
    tracker.set_tags(parent_id, {"mlflow.note.content": f"## {name}: the arm table\n\n{markdown}\n\n"
                                 "To compare the arms: select this run's child runs (one per arm and seed) "
                                 "and click Compare."})
