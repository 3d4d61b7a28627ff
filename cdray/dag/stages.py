"""The stage table: every stage's name, version, the inputs it may read, where it runs on Ray and
what it makes. Node keys take the version from it, the graph checks inputs against it, the
builders (cdray.dag.builders.BUILDERS) are named after it and the Ray shell picks an executor by it.
Which config fields stay out of a key is marked on the field itself (cdray.config.errors.EXECUTION)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# where a stage runs on Ray: a plain task (1 CPU), Ray Train (its workers), Ray Data (an actor
# pool of generators), or grouped by checkpoint (every BabyLM task of one milestone in one task)
Executor = Literal["task", "train", "data", "checkpoint"]


@dataclass(frozen=True)
class Stage:
    name: str
    # bump when the output for the same config and inputs changes meaning; tests/test_stage_code.py
    # asks whenever the stage's code changes (docs/store.md, "Code in the keys")
    version: int
    inputs: tuple[str, ...]  # the names a node of this stage may read its inputs by
    runs_on: Executor
    what: str


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("corpus", 1, (), "task", "documents split into train / eval / seed, word counts"),
    # 2: the tokenizer is saved to encode with <s> first, as every training document starts
    Stage("tokenizer", 2, ("corpus",), "task", "the BPE tokenizer, trained on the train split"),
    Stage("tokens", 1, ("corpus", "tokenizer", "generate"), "task",
          "one split (or a synthetic corpus) as a flat <s> ... </s> token stream"),
    Stage("prompts", 1, ("corpus", "tokenizer"), "task", "the first tokens of every seed chunk"),
    Stage("train", 1, ("real", "eval", "synthetic", "tokenizer"), "train",
          "a training run on real (+ synthetic) tokens and its milestone checkpoints"),
    # 2: cdray's own decoding engine, telemetry and contamination columns
    Stage("generate", 2, ("expert", "amateur", "prompts", "tokenizer", "corpus"), "data",
          "a synthetic corpus sampled in shards by the expert against its amateur"),
    Stage("evaluate", 1, ("run", "eval"), "task", "eval-split perplexity of every milestone of a run"),
    Stage("babylm", 1, ("run", "tokenizer"), "checkpoint", "one BabyLM task scored on one milestone"),
    Stage("contamination", 1, ("generate", "tokenizer"), "task",
          "a synthetic corpus's word n-gram overlap with the evaluation items"),
)}


def stage(name: str) -> Stage:
    return STAGES[name]
