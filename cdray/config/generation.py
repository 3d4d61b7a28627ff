"""Config of synthetic-corpus generation: decoding scores, sampler, lengths, budget, actors."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from cdray.config.errors import ADDED, EXECUTION, check, in_range

# what the sampler is fed (Ulm et al. 2025, arXiv 2510.08245); the contrastive ones read an amateur's logits
NEEDS_AMATEUR = ("contrastive", "contrastive_tail")
STRATEGIES = ("no_contrast", "no_contrast_vhead", *NEEDS_AMATEUR)
# how a decode step attends (cdray.decode.stacked) and how its KV cache stores keys and values
ATTENTION = ("auto", "sdpa", "sdpa_efficient", "eager", "flex", "triton")
KV_CACHE = ("model", "fp8")


@dataclass(frozen=True)
class DecodingConfig:
    """Scores and sampler of one decoding step (Ulm et al. 2025, arXiv 2510.08245)."""

    alpha: float = 0.1
    lam: float = 1.0
    temperature: float = 1.0
    penalty: float = field(default=-20.0, metadata={"infinite": True})  # outside V_head; -inf allowed
    # truncation rules (cdray.decode.truncation, one module each), applied in this order when set
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = field(default=None, metadata=ADDED)  # keep p >= min_p * max p
    typical_p: Optional[float] = field(default=None, metadata=ADDED)  # locally typical mass
    no_repeat_ngram: int = 0  # n > 0: a token that would repeat an n-gram of its row gets -inf

    def validate(self, at: str) -> None:
        in_range(self.alpha, 0, 1, f"{at}.alpha", hi_open=True)
        check(self.no_repeat_ngram >= 0, f"{at}.no_repeat_ngram",
               f"{self.no_repeat_ngram!r} must be >= 0 (0: off)")
        check(self.lam >= 0 and math.isfinite(self.lam), f"{at}.lam", f"{self.lam!r} must be >= 0")
        check(self.temperature > 0 and math.isfinite(self.temperature), f"{at}.temperature",
               f"{self.temperature!r} must be > 0")
        check(not math.isnan(self.penalty) and self.penalty != math.inf, f"{at}.penalty",
               f"{self.penalty!r} must be a number or -inf")
        if self.top_k is not None:
            check(self.top_k >= 1, f"{at}.top_k", f"{self.top_k!r} must be >= 1")
        if self.top_p is not None:
            in_range(self.top_p, 0, 1, f"{at}.top_p", lo_open=True)
        if self.min_p is not None:
            in_range(self.min_p, 0, 1, f"{at}.min_p", lo_open=True)
        if self.typical_p is not None:
            in_range(self.typical_p, 0, 1, f"{at}.typical_p", lo_open=True)


# what the paper's released code does; generation.paper_compat=true fills these in (and refuses
# a conflicting explicit value): 400 new tokens, no EOS stop, penalty -20, 20-token prompts, 8 rows
PAPER_COMPAT = {"max_new_tokens": 400, "stop_at_eos": False, "prompt_tokens": 20, "continuations": 8}
PAPER_COMPAT_PENALTY = -20.0


@dataclass(frozen=True)
class GenerationConfig:
    """Synthetic corpus sampling: prompts, lengths, budget, actors."""

    decoding: DecodingConfig = DecodingConfig()
    prompt_tokens: int = 20  # BOS included
    continuations: int = 8
    max_new_tokens: int = 400
    stop_at_eos: bool = True
    token_budget: int = 100_000_000  # total new tokens of the corpus
    batch_size: int = 64
    shard_prompts: int = 256  # prompts per shard (the unit of resume)
    actors: int = field(default=1, metadata=EXECUTION)  # max actors of the pool
    # all `actors` start at once; Ray Data may stop idle ones down to this floor near the end
    min_actors: int = field(default=1, metadata=EXECUTION)
    actor_cpus: float = field(default=0.5, metadata=EXECUTION)
    actor_gpus: float = field(default=0.0, metadata=EXECUTION)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    paper_compat: bool = False  # the released code's settings (see PAPER_COMPAT)
    # auto: stack same-shaped models
    engine: Literal["auto", "stacked", "separate"] = field(default="auto", metadata=EXECUTION)
    # how a decode step attends (ATTENTION); auto: on CUDA the fast step (cdray's
    # Triton kernel over each row's own keys + a CUDA graph per batch), eager matmul-softmax-matmul
    # on CPU and for DROP-p amateurs
    attention: Literal[ATTENTION] = "auto"
    # fast step only: also compile the layers into fused kernels (BENCHMARKS.md, decoding)
    compile_layers: bool = False
    # KV cache storage (KV_CACHE): "model" dtype, or "fp8" (e4m3 + a scale per
    # vector): half the bytes a bf16 decode step streams (H100: +21% tokens/s), at the cost of
    # rounding keys and values; on CPU the eager step dequantizes it every step (slower there)
    kv_cache: Literal[KV_CACHE] = "model"
    # finished rows are replaced from the queue so the batch stays full
    refill: bool = field(default=True, metadata=EXECUTION)
    # of free RAM / GPU memory the two KV caches may take
    memory_fraction: float = field(default=0.5, metadata=EXECUTION)
    decontaminate_n: int = 13  # n-gram length of the eval-overlap check (0: off)
    drop_contaminated: bool = False  # drop rows sharing an n-gram with the eval split
    # per-shard log lines (rows, tokens, tokens/s)
    progress: bool = field(default=True, metadata=EXECUTION)

    def validate(self, at: str) -> None:
        self.decoding.validate(f"{at}.decoding")
        if self.paper_compat:
            for name, want in PAPER_COMPAT.items():
                got = getattr(self, name)
                check(got == want, f"{at}.{name}", f"{got!r} conflicts with paper_compat=true "
                       f"(which needs {want!r})")
            check(self.decoding.penalty == PAPER_COMPAT_PENALTY, f"{at}.decoding.penalty",
                   f"{self.decoding.penalty!r} conflicts with paper_compat=true (which needs -20.0)")
        in_range(self.memory_fraction, 0, 1, f"{at}.memory_fraction", lo_open=True)
        check(not self.compile_layers or self.attention in ("auto", "flex", "triton"),
               f"{at}.compile_layers", f"needs attention auto, flex or triton, got {self.attention!r}")
        check(self.kv_cache != "fp8" or self.attention != "flex", f"{at}.kv_cache",
               "'fp8' cannot be read by attention 'flex' (use triton or auto)")
        check(self.decontaminate_n >= 0, f"{at}.decontaminate_n", "must be >= 0 (0: off)")
        check(not self.drop_contaminated or self.decontaminate_n > 0, f"{at}.drop_contaminated",
               "needs decontaminate_n > 0")
        check(self.prompt_tokens >= 1, f"{at}.prompt_tokens", "must be >= 1")
        check(self.continuations >= 1, f"{at}.continuations", "must be >= 1")
        check(self.max_new_tokens >= 1, f"{at}.max_new_tokens", "must be >= 1")
        check(self.token_budget >= 1, f"{at}.token_budget", "must be >= 1")
        check(self.batch_size >= 1, f"{at}.batch_size", f"{self.batch_size!r} must be >= 1")
        check(self.shard_prompts >= 1, f"{at}.shard_prompts", "must be >= 1")
        check(self.actors >= 1, f"{at}.actors", f"{self.actors!r} must be >= 1")
        check(1 <= self.min_actors <= self.actors, f"{at}.min_actors",
               f"{self.min_actors!r} must be in [1, actors={self.actors}]")
        check(self.actor_cpus > 0, f"{at}.actor_cpus", "must be > 0")
        check(self.actor_gpus >= 0, f"{at}.actor_gpus", "must be >= 0")
        check(self.seed >= 0, f"{at}.seed", f"{self.seed!r} must be >= 0")
