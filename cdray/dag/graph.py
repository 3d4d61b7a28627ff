"""Expanding a sweep config into its DAG: content-keyed nodes for every stage, shared upstream work once, the cells of the grid."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from cdray.config import NEEDS_AMATEUR, STUDENT, ConfigError, SweepConfig, to_dict
from cdray.dag.keys import key_slice
from cdray.dag.nodes import STRATEGY_LABELS, Amateur, Cell, Node, SweepGraph, arm_name, setting_label

__all__ = ["STRATEGY_LABELS", "Amateur", "Cell", "Node", "SweepGraph", "arm_name", "setting_label", "build_graph",
           "expand", "babylm_plan", "babylm_nodes", "data_cache"]


def _train_node(cfg: SweepConfig, g_inputs: dict, *, model: dict, seed: int, q: float,
                milestones: tuple[int, ...], label: str, synthetic: Optional[Node] = None,
                recipe: Optional[Any] = None, student: bool = False) -> Node:
    """A training run; a student's (BASELINE or mixed) reads the recipe's student-only fields too,
    and the tokenizer where it counts the words it sees (train.checkpoint_words)."""
    recipe = recipe or cfg.train
    inputs = [("real", g_inputs["tokens_train"]), ("eval", g_inputs["tokens_eval"])]
    if synthetic is not None:
        inputs.append(("synthetic", synthetic))
    if student and recipe.checkpoint_words:
        inputs.append(("tokenizer", g_inputs["tokenizer"]))
    config = {
        "model": model,
        "vocab_size": cfg.tokenizer.vocab_size,
        "recipe": key_slice(recipe, leave_scope=None if student else STUDENT),
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
    gen = Node("generate", config, tuple(inputs), graph.tag(f"generate {name}"))
    graph.generations[name] = gen
    if eval_items not in (None, "missing"):
        graph.contamination[name] = Node(
            "contamination", {"n": cfg.generation.decontaminate_n, "eval_items": eval_items},
            (("generate", gen), ("tokenizer", tokenizer)), graph.tag(f"contamination {name}"))
    syn = Node("tokens", {"split": "synthetic"}, (("generate", gen),), graph.tag(f"tokens[{name}]"))
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
    """Expand the grid into nodes and deduplicated cells (with grid.fields: one expansion per
    combination of the axes' values, merged: cdray.dag.variants). A search's cells are drawn as it
    runs (cdray.dag.points): its graph is the work every draw shares, without cells."""
    if cfg.search.samples_cells:
        return expand(dataclasses.replace(cfg, grid=dataclasses.replace(cfg.grid, q=(), fields=())))
    if cfg.grid.fields:
        from cdray.dag.variants import merged_graph

        return merged_graph(cfg, expand)
    return expand(cfg)


def expand(cfg: SweepConfig, recipe: Optional[Any] = None, tag: Callable[[str], str] = lambda label: "") -> SweepGraph:
    """The nodes and cells of one config. `recipe`: the training recipe of the GOOD and SMALL
    runs (default cfg.train: an axis over train.* varies the students' runs only); `tag(label)`
    is appended to each node's label (the axis values that change it)."""
    from cdray.models.shapes import small_for_ratio

    from cdray.data.source_files import corpus_key

    def named(label: str) -> str:
        return f"{label} {tag(label)}".strip()

    cache = data_cache(cfg)
    corpus = Node("corpus", corpus_key(cfg.corpus, cfg.data_root, cache), (), named("corpus"))
    tokenizer = Node("tokenizer", key_slice(cfg.tokenizer), (("corpus", corpus),), named("tokenizer"))
    split_inputs = (("corpus", corpus), ("tokenizer", tokenizer))
    tokens_train = Node("tokens", {"split": "train"}, split_inputs, named("tokens[train]"))
    tokens_eval = Node("tokens", {"split": "eval"}, split_inputs, named("tokens[eval]"))
    prompts = Node("prompts", {"prompt_tokens": cfg.generation.prompt_tokens}, split_inputs, named("prompts"))
    gi = {"tokens_train": tokens_train, "tokens_eval": tokens_eval, "tokenizer": tokenizer}

    expert_model = to_dict(cfg.expert.model)
    good = _train_node(cfg, gi, model=expert_model, seed=cfg.expert.seed, q=0.0, recipe=recipe,
                       milestones=cfg.good_milestones, label=named(f"train GOOD seed={cfg.expert.seed}"))
    graph = SweepGraph(cfg, corpus, tokenizer, tokens_train, tokens_eval, prompts, good, tag=named)

    for r in cfg.grid.r:
        shape, info = small_for_ratio(cfg.expert.model, r, cfg.tokenizer.vocab_size, cfg.small.candidates)
        node = _train_node(cfg, gi, model=to_dict(shape), seed=cfg.expert.seed, q=0.0, recipe=recipe,
                           milestones=((recipe or cfg.train).steps,), label=named(f"train SMALL r={r:g}"))
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
                    train = _train_node(cfg, gi, model=mixed_model, seed=seed, q=q,
                                        milestones=cfg.train.default_milestones(),
                                        label=named(f"train {arm} q={q:g} seed={seed}"), synthetic=syn,
                                        student=True)
                    ev = Node("evaluate", eval_cfg, (("run", train), ("eval", tokens_eval)),
                              named(f"evaluate {arm} q={q:g} seed={seed}"))
                    scored = babylm_nodes(cfg, babylm_tasks, train, tokenizer,
                                          f"{arm} q={q:g} seed={seed}", named)
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


def babylm_nodes(cfg: SweepConfig, tasks: list[dict], train: Node, tokenizer: Node, label: str,
                 named: Callable[[str], str] = lambda label: label) -> tuple[Node, ...]:
    steps = cfg.eval.steps or train.config["milestones"]
    return tuple(Node("babylm", {**t, "step": int(step)}, (("run", train), ("tokenizer", tokenizer)),
                      named(f"babylm {t['task']} {label} step={step}"))
                 for step in steps for t in tasks)
