"""What a sweep will cost before it runs: the stages to build by kind, and a time estimate from
the throughputs earlier runs recorded in the store (stated defaults where there are none)."""
from __future__ import annotations

import statistics
from collections import Counter

from cdray.config import ModelConfig, SweepConfig, parse_section
from cdray.dag.graph import SweepGraph
from cdray.dag.store import Store
from cdray.models.shapes import shape_params

# parameter-tokens per second (tokens/s x non-embedding parameters), when the store has no run to
# learn from: 2 CPU cores (BENCHMARKS.md: a 1M-parameter Llama trains at ~7k tok/s on one thread)
# and one H100 (GOOD 162M, 138M matmul parameters, 377k tok/s compiled)
DEFAULT_TRAIN = {"cpu": 7.0e3 * 1.05e6, "gpu": 3.77e5 * 1.379e8}
DEFAULT_GENERATE = {"cpu": 1.5e3 * 1.05e6, "gpu": 1.32e5 * 1.379e8}  # expert+amateur pair, per actor
STAGE_SECONDS = 20.0  # start-up and bookkeeping of one stage (Ray task, Tune trial, actor pool)
EVAL_SECONDS = 60.0  # one milestone's BabyLM suite at 100 items per file, 1M parameters, one core


def _params(model: dict, vocab: int) -> int:
    return shape_params(parse_section(ModelConfig, model, "model"), vocab)["non_embedding"]


def learned_rates(store: Store, vocab: int) -> tuple[list[float], list[float]]:
    """(training, generation) parameter-token rates of the runs this store holds."""
    train, gen = [], []
    for stage, key in store.list("train"):
        m = store.manifest(stage, key)
        tps = (m["stats"].get("throughput") or {}).get("tokens_per_s")
        if tps:
            train.append(tps * _params(m["config"]["model"], m["config"].get("vocab_size", vocab)))
    for stage, key in store.list("generate"):
        m = store.manifest(stage, key)
        tps = m["stats"].get("tokens_per_actor_s")
        if tps and m["config"].get("generation"):
            gen.append(tps * 1.05e6)  # the demo-sized pair these rates were measured on
    return train, gen


def estimate(graph: SweepGraph, cfg: SweepConfig, store: Store, todo: list) -> str:
    """Lines saying what is to build, by kind, and about how long it takes here."""
    kinds = Counter(n.stage for n in todo)
    if not kinds:
        return "nothing to build: every stage is in the store"
    device = "gpu" if cfg.train.use_gpu else "cpu"
    vocab = cfg.tokenizer.vocab_size
    learned_train, learned_gen = learned_rates(store, vocab)
    train_rate = statistics.median(learned_train) if learned_train and device == "cpu" else DEFAULT_TRAIN[device]
    gen_rate = statistics.median(learned_gen) if learned_gen and device == "cpu" else DEFAULT_GENERATE[device]
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
    train_s = sum(tokens * _params(n.config["model"], vocab) / train_rate for n in todo if n.stage == "train")
    expert = _params(graph.good.config["model"], vocab)
    gen_s = kinds["generate"] * cfg.generation.token_budget * expert / (gen_rate * max(1, cfg.generation.actors))
    checkpoints = kinds["babylm"] / max(1, len(cfg.eval.tasks) + len(cfg.eval.lm_eval_tasks))
    eval_s = checkpoints * EVAL_SECONDS * expert / 1.05e6  # a checkpoint's tasks run in one Ray task
    lanes = max(1, min(cfg.ray.max_concurrent_cells, cfg.ray.num_cpus or 2)) if device == "cpu" else 1
    started = sum(kinds.values()) - kinds["babylm"] + checkpoints
    total = (train_s + eval_s) / lanes + gen_s + STAGE_SECONDS * started / lanes
    source = ("rates measured by earlier runs in this store" if learned_train and device == "cpu"
              else "stated default rates (no run in this store to learn from)")
    what = ", ".join(f"{n} {k}" for k, n in kinds.items())
    where = "on this machine" if device == "cpu" else "GPU time"
    hours = total / 3600
    return (f"to build: {what}\nestimate {where}: about {_human(total)}"
            + (f" ({hours:.1f} GPU-hours on one GPU)" if device == "gpu" else "")
            + f"; {source}, scaled to this sweep's GOOD shape: training ~{train_rate / expert:,.0f} "
              f"tok/s, generation ~{gen_rate / expert:,.0f} tok/s")


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
