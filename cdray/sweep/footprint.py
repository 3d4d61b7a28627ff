"""What a sweep will write to its store, before it runs: training runs from their shapes and
milestones, synthetic corpora and token streams from their budgets (bytes per token measured by
the corpora this store already holds, a stated default where it holds none)."""
from __future__ import annotations

from collections import Counter

from cdray.config import ModelConfig, SweepConfig, parse_section
from cdray.dag.graph import SweepGraph
from cdray.dag.store import Store
from cdray.models.shapes import shape_params

WEIGHT_BYTES = {"fp32": 4, "bf16": 2}
RESUME_BYTES = 8  # per parameter: AdamW's two fp32 moments
SYNTHETIC_BYTES_PER_TOKEN = 12.0  # a generate artifact per new token (shards, corpus, text): demo-measured
CORPUS_BYTES_PER_WORD = 7.0  # a corpus's three parquet splits per word


def train_run_bytes(node, cfg: SweepConfig) -> int:
    """Store bytes of one finished training run: every milestone's weights, and the resume state
    the newest `train.keep_resume` of them keep (fp32 master weights too when weights are bf16)."""
    params = shape_params(parse_section(ModelConfig, node.config["model"], "model"), cfg.tokenizer.vocab_size)["total"]
    recipe = cfg.train
    milestones = len(set(node.config["milestones"]) | {recipe.steps})
    resume = RESUME_BYTES + (4 if recipe.save_dtype != "fp32" else 0)
    return params * (WEIGHT_BYTES[recipe.save_dtype] * milestones + resume * min(recipe.keep_resume, milestones))


def synthetic_bytes_per_token(store: Store) -> float:
    """Bytes per new token of the synthetic corpora this store holds (median), or the default."""
    rates = []
    for stage, key in store.list("generate"):
        m = store.manifest(stage, key)
        tokens = m.get("stats", {}).get("new_tokens")
        if tokens:
            rates.append(m["bytes"] / tokens)
    return sorted(rates)[len(rates) // 2] if rates else SYNTHETIC_BYTES_PER_TOKEN


def footprint(graph: SweepGraph, cfg: SweepConfig, store: Store, todo: list) -> str:
    """One line: about how many bytes the stages still to build write, by kind."""
    by_kind: Counter = Counter()
    per_token = synthetic_bytes_per_token(store)
    token_bytes = 2 if cfg.tokenizer.vocab_size < (1 << 16) else 4
    for node in todo:
        if node.stage == "train":
            by_kind["training runs"] += train_run_bytes(node, cfg)
        elif node.stage == "generate":
            by_kind["synthetic corpora"] += int(cfg.generation.token_budget * per_token)
        elif node.stage == "tokens" and node.config.get("split") == "synthetic":
            by_kind["token streams"] += cfg.generation.token_budget * token_bytes
        elif node.stage == "tokens":
            words = cfg.corpus.total_words or 0
            by_kind["token streams"] += int(words * 1.4 * token_bytes)  # ~1.4 BPE tokens a word
        elif node.stage == "corpus":
            by_kind["corpus"] += int((cfg.corpus.total_words or 0) * CORPUS_BYTES_PER_WORD)
    total = sum(by_kind.values())
    if not total:
        return "store: nothing large to write"
    parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in by_kind.most_common() if v)
    runs = sum(1 for n in todo if n.stage == "train")
    each = f"; {human_bytes(max(train_run_bytes(n, cfg) for n in todo if n.stage == 'train'))} per run" if runs else ""
    return f"store: about {human_bytes(total)} to write ({parts}{each})"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
