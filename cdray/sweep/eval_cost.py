"""What evaluating a sweep's checkpoints costs on a GPU: the requests and tokens of a checkpoint's
BabyLM suite counted from the files in eval.babylm_dir, the tokens of perplexity, and the seconds
they take at a forward rate derived from the training rate (not measured on a GPU)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

# tokens a whitespace-separated word costs: the paper's 32k BPE gives ~130M tokens for its 100M
# words (the paper's "real train tokens"); BabyLM items are ordinary English of the same kind
TOKENS_PER_WORD = 1.3
# a training step costs ~3 forward passes per token (the backward pass is ~2 of them)
FORWARD_SHARE = 3.0
# the GPU training rate the estimate starts from is torch.compile'd (1.86x tokens/s for the GOOD
# on an H100, BENCHMARKS.md); evaluation runs eager
COMPILE_SPEEDUP = 1.86
# an fp32 evaluation's matmuls run on an H100's fp32 units (PyTorch leaves TF32 off): 67 dense
# TFLOPS against bf16's 989, so its forward passes are that much slower than bf16's
FP32_SLOWDOWN = 989 / 67
# Measured on this machine's CPU, one thread, as an evaluation task runs (BENCHMARKS.md,
# "Evaluation on the GPU"; `bench/evaluation.py --checkpoint-cost`, rounded up): the work of a
# checkpoint's BabyLM task that is not the model's, which stays on the CPU of a GPU node
LOAD_S = 1.0  # load a 162M (GOOD-shaped) checkpoint and build its lm-eval model (0.36-0.93 s)
START_S_PER_FILE = 0.02  # lm-eval's set-up of one item file's task (0.020 s)
HOST_S_PER_REQUEST = 6.0e-4  # per request: templates, tokenizing, batching, results (0.57-0.59 ms)
# stated, not measured: a 12-layer forward launches ~250 kernels at ~10-20 us each, whatever its
# size, which the FLOP rate above does not count
LAUNCH_S_PER_BATCH = 5e-3
# the eval split's tokens when neither the store (its eval tokens built) nor the config
# (corpus.total_words x eval_fraction) says: about the paper's (the BabyLM test files of its
# sources and TinyStories validation, ~10M words); an assumption, and labelled so
EVAL_SPLIT_TOKENS = 1.3e7


@dataclass(frozen=True)
class Suite:
    """What one checkpoint's BabyLM suite asks of the model."""

    files: int = 0
    items: int = 0
    requests: int = 0  # distinct log-likelihood requests
    tokens: float = 0.0  # tokens through the model (a shared context once, with its BOS)

    def __add__(self, other: "Suite") -> "Suite":
        return Suite(self.files + other.files, self.items + other.items, self.requests + other.requests,
                     self.tokens + other.tokens)


def _words(text) -> int:
    return len(str(text or "").split())


def _requests(task: str, row: dict) -> list[tuple[str, str]]:
    """The (context, continuation) log-likelihood requests of one item, as cdray.eval.tasks asks them."""
    g = lambda k: str(row.get(k) or "")  # noqa: E731
    if task in ("blimp", "supplement"):
        return [("", g("sentence_good")), ("", g("sentence_bad"))]
    if task == "ewok":
        return [(g("Context1"), g("Target1")), (g("Context1"), g("Target2"))]
    if task == "entity_tracking":
        return [(g("input_prefix"), str(o)) for o in row.get("options") or []]
    if task == "wug":
        return [("", s) for s in g("sentences").split("\t")]
    if task == "reading":
        return [(g("item"), g("word"))] + ([(g("prev_item"), g("prev_word"))] if g("prev_item") else [])
    raise ValueError(f"unknown BabyLM task {task!r}")


def task_suite(babylm_dir: str | Path, task: str, max_items: Optional[int]) -> Suite:
    """One task's share of a checkpoint's suite, read from its files (reading: every row)."""
    from cdray.eval import babylm

    files = babylm.item_files(babylm_dir, task)
    total = Suite(files=len(files))
    for path in files:
        seen: set[tuple[str, str]] = set()  # a request asked twice is scored once (prefix_lm)
        items, words = 0, 0.0
        for row in babylm.read_rows(path, None if task == "reading" else max_items):
            new = [r for r in dict.fromkeys(_requests(task, row)) if r not in seen]
            seen.update(new)
            items += 1
            if task == "entity_tracking" and new:  # the options share one pass over the prefix
                words += _words(new[0][0]) + sum(_words(c) for _, c in new)
            else:
                words += sum(_words(x) + _words(c) for x, c in new)
        # every request (or shared prefix) starts with BOS: one token each, an upper bound
        total = total + Suite(0, items, len(seen), len(seen) + TOKENS_PER_WORD * words)
    return total


def suite(babylm_dir: str | Path, tasks: Iterable[str], max_items: Optional[int]) -> Suite:
    """A checkpoint's whole BabyLM suite (built-in lm-eval tasks are not counted: their data is
    on the hub)."""
    total = Suite()
    for task in tasks:
        total = total + task_suite(babylm_dir, task, max_items)
    return total


def forward_rate(train_rate: float, precision: str, device: str = "gpu") -> float:
    """Parameter-tokens per second of evaluation's forward passes, derived from the training rate
    (parameter-tokens per second of training steps; on a GPU, compiled bf16 ones)."""
    rate = train_rate * FORWARD_SHARE
    if device != "gpu":
        return rate
    rate /= COMPILE_SPEEDUP
    return rate if precision == "bf16" else rate / FP32_SLOWDOWN


def checkpoint_seconds(s: Suite, params: int, rate: float, batch_size: int) -> float:
    """One checkpoint's BabyLM task on a GPU: load and lm-eval start-up, per-request host work,
    the model's forward passes at `rate` (parameter-tokens per second) and their launches."""
    batches = 2 * math.ceil(s.requests / batch_size)  # a shared prefix's batch runs twice
    return (LOAD_S + START_S_PER_FILE * s.files + HOST_S_PER_REQUEST * s.requests + LAUNCH_S_PER_BATCH * batches
            + s.tokens * params / rate)


def perplexity_seconds(tokens: float, milestones: int, params: int, rate: float) -> float:
    """One run's perplexity stage on a GPU: each milestone loaded and run over the eval split."""
    return milestones * (LOAD_S + tokens * params / rate)
