"""Config of the models (shapes, presets), the training recipe, the GOOD run and SMALL amateurs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from cdray.config.errors import ADDED, EXECUTION, check, in_range

STUDENT = "student"  # the scope of train fields only students' runs read (left out of other runs' keys)

MODEL_PRESETS: dict[str, dict[str, int]] = {
    # the paper's GOOD / BASELINE model (162M params with a 32k vocabulary)
    "good": dict(layers=12, hidden=768, heads=12, ffn=3072, context=1024),
    # the paper's smaller amateurs (layers x hidden), FFN 4x hidden, head dim 64
    "small-10x512": dict(layers=10, hidden=512, heads=8, ffn=2048, context=1024),
    "small-8x384": dict(layers=8, hidden=384, heads=6, ffn=1536, context=1024),
    "small-6x256": dict(layers=6, hidden=256, heads=4, ffn=1024, context=1024),
    "small-5x224": dict(layers=5, hidden=224, heads=4, ffn=896, context=1024),
    "small-4x192": dict(layers=4, hidden=192, heads=3, ffn=768, context=1024),
    # CPU presets
    "tiny": dict(layers=4, hidden=128, heads=4, ffn=512, context=256),
    "micro": dict(layers=2, hidden=64, heads=2, ffn=256, context=256),
}


@dataclass(frozen=True)
class ModelConfig:
    """A Llama shape (untied embeddings, RoPE, RMSNorm, no biases)."""

    layers: int = 12
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    context: int = 1024
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    vocab_size: Optional[int] = None  # None: the tokenizer's vocabulary

    def validate(self, at: str) -> None:
        for name in ("layers", "hidden", "heads", "ffn", "context"):
            check(getattr(self, name) >= 1, f"{at}.{name}", "must be >= 1")
        check(self.hidden % self.heads == 0, f"{at}.hidden",
               f"{self.hidden} is not divisible by heads={self.heads}")
        check(self.rope_theta > 0, f"{at}.rope_theta", "must be > 0")
        check(self.rms_eps > 0, f"{at}.rms_eps", "must be > 0")
        if self.vocab_size is not None:
            check(self.vocab_size >= 4, f"{at}.vocab_size", "must be >= 4")


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe shared by GOOD, SMALL and mixed runs (Ulm et al. 2025, arXiv 2510.08245)."""

    steps: int = 8000
    batch_size: int = 256  # global sequences per optimizer step
    seq_len: int = 1024
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.1
    decay_norms: bool = False  # the paper's code decayed norm weights too; off fixes that
    warmup_steps: int = 150
    grad_clip: Optional[float] = None
    precision: Literal["fp32", "bf16"] = "bf16"
    checkpoint_every: int = 500  # milestone spacing; the final step is always a milestone
    eval_blocks: int = 64  # eval-split blocks scored for the eval loss at each milestone
    mixing: Literal["exact", "paper16"] = "exact"  # paper16: floor(16q) of every 16 sequences
    num_workers: int = 1  # Ray Train workers (data parallel)
    # micro-batches a worker splits its share of a step's batch into (the same step within float
    # rounding, in less memory: a 256 x 1024 batch on one GPU)
    grad_accum: int = field(default=1, metadata=ADDED)
    use_gpu: bool = False
    torch_threads: int = field(default=1, metadata=EXECUTION)  # per worker, on CPU
    # torch.compile the training step: pays off on GPU and for larger CPU models, not for the tiny
    # CPU presets (compile time > time saved; see BENCHMARKS.md, issue 6)
    compile: bool = field(default=False, metadata=EXECUTION)
    # the dtype of every milestone's saved weights (what evaluation and generation read); bf16
    # needs precision bf16, and resuming still continues from fp32 master weights
    save_dtype: Literal["fp32", "bf16"] = field(default="fp32", metadata=ADDED)
    # milestones that keep optimizer and RNG state (the newest N; enough to resume exactly): the
    # others keep only their weights
    keep_resume: int = field(default=1, metadata={**EXECUTION, **ADDED})
    # students' runs (BASELINE and mixed) also save a milestone once they have seen each of these
    # numbers of words, real and synthetic alike, or "babylm": the BabyLM 2025 checkpoint schedule
    # (cdray.models.words); the GOOD and the amateurs never (their keys do not hold it)
    checkpoint_words: Optional[Union[Literal["babylm"], tuple[int, ...]]] = field(
        default=None, metadata={**ADDED, "scope": STUDENT})

    def validate(self, at: str) -> None:
        check(self.steps >= 1, f"{at}.steps", f"{self.steps!r} must be >= 1")
        check(self.batch_size >= 1, f"{at}.batch_size", f"{self.batch_size!r} must be >= 1")
        check(self.seq_len >= 2, f"{at}.seq_len", f"{self.seq_len!r} must be >= 2")
        in_range(self.lr, 0, 10, f"{at}.lr", lo_open=True)
        in_range(self.beta1, 0, 1, f"{at}.beta1", hi_open=True)
        in_range(self.beta2, 0, 1, f"{at}.beta2", hi_open=True)
        check(self.weight_decay >= 0, f"{at}.weight_decay", "must be >= 0")
        check(0 <= self.warmup_steps <= self.steps, f"{at}.warmup_steps", "must be in [0, steps]")
        if self.grad_clip is not None:
            check(self.grad_clip > 0, f"{at}.grad_clip", "must be > 0")
        check(self.checkpoint_every >= 1, f"{at}.checkpoint_every", "must be >= 1")
        check(self.eval_blocks >= 1, f"{at}.eval_blocks", "must be >= 1")
        check(self.num_workers >= 1, f"{at}.num_workers", f"{self.num_workers!r} must be >= 1")
        check(self.batch_size % self.num_workers == 0, f"{at}.batch_size",
               f"{self.batch_size} is not divisible by num_workers={self.num_workers}")
        check(self.grad_accum >= 1, f"{at}.grad_accum", f"{self.grad_accum!r} must be >= 1")
        local = self.batch_size // self.num_workers
        check(local % self.grad_accum == 0, f"{at}.grad_accum",
               f"a worker's {local} sequences a step (batch_size / num_workers) are not divisible "
               f"into {self.grad_accum} micro-batches")
        check(self.save_dtype == "fp32" or self.precision == "bf16", f"{at}.save_dtype",
               "bf16 weights need precision: bf16 (an fp32 run would lose what it learned)")
        check(self.keep_resume >= 1, f"{at}.keep_resume", f"{self.keep_resume!r} must be >= 1")
        check(self.torch_threads >= 1, f"{at}.torch_threads", "must be >= 1")
        if isinstance(self.checkpoint_words, tuple):
            words = self.checkpoint_words
            check(len(words) > 0 and all(w >= 1 for w in words), f"{at}.checkpoint_words",
                  f"{list(words)}: word counts must be >= 1 (or the string babylm)")
            check(all(a < b for a, b in zip(words, words[1:])), f"{at}.checkpoint_words",
                  f"{list(words)}: word counts must increase")

    def default_milestones(self) -> tuple[int, ...]:
        steps = set(range(self.checkpoint_every, self.steps + 1, self.checkpoint_every))
        return tuple(sorted(steps | {self.steps}))


@dataclass(frozen=True)
class ExpertConfig:
    """The GOOD run: its model, seed, saved milestones and the step used as expert."""

    model: ModelConfig = ModelConfig()
    seed: int = 43
    milestones: Optional[tuple[int, ...]] = None  # None: every train.checkpoint_every + final
    step: Optional[int] = None  # checkpoint used as GOOD; None: final step


@dataclass(frozen=True)
class SmallConfig:
    """How SMALL-r amateurs are shaped: the candidate closest to ratio r is used."""

    candidates: tuple[ModelConfig, ...] = ()  # empty: search layers x hidden at the expert's head dim
    ratio_of: Literal["non_embedding"] = "non_embedding"
