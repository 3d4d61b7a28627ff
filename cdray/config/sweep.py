"""Config of evaluation, the grid, the plumbing (store, tracking, Ray, profiles) and the whole sweep."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from cdray.config.data import CorpusConfig, TokenizerConfig
from cdray.config.errors import ADDED, BABYLM, BABYLM_EXECUTION, EXECUTION, check, in_range
from cdray.config.generation import NEEDS_AMATEUR, STRATEGIES, GenerationConfig
from cdray.config.models import ExpertConfig, ModelConfig, SmallConfig, TrainConfig
from cdray.config.search import SearchConfig

# BabyLM 2025 zero-shot tasks (cdray.eval.babylm scores them through lm-eval; Ulm et al. 2025, arXiv 2510.08245)
BABYLM_TASKS = ("blimp", "supplement", "ewok", "entity_tracking", "wug", "reading")


@dataclass(frozen=True)
class EvalConfig:
    """What is measured on each milestone of the mixed / baseline runs."""

    perplexity: bool = True
    max_blocks: Optional[int] = None  # cap on eval-split blocks for perplexity (None: all)
    batch_size: int = field(default=8, metadata=EXECUTION)
    # a folder in the BabyLM 2025 evaluation layout: a path (relative: under data_root) or a URI
    babylm_dir: Optional[str] = field(default=None, metadata=BABYLM)
    # BabyLM tasks scored when babylm_dir is set
    tasks: tuple[str, ...] = field(default=BABYLM_TASKS, metadata=BABYLM)
    # built-in lm-eval task names (need the HF hub)
    lm_eval_tasks: tuple[str, ...] = field(default=(), metadata=BABYLM)
    # first N items of every BabyLM file but reading (None: all)
    max_items: Optional[int] = field(default=None, metadata=BABYLM)
    # milestones scored on BabyLM (None: every one)
    steps: Optional[tuple[int, ...]] = field(default=None, metadata=BABYLM)
    scoring_batch_size: int = field(default=64, metadata=BABYLM_EXECUTION)  # lm-eval batch size
    # reading surprisal of a word split into several tokens: "exact" sums its tokens' log-probs
    # after the context; "babylm2025" reproduces the official BabyLM 2025 pipeline (each later
    # piece re-encoded as a word start after the decoded earlier ones), which produced the paper's
    # numbers
    reading_mode: Literal["exact", "babylm2025"] = field(default="exact", metadata=BABYLM)
    # `cdray data fetch-eval`: the BabyLM 2025 evaluation_data archive
    fetch_url: Optional[str] = field(default=None, metadata=BABYLM)
    # optional checksum of that archive
    fetch_sha256: Optional[str] = field(default=None, metadata=BABYLM)
    # the forward passes of perplexity and BabyLM scoring: bf16 runs them under torch.autocast
    # (log-softmax in fp32), on whatever device they land; it changes the numbers slightly
    # (docs/evaluation.md states by how much), so it is in the evaluation nodes' keys when set
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata=ADDED)

    def validate(self, at: str) -> None:
        check(self.batch_size >= 1, f"{at}.batch_size", "must be >= 1")
        check(self.scoring_batch_size >= 1, f"{at}.scoring_batch_size", "must be >= 1")
        if self.max_blocks is not None:
            check(self.max_blocks >= 1, f"{at}.max_blocks", "must be >= 1")
        if self.max_items is not None:
            check(self.max_items >= 1, f"{at}.max_items", "must be >= 1")
        for i, t in enumerate(self.tasks):
            check(t in BABYLM_TASKS, f"{at}.tasks[{i}]", f"{t!r} is not one of {list(BABYLM_TASKS)}")
        for i, s in enumerate(self.steps or ()):
            check(s >= 1, f"{at}.steps[{i}]", f"{s!r} must be a positive step")


@dataclass(frozen=True)
class FieldAxis:
    """An axis of the grid over one config field: its dotted name and the values it takes."""

    name: str
    values: tuple[Any, ...]

    def validate(self, at: str) -> None:
        check(len(self.values) >= 1, at, "an axis needs at least one value")
        for i, v in enumerate(self.values):
            check(v not in self.values[:i], f"{at}[{i}]", f"{v!r} is there twice")


@dataclass(frozen=True)
class GridConfig:
    """The sweep grid. Amateurs are EARLY-k, SMALL-r and DROP-p; q=0 cells are the BASELINE."""

    k: tuple[int, ...] = (500,)  # the paper's best amateur, CD-EARLY-500
    r: tuple[float, ...] = ()
    p: tuple[float, ...] = ()
    strategy: tuple[str, ...] = ("contrastive",)
    q: tuple[float, ...] = (0.0, 0.3)
    seed: tuple[int, ...] = (42,)
    # axes over any field of what a sweep computes, e.g. {train.weight_decay: [0.1, 1.0]}: train.*
    # varies the students' runs, generation.* the corpora, expert.* the GOOD (cdray.config.axes)
    fields: tuple[FieldAxis, ...] = field(default=(), metadata=ADDED)
    max_cells: int = 2000  # a guard against a typo that would plan a huge grid

    def cells(self) -> int:
        """How many cells the grid expands to: per seed one BASELINE (q = 0) and one per
        (synthetic corpus, q > 0)."""
        amateurs = len(self.k) + len(self.r) + len(self.p)
        corpora = sum(1 for s in set(self.strategy) if s not in NEEDS_AMATEUR)
        corpora += amateurs * sum(1 for s in set(self.strategy) if s in NEEDS_AMATEUR)
        per_seed = (1 if 0 in self.q else 0) + corpora * sum(1 for q in set(self.q) if q > 0)
        settings = math.prod(len(a.values) for a in self.fields)  # at most: an axis may not apply to a cell
        return len(set(self.seed)) * per_seed * settings

    def validate(self, at: str, ranged: frozenset[str] | set[str] = frozenset()) -> None:
        """`ranged`: the axes a search draws from a range (search.ranges) instead of a list."""
        for name in ("k", "r", "p", "strategy", "q", "seed"):
            values = getattr(self, name)
            for i, v in enumerate(values):
                check(v not in values[:i], f"{at}.{name}[{i}]", f"{v!r} is there twice")
        for i, k in enumerate(self.k):
            check(isinstance(k, int) and k >= 1, f"{at}.k[{i}]", f"{k!r} must be a positive step")
        for i, r in enumerate(self.r):
            check(r > 1, f"{at}.r[{i}]", f"{r!r} must be > 1 (r-times smaller)")
        for i, p in enumerate(self.p):
            in_range(p, 0, 1, f"{at}.p[{i}]", lo_open=True, hi_open=True)
        check(len(self.strategy) > 0, f"{at}.strategy", "at least one strategy is required")
        for i, s in enumerate(self.strategy):
            check(s in STRATEGIES, f"{at}.strategy[{i}]", f"{s!r} is not one of {list(STRATEGIES)}")
        check(len(self.q) > 0 or "q" in ranged, f"{at}.q", "at least one q is required")
        check(not (self.q and "q" in ranged), f"{at}.q", "a list and a range at once")
        for i, q in enumerate(self.q):
            in_range(q, 0, 1, f"{at}.q[{i}]")
        check(len(self.seed) > 0, f"{at}.seed", "at least one seed is required")
        for i, sd in enumerate(self.seed):
            check(sd >= 0, f"{at}.seed[{i}]", f"{sd!r} must be >= 0")
        check(self.max_cells >= 1, f"{at}.max_cells", "must be >= 1")
        names = [a.name for a in self.fields]
        for a in self.fields:
            check(names.count(a.name) == 1, f"{at}.fields.{a.name}", "the field is an axis twice")
            a.validate(f"{at}.fields.{a.name}")
        check(self.cells() <= self.max_cells, f"{at}.max_cells",
               f"the grid has {self.cells()} cells, more than max_cells={self.max_cells} "
               f"(raise it if you mean it)")
        contrastive = [s for s in self.strategy if s in NEEDS_AMATEUR]
        if contrastive and any(q > 0 for q in self.q):
            check(bool(self.k or self.r or self.p), f"{at}.k",
                   f"strategy {contrastive[0]!r} needs an amateur: set grid.k, grid.r or grid.p")


@dataclass(frozen=True)
class StoreConfig:
    """Where artifacts live: a local path or a pyarrow.fs URI (s3://bucket/prefix?endpoint_override=...)."""

    root: str = ".cdray/store"
    cache: Optional[str] = None  # remote roots: per-node local cache (None: ~/.cache/cdray or $CDRAY_CACHE)

    def validate(self, at: str) -> None:
        from cdray.common.uris import check_uri

        check(bool(self.root), f"{at}.root", "must not be empty")
        problem = check_uri(self.root)
        check(problem is None, f"{at}.root", f"{self.root!r}: {problem}")


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
    # every node sees the same files at the same local paths (an NFS mount, or a one-node
    # cluster): local data paths and a local store.root are then allowed on a cluster
    shared_disk: bool = field(default=False, metadata=EXECUTION)

    def validate(self, at: str) -> None:
        if self.num_cpus is not None:
            check(self.num_cpus >= 1, f"{at}.num_cpus", "must be >= 1")
        check(self.max_concurrent_cells >= 1, f"{at}.max_concurrent_cells", "must be >= 1")


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
class ProfileEvalConfig:
    """The evaluation batch sizes a profile may set (sized for the device the tasks land on)."""

    batch_size: Optional[int] = None
    scoring_batch_size: Optional[int] = None


@dataclass(frozen=True)
class ProfileConfig:
    """One entry of a sweep file's `profiles:` mapping: what a laptop and a cluster run differ in.

    Only the keys written in the profile are applied (over the sweep file, under --set overrides).
    """

    store: Optional[StoreConfig] = None
    tracking: Optional[TrackingConfig] = None
    ray: Optional[RayConfig] = None
    data_root: Optional[str] = None
    train: Optional[ProfileTrainConfig] = None
    generation: Optional[ProfileGenerationConfig] = None
    eval: Optional[ProfileEvalConfig] = None


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: data, models, recipe, generation, evaluation, grid and plumbing."""

    name: str = "sweep"
    profile: Optional[str] = None  # the `profiles:` entry applied on load (see load())
    # where relative corpus source paths and a relative eval.babylm_dir are (a path or a URI;
    # None: the driver's cwd); never in a key, which follows the data's bytes
    data_root: Optional[str] = field(default=None, metadata=EXECUTION)
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
    # the grid's every combination, or a random / Optuna search over its axes (ranges allowed), ASHA
    search: SearchConfig = field(default=SearchConfig(), metadata=ADDED)

    def validate(self) -> "SweepConfig":
        # it names the report folder and MLflow runs: a plain file name, never a path
        check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or "") is not None, "name",
               f"{self.name!r} is not a valid name (letters, digits, '.', '_', '-'; not starting with '.')")
        check(self.expert.seed >= 0, "expert.seed", f"{self.expert.seed!r} must be >= 0")
        if self.data_root is not None:
            from cdray.common.uris import check_uri

            check(bool(self.data_root), "data_root", "must not be empty (leave it out for the driver's cwd)")
            problem = check_uri(self.data_root)
            check(problem is None, "data_root", f"{self.data_root!r}: {problem}")
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
                check(self.train.seq_len <= m.context, "train.seq_len",
                       f"{self.train.seq_len} exceeds {where}.context={m.context}")
        self.generation.validate("generation")
        self.eval.validate("eval")
        # a model trained in fp32 has never run in bf16: evaluating it so would measure the rounding
        check(self.eval.precision == "fp32" or self.train.precision == "bf16", "eval.precision",
               f"{self.eval.precision!r} needs train.precision: bf16 (the runs train in "
               f"{self.train.precision}); use fp32")
        self.search.validate("search")
        self.grid.validate("grid", ranged={r.name for r in self.search.ranges})  # its fields axes:
        # cdray.config.axes, once the config is built
        if self.search.scheduler == "asha":
            grace = self.search.grace_steps
            check(grace is None or grace in self.train.default_milestones(), "search.grace_steps",
                  f"{grace!r} is not a milestone of the trained runs {list(self.train.default_milestones())}")
            check(len(self.train.default_milestones()) > 1, "search.scheduler",
                  "asha compares cells at their milestones: the runs have one (lower train.checkpoint_every)")
        milestones = self.good_milestones
        for i, m in enumerate(milestones):
            check(1 <= m <= self.train.steps, f"expert.milestones[{i}]",
                   f"{m} is outside [1, train.steps={self.train.steps}]")
        check(self.expert_step in milestones, "expert.step",
               f"{self.expert_step} is not a milestone of the GOOD run {list(milestones)}")
        for i, k in enumerate(self.grid.k):
            check(k in milestones, f"grid.k[{i}]",
                   f"{k} is not a milestone of the GOOD run {list(milestones)}")
            check(k < self.expert_step, f"grid.k[{i}]",
                   f"{k} must be earlier than the expert step {self.expert_step}")
        for i, s in enumerate(self.eval.steps or ()):
            check(s in self.train.default_milestones(), f"eval.steps[{i}]",
                   f"{s} is not a milestone of the trained runs {list(self.train.default_milestones())}")
        vocab = self.tokenizer.vocab_size
        shaped = [("expert.model", self.expert.model), ("mixed_model", self.mixed_model)]
        shaped += [(f"small.candidates[{i}]", c) for i, c in enumerate(self.small.candidates)]
        for where, m in shaped:
            if m is not None and m.vocab_size is not None:
                check(m.vocab_size == vocab, f"{where}.vocab_size",
                       f"{m.vocab_size} differs from the expert's vocabulary (tokenizer.vocab_size={vocab})")
        gen = self.generation
        check(gen.prompt_tokens + gen.max_new_tokens <= self.expert.model.context,
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
    def asha_grace(self) -> int:
        """The step before which ASHA stops no cell: search.grace_steps, else the first milestone
        at or past a quarter of training."""
        if self.search.grace_steps is not None:
            return self.search.grace_steps
        return next(m for m in self.train.default_milestones() if 4 * m >= self.train.steps)

    @property
    def expert_step(self) -> int:
        return self.expert.step if self.expert.step is not None else self.train.steps
