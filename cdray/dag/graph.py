"""The sweep DAG: stage nodes with content keys, arms and cells of the grid, and the plan."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Optional

from cdray.config import NEEDS_AMATEUR, ConfigError, SweepConfig, to_dict
from cdray.dag.keys import key_slice, stage_key
from cdray.dag.stages import stage


@dataclass(frozen=True, eq=False)
class Node:
    """One stage execution: its config slice and its input nodes determine its key."""

    stage: str
    config: dict
    inputs: tuple[tuple[str, "Node"], ...] = ()
    label: str = ""

    def __post_init__(self):
        unknown = [n for n, _ in self.inputs if n not in stage(self.stage).inputs]
        if unknown:
            raise ValueError(f"{self.label or self.stage}: stage {self.stage!r} reads no input {unknown[0]!r}")

    @cached_property
    def key(self) -> str:
        return stage_key(self.stage, stage(self.stage).version, self.config, self.input_keys)

    @property
    def input_keys(self) -> dict[str, str]:
        return {name: node.key for name, node in self.inputs}

    def input(self, name: str) -> "Node":
        for n, node in self.inputs:
            if n == name:
                return node
        raise KeyError(f"{self.label}: no input {name!r}")

    def has_input(self, name: str) -> bool:
        return any(n == name for n, _ in self.inputs)

    def walk(self) -> Iterator["Node"]:
        """Every ancestor, then self (inputs first)."""
        for _, node in self.inputs:
            yield from node.walk()
        yield self


@dataclass(frozen=True)
class Amateur:
    """The BAD model of a contrastive arm."""

    kind: str  # "early" | "small" | "dropout"
    value: float  # k, r or p

    @property
    def label(self) -> str:
        tag = {"early": "EARLY", "small": "SMALL", "dropout": "DROP"}[self.kind]
        return f"{tag}-{self.value:g}"


STRATEGY_LABELS = {
    "no_contrast": "NO-CONTRAST",
    "no_contrast_vhead": "NO-CONTRAST+VHEAD",
    "contrastive": "CD",
    "contrastive_tail": "CD-TAIL",
}


def arm_name(strategy: Optional[str], amateur: Optional[Amateur], q: float) -> str:
    if q == 0:
        return "BASELINE"
    base = STRATEGY_LABELS[strategy or "no_contrast"]
    return f"{base}-{amateur.label}" if amateur else base


@dataclass(frozen=True, eq=False)
class Cell:
    """One trained-and-evaluated model of the sweep: (arm, q, seed)."""

    arm: str
    q: float
    seed: int
    strategy: Optional[str]
    amateur: Optional[Amateur]
    train: Node
    evaluate: Node
    babylm: tuple[Node, ...] = ()  # one node per (milestone, BabyLM / lm-eval task)

    @property
    def id(self) -> str:
        return f"{self.arm}|q={self.q:g}|seed={self.seed}"

    def nodes(self) -> tuple[Node, ...]:
        """The cell's own work in build order: its training run, then its evaluations."""
        return (self.train, self.evaluate, *self.babylm)

    def params(self) -> dict:
        a = self.amateur
        return {
            "arm": self.arm, "q": self.q, "seed": self.seed, "strategy": self.strategy or "none",
            "amateur": a.label if a else "none",
            "k": a.value if a and a.kind == "early" else None,
            "r": a.value if a and a.kind == "small" else None,
            "p": a.value if a and a.kind == "dropout" else None,
        }


@dataclass
class SweepGraph:
    """Every node of a sweep, shared upstream work appearing once."""

    cfg: SweepConfig
    corpus: Node
    tokenizer: Node
    tokens_train: Node
    tokens_eval: Node
    prompts: Node
    good: Node
    smalls: dict[float, Node] = field(default_factory=dict)
    small_info: dict[float, dict] = field(default_factory=dict)
    generations: dict[str, Node] = field(default_factory=dict)  # by corpus label
    synthetic: dict[str, Node] = field(default_factory=dict)
    contamination: dict[str, Node] = field(default_factory=dict)  # by corpus label
    cells: list[Cell] = field(default_factory=list)
    babylm_note: Optional[str] = None  # why BabyLM tasks are not evaluated, when they are not

    def nodes(self) -> list[Node]:
        """All nodes, inputs before users, each key once."""
        seen: dict[tuple[str, str], Node] = {}
        # prompts before the GOOD: a seed split too small for the budget fails before training
        roots = [self.prompts, self.good, *self.smalls.values(), *self.synthetic.values(),
                 *self.contamination.values()]
        roots += [n for c in self.cells for n in c.nodes()]
        for root in roots:
            for node in root.walk():
                seen.setdefault((node.stage, node.key), node)
        return list(seen.values())

    def upstream(self) -> list[Node]:
        """What must be built before any cell starts, inputs first: every node that is no cell's
        own, and every cell node that something outside its cell reads, with all it needs.

        A cell's own train run is shared work when its key is also the GOOD's or a SMALL's (the
        q=0 BASELINE of the GOOD's seed and shape *is* the GOOD): generation reads it, so it
        cannot wait for its cell."""
        owners: dict[tuple[str, str], set[int]] = {}
        for i, cell in enumerate(self.cells):
            for node in cell.nodes():
                owners.setdefault(_ident(node), set()).add(i)
        shared: set[tuple[str, str]] = set()
        for node in self.nodes():
            own = owners.get(_ident(node))
            if own is None or len(own) > 1:
                shared.add(_ident(node))
            for _, dep in node.inputs:
                if owners.get(_ident(dep)) not in (None, own):
                    shared.add(_ident(dep))
        needed = {_ident(a) for n in self.nodes() if _ident(n) in shared for a in n.walk()}
        return [n for n in self.nodes() if _ident(n) in needed]


    def build_order(self) -> list[Node]:
        """Every node in the order a sweep builds it: upstream(), then each cell's own work."""
        order = self.upstream()
        first = {_ident(n) for n in order}
        for cell in self.cells:
            for node in cell.nodes():
                if _ident(node) not in first:
                    first.add(_ident(node))
                    order.append(node)
        return order


def _ident(node: Node) -> tuple[str, str]:
    return node.stage, node.key


def _train_node(cfg: SweepConfig, g_inputs: dict, *, model: dict, seed: int, q: float,
                milestones: tuple[int, ...], label: str, synthetic: Optional[Node] = None) -> Node:
    inputs = [("real", g_inputs["tokens_train"]), ("eval", g_inputs["tokens_eval"])]
    if synthetic is not None:
        inputs.append(("synthetic", synthetic))
    config = {
        "model": model,
        "vocab_size": cfg.tokenizer.vocab_size,
        "recipe": key_slice(cfg.train),
        "seed": seed,
        "q": q,
        "milestones": list(milestones),
    }
    return Node("train", config, tuple(inputs), label)


def _synthetic_corpus(graph: SweepGraph, strategy: str, amateur: Optional[Amateur], eval_items: Optional[str],
                      drop_on_items: bool) -> Node:
    """The token stream of one (strategy, amateur) synthetic corpus, its generate and contamination
    stages added to the graph the first time an arm asks for it."""
    cfg, good, tokenizer = graph.cfg, graph.good, graph.tokenizer
    name = arm_name(strategy, amateur, 1.0)
    if name in graph.synthetic:
        return graph.synthetic[name]
    inputs: list[tuple[str, Node]] = [("expert", good), ("prompts", graph.prompts), ("tokenizer", tokenizer)]
    if cfg.generation.decontaminate_n > 0:
        inputs.append(("corpus", graph.corpus))  # its eval split is the decontamination reference
    amateur_cfg: dict[str, Any] = {"kind": "none"}
    if amateur is not None:
        amateur_cfg = {"kind": amateur.kind}
        if amateur.kind == "early":
            amateur_cfg["step"] = int(amateur.value)
            inputs.append(("amateur", good))
        elif amateur.kind == "small":
            amateur_cfg["step"] = cfg.train.steps
            inputs.append(("amateur", graph.smalls[amateur.value]))
        else:
            amateur_cfg["dropout"] = amateur.value
    config = {
        "generation": key_slice(cfg.generation),
        "strategy": strategy,
        "expert_step": cfg.expert_step,
        "amateur": amateur_cfg,
    }
    if drop_on_items:
        config["eval_items"] = eval_items
    gen = Node("generate", config, tuple(inputs), f"generate {name}")
    graph.generations[name] = gen
    if eval_items not in (None, "missing"):
        graph.contamination[name] = Node(
            "contamination", {"n": cfg.generation.decontaminate_n, "eval_items": eval_items},
            (("generate", gen), ("tokenizer", tokenizer)), f"contamination {name}")
    syn = Node("tokens", {"split": "synthetic"}, (("generate", gen),), f"tokens[{name}]")
    graph.synthetic[name] = syn
    return syn


def _one_shape_two_ratios(cfg: SweepConfig, first: float, r: float, info: dict) -> ConfigError:
    """Two ratios that pick one SMALL shape would be one arm under two names, with identical
    numbers: the error names the ratios the candidates offer."""
    from cdray.models.shapes import non_embedding_ratios

    offered = ", ".join(f"{x:.3g}" for x in non_embedding_ratios(cfg.expert.model, cfg.small.candidates,
                                                                   cfg.tokenizer.vocab_size))
    return ConfigError("grid.r", f"{first:g} and {r:g} both pick the SMALL shape {info['layers']}x{info['hidden']} "
                       f"(non-embedding ratio {info['non_embedding_ratio']:.3g}); give one r per shape"
                       + (f" (small.candidates offer {offered})" if offered else ""))


def build_graph(cfg: SweepConfig) -> SweepGraph:
    """Expand the grid into nodes and deduplicated cells."""
    from cdray.models.shapes import small_for_ratio

    from cdray.data.source_files import corpus_key

    cache = data_cache(cfg)
    corpus = Node("corpus", corpus_key(cfg.corpus, cfg.data_root, cache), (), "corpus")
    tokenizer = Node("tokenizer", key_slice(cfg.tokenizer), (("corpus", corpus),), "tokenizer")
    split_inputs = (("corpus", corpus), ("tokenizer", tokenizer))
    tokens_train = Node("tokens", {"split": "train"}, split_inputs, "tokens[train]")
    tokens_eval = Node("tokens", {"split": "eval"}, split_inputs, "tokens[eval]")
    prompts = Node("prompts", {"prompt_tokens": cfg.generation.prompt_tokens}, split_inputs, "prompts")
    gi = {"tokens_train": tokens_train, "tokens_eval": tokens_eval}

    expert_model = to_dict(cfg.expert.model)
    good = _train_node(cfg, gi, model=expert_model, seed=cfg.expert.seed, q=0.0,
                       milestones=cfg.good_milestones, label=f"train GOOD seed={cfg.expert.seed}")
    graph = SweepGraph(cfg, corpus, tokenizer, tokens_train, tokens_eval, prompts, good)

    for r in cfg.grid.r:
        shape, info = small_for_ratio(cfg.expert.model, r, cfg.tokenizer.vocab_size, cfg.small.candidates)
        node = _train_node(cfg, gi, model=to_dict(shape), seed=cfg.expert.seed, q=0.0,
                           milestones=(cfg.train.steps,), label=f"train SMALL r={r:g}")
        first = next((other for other, run in graph.smalls.items() if run.key == node.key), None)
        if first is not None:
            raise _one_shape_two_ratios(cfg, first, r, info)
        graph.smalls[r] = node
        graph.small_info[r] = info

    amateurs = [Amateur("early", k) for k in cfg.grid.k]
    amateurs += [Amateur("small", r) for r in cfg.grid.r]
    amateurs += [Amateur("dropout", p) for p in cfg.grid.p]

    eval_items = None
    if cfg.generation.decontaminate_n > 0 and cfg.eval.babylm_dir:
        # the items' contents, not their folder's path: the same data elsewhere (another
        # checkout, a symlink) keeps the key
        from cdray.data.source_files import resolve
        from cdray.data.telemetry import reference_digest

        eval_items = reference_digest(resolve(cfg.eval.babylm_dir, cfg.data_root), cache)
    # only a corpus that drops rows sharing an n-gram with the items depends on them; the others
    # measure their overlap in a stage of its own, so evaluating a built sweep on BabyLM data
    # regenerates and retrains nothing
    drop_on_items = eval_items is not None and cfg.generation.drop_contaminated

    mixed_model = to_dict(cfg.mixed_model or cfg.expert.model)
    eval_cfg = key_slice(cfg.eval, leave_scope="babylm")
    eval_cfg["seq_len"] = cfg.train.seq_len
    babylm_tasks, graph.babylm_note = babylm_plan(cfg)
    seen: set[str] = set()
    for seed in cfg.grid.seed:
        for q in cfg.grid.q:
            for strategy in cfg.grid.strategy:
                needs_amateur = strategy in NEEDS_AMATEUR and q > 0
                for amateur in (amateurs if needs_amateur else [None]):
                    if q == 0:
                        strategy_, amateur_ = None, None
                    else:
                        strategy_, amateur_ = strategy, amateur
                    arm = arm_name(strategy_, amateur_, q)
                    cell_id = f"{arm}|{q}|{seed}"
                    if cell_id in seen:
                        continue
                    seen.add(cell_id)
                    syn = _synthetic_corpus(graph, strategy_, amateur_, eval_items, drop_on_items) if q > 0 else None
                    label = f"train {arm} q={q:g} seed={seed}"
                    train = _train_node(cfg, gi, model=mixed_model, seed=seed, q=q,
                                        milestones=cfg.train.default_milestones(), label=label,
                                        synthetic=syn)
                    ev = Node("evaluate", eval_cfg, (("run", train), ("eval", tokens_eval)),
                              f"evaluate {arm} q={q:g} seed={seed}")
                    scored = babylm_nodes(cfg, babylm_tasks, train, tokenizer,
                                          f"{arm} q={q:g} seed={seed}")
                    graph.cells.append(Cell(arm, q, seed, strategy_, amateur_, train, ev, scored))
    return graph


def data_cache(cfg: SweepConfig) -> Path:
    """Where this host keeps mirrors of remote data folders and the digests of data folders:
    `_downloads/` of the store's local root (a remote store's node cache)."""
    from cdray.dag.store import Store

    return Store.at(cfg.store.root, cfg.store.cache).root / "_downloads"


def babylm_plan(cfg: SweepConfig) -> tuple[list[dict], Optional[str]]:
    """(task configs to score on each milestone, one-line note when BabyLM data is missing)."""
    from cdray.data.source_files import resolve
    from cdray.eval import babylm

    tasks: list[dict] = []
    note = None
    e = cfg.eval
    if e.tasks:
        where = resolve(e.babylm_dir, cfg.data_root) if e.babylm_dir else None
        note = babylm.missing_reason(where, e.tasks)
        if note is None:
            cache = data_cache(cfg)
            # reading is one regression over all its rows: a prefix of them would only overfit
            tasks += [{"task": t, "data": babylm.data_digest(where, t, cache),
                       "max_items": None if t == "reading" else e.max_items} for t in e.tasks]
            for t in tasks:
                if t["task"] == "reading":
                    t["mode"] = e.reading_mode
    tasks += [{"task": f"lm_eval:{t}", "data": "hub", "max_items": None} for t in e.lm_eval_tasks]
    if e.precision != "fp32":  # fp32 (the default) stays out, as ADDED fields do (cdray.dag.keys)
        tasks = [{**t, "precision": e.precision} for t in tasks]
    return tasks, note


def babylm_nodes(cfg: SweepConfig, tasks: list[dict], train: Node, tokenizer: Node, label: str) -> tuple[Node, ...]:
    steps = cfg.eval.steps or train.config["milestones"]
    return tuple(Node("babylm", {**t, "step": int(step)}, (("run", train), ("tokenizer", tokenizer)),
                      f"babylm {t['task']} {label} step={step}")
                 for step in steps for t in tasks)
