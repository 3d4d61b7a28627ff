"""What a sweep will cost before it runs: the stages to build by kind, and a time estimate from
the throughputs earlier runs recorded in the store (stated defaults where there are none; on a GPU,
evaluation at a rate derived from training's, cdray.sweep.eval_cost)."""
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


def non_embedding_params(model: dict, vocab: int) -> int:
    """A model section's parameters outside the embeddings (what a token's compute scales with)."""
    return shape_params(parse_section(ModelConfig, model, "model"), vocab)["non_embedding"]


def learned_rates(store: Store, vocab: int) -> tuple[list[float], list[float]]:
    """(training, generation) parameter-token rates of the runs this store holds."""
    train, gen = [], []
    for stage, key in store.list("train"):
        m = store.manifest(stage, key)
        tps = (m["stats"].get("throughput") or {}).get("tokens_per_s")
        if tps:
            train.append(tps * non_embedding_params(m["config"]["model"], m["config"].get("vocab_size", vocab)))
    for stage, key in store.list("generate"):
        m = store.manifest(stage, key)
        tps = m["stats"].get("tokens_per_actor_s")
        if tps and m["config"].get("generation"):
            gen.append(tps * 1.05e6)  # the demo-sized pair these rates were measured on
    return train, gen


def reckon(graph: SweepGraph, cfg: SweepConfig, store: Store, todo: list) -> dict:
    """Seconds of what is to build, by part ("train", "generate", "perplexity", "babylm",
    "stages", "total": on this machine's lanes, or on one GPU), with the rates and sizes used."""
    kinds = Counter(n.stage for n in todo)
    device = "gpu" if cfg.train.use_gpu else "cpu"
    vocab = cfg.tokenizer.vocab_size
    learned_train, learned_gen = learned_rates(store, vocab)
    learned = bool(learned_train) and device == "cpu"
    train_rate = statistics.median(learned_train) if learned else DEFAULT_TRAIN[device]
    gen_rate = statistics.median(learned_gen) if learned_gen and device == "cpu" else DEFAULT_GENERATE[device]
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
    train_s = sum(tokens * non_embedding_params(n.config["model"], vocab) / train_rate
                  for n in todo if n.stage == "train")
    expert = non_embedding_params(graph.good.config["model"], vocab)
    gen_s = kinds["generate"] * cfg.generation.token_budget * expert / (gen_rate * max(1, cfg.generation.actors))
    checkpoints = kinds["babylm"] / max(1, len(cfg.eval.tasks) + len(cfg.eval.lm_eval_tasks))
    ev = evaluation(cfg, store, todo, checkpoints, train_rate, device)
    if device == "cpu":  # the BabyLM suite as measured on one core (the derived model is the GPU's)
        ev["babylm"] = checkpoints * EVAL_SECONDS * expert / 1.05e6  # a checkpoint's tasks run in one Ray task
    lanes = max(1, min(cfg.ray.max_concurrent_cells, cfg.ray.num_cpus or 2)) if device == "cpu" else 1
    started = sum(kinds.values()) - kinds["babylm"] + checkpoints
    stages_s = STAGE_SECONDS * started / lanes
    total = (train_s + ev["perplexity"] + ev["babylm"]) / lanes + gen_s + stages_s
    return {"kinds": kinds, "device": device, "learned": learned, "train_rate": train_rate, "gen_rate": gen_rate,
            "expert": expert, "train": train_s, "generate": gen_s, "stages": stages_s, "total": total, **ev}


def estimate(graph: SweepGraph, cfg: SweepConfig, store: Store, todo: list) -> str:
    """Lines saying what is to build, by kind, and about how long it takes here."""
    if not todo:
        return "nothing to build: every stage is in the store"
    r = reckon(graph, cfg, store, todo)
    source = ("rates measured by earlier runs in this store" if r["learned"]
              else "stated default rates (no run in this store to learn from)")
    what = ", ".join(f"{n} {k}" for k, n in r["kinds"].items())
    gpu = r["device"] == "gpu"
    total, expert = r["total"], r["expert"]
    line = gpu_evaluation_line(cfg, r) if gpu else ""
    return (f"to build: {what}\nestimate {'GPU time' if gpu else 'on this machine'}: about {human_duration(total)}"
            + (f" ({total / 3600:.1f} GPU-hours on one GPU)" if gpu else "")
            + f"; {source}, scaled to this sweep's GOOD shape: training ~{r['train_rate'] / expert:,.0f} "
              f"tok/s, generation ~{r['gen_rate'] / expert:,.0f} tok/s"
            + (f"\n{line}" if line else ""))


def eval_split_tokens(cfg: SweepConfig, store: Store, node) -> tuple[float, str]:
    """(tokens a perplexity pass reads per milestone, where that figure comes from)."""
    from cdray.sweep import eval_cost

    split = node.input("eval")
    if store.is_done(split.stage, split.key):
        tokens, source = float(store.manifest(split.stage, split.key)["stats"]["tokens"]), "the built eval split"
    elif cfg.corpus.total_words:
        tokens = cfg.corpus.total_words * cfg.corpus.eval_fraction * eval_cost.TOKENS_PER_WORD
        source = "corpus.total_words x eval_fraction"
    else:
        tokens, source = eval_cost.EVAL_SPLIT_TOKENS, "an assumed eval split"
    if cfg.eval.max_blocks:
        tokens = min(tokens, cfg.eval.max_blocks * cfg.train.seq_len)
    return tokens, source


def evaluation(cfg: SweepConfig, store: Store, todo: list, checkpoints: float, train_rate: float,
               device: str) -> dict:
    """Seconds of the perplexity and BabyLM stages to build at the forward rate derived from
    `train_rate` (cdray.sweep.eval_cost), with the figures they come from."""
    from cdray.sweep import eval_cost

    rate = eval_cost.forward_rate(train_rate, cfg.eval.precision, device)
    out = {"eval_rate": rate, "perplexity": 0.0, "babylm": 0.0, "suite": None, "split": None,
           "perplexity_runs": 0, "checkpoints": checkpoints}
    runs = [n for n in todo if n.stage == "evaluate"] or [n for n in todo if n.stage == "babylm"]
    if not runs:
        return out
    params = non_embedding_params(runs[0].input("run").config["model"], cfg.tokenizer.vocab_size)
    out["params"] = params
    for n in todo:
        if n.stage == "evaluate":
            tokens, out["split"] = eval_split_tokens(cfg, store, n)
            out["perplexity"] += eval_cost.perplexity_seconds(
                tokens, len(n.input("run").config["milestones"]), params, rate)
            out["perplexity_runs"] += 1
    if checkpoints and cfg.eval.babylm_dir and cfg.eval.tasks:
        out["suite"] = s = eval_cost.suite(cfg.eval.babylm_dir, cfg.eval.tasks, cfg.eval.max_items)
        out["babylm"] = checkpoints * eval_cost.checkpoint_seconds(s, params, rate, cfg.eval.scoring_batch_size)
    return out


def gpu_evaluation_line(cfg: SweepConfig, r: dict) -> str:
    """How the GPU evaluation figure was reckoned, derived, not measured on a GPU ("" when
    there is nothing to evaluate)."""
    from cdray.sweep import eval_cost as E

    if "params" not in r:
        return ""
    line = (f"evaluation on the GPU, derived (not measured on a GPU): forward passes at "
            f"~{r['eval_rate'] / r['params']:,.0f} tok/s in {cfg.eval.precision} (the training rate x "
            f"{E.FORWARD_SHARE:g} forward passes a step / {E.COMPILE_SPEEDUP} for no torch.compile"
            + ("" if cfg.eval.precision == "bf16" else f" / {E.FP32_SLOWDOWN:.1f} for fp32") + ")"
            + f"; perplexity: {r['perplexity_runs']} runs over {r['split'] or 'no eval split'} = "
              f"{r['perplexity'] / 3600:,.1f} GPU-hours")
    s = r["suite"]
    if s is not None:
        line += (f"; BabyLM: {r['checkpoints']:,.0f} checkpoints x ({s.files} files, {s.items:,} items, "
                 f"{s.requests:,} requests, ~{s.tokens / 1e6:.2f}M tokens at {E.TOKENS_PER_WORD:g} a word) "
                 f"= {r['babylm'] / 3600:,.1f} GPU-hours, with per checkpoint {E.LOAD_S:g} s to load, "
                 f"{E.START_S_PER_FILE:g} s of lm-eval start-up a file and {E.HOST_S_PER_REQUEST * 1e3:g} ms "
                 f"of CPU work a request (measured on CPU)")
    if cfg.eval.lm_eval_tasks:
        line += "; built-in lm-eval tasks not counted"
    return line


def human_duration(seconds: float) -> str:
    """Seconds as a person reads them: s, min or h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
