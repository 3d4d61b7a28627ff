"""`cdray export`: one cell's checkpoint as a folder `transformers` loads as it is (weights, config,
tokenizer) with a model card stating its recipe, corpus, data seen and store keys."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from cdray.config import ConfigError, SweepConfig
from cdray.dag.graph import build_graph
from cdray.dag.nodes import Cell
from cdray.dag.store import Store
from cdray.sweep.plan import anchored, open_store

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def find_cell(cfg: SweepConfig, arm: str, seed: int, q: Optional[float] = None) -> Cell:
    """The sweep's cell of `arm` (as the arm table names it, grid.fields values included), seed
    and q (needed only where the arm has several); an unknown one is an error naming what exists."""
    cells = [c for c in build_graph(cfg).cells if c.label == arm or (c.arm == arm and not c.fields)]
    if not cells:
        arms = sorted({c.label for c in build_graph(cfg).cells})
        raise ConfigError("--arm", f"{arm!r} is not an arm of sweep {cfg.name!r} (its arms: {', '.join(arms)})")
    seeded = [c for c in cells if c.seed == seed]
    if not seeded:
        raise ConfigError("--seed", f"{seed} is not a seed of {arm} (its seeds: {sorted({c.seed for c in cells})})")
    if q is not None:
        seeded = [c for c in seeded if c.q == q]
        if not seeded:
            raise ConfigError("--q", f"{q:g} is not a q of {arm} (its q: {sorted({c.q for c in cells})})")
    if len(seeded) > 1:
        raise ConfigError("--q", f"{arm} has several q ({', '.join(f'{c.q:g}' for c in seeded)}): say which")
    return seeded[0]


def chosen_step(cell: Cell, store: Store, step: str) -> int:
    """`best` (the lowest eval-split perplexity, as the arm table's best checkpoint), `final`, or a
    milestone of the run."""
    milestones = list(cell.train.config["milestones"])
    if step == "final":
        return milestones[-1]
    if step == "best":
        if not store.is_done(cell.evaluate.stage, cell.evaluate.key):
            raise ConfigError("--step", f"best: {cell.label} seed {cell.seed} is not evaluated yet (run the sweep)")
        return int(store.manifest(cell.evaluate.stage, cell.evaluate.key)["stats"]["best_step"])
    if not step.isdigit() or int(step) not in milestones:
        raise ConfigError("--step", f"{step!r} is not best, final or a milestone of the run {milestones}")
    return int(step)


def export(cfg: SweepConfig, arm: str, seed: int, step: str, out: Path, q: Optional[float] = None) -> Path:
    """Write the checkpoint of (arm, q, seed) at `step` to `out` (a new or empty folder); `words`:
    every word-count checkpoint (train.checkpoint_words), one folder each, named as the BabyLM
    pipeline names its revisions (chck_1M, chck_2M, ...)."""
    cfg = anchored(cfg)
    store = open_store(cfg)
    cell = find_cell(cfg, arm, seed, q)
    train = cell.train
    if not store.is_done(train.stage, train.key):
        raise ConfigError("--arm", f"{cell.label} q={cell.q:g} seed={seed} is not trained yet (run the sweep)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("--out", f"{out} exists and is not empty: nothing written")
    if step == "words":
        from cdray.models.words import folder_name

        stats = store.manifest(train.stage, train.key)["stats"]
        if not stats.get("word_checkpoints"):
            raise ConfigError("--step", f"words: {cell.label} seed {seed} has no word-count checkpoints "
                                        f"(set train.checkpoint_words and run the sweep)")
        seen = {m["step"]: m.get("words") for m in stats["milestones"]}
        for words, at in sorted((int(w), s) for w, s in stats["word_checkpoints"].items()):
            _write_checkpoint(cfg, cell, store, at, out / folder_name(words), (words, seen.get(at)))
        return out
    _write_checkpoint(cfg, cell, store, chosen_step(cell, store, step), out)
    return out


def _write_checkpoint(cfg: SweepConfig, cell: Cell, store: Store, at: int, out: Path,
                      words: Optional[tuple[int, int]] = None) -> None:
    folder = f"step_{at:06d}/model/"
    run = store.fetch(cell.train.stage, cell.train.key, lambda rel: rel.startswith(folder))  # that step's weights only
    tok_node = _tokenizer_of(cell)
    tok = store.fetch(tok_node.stage, tok_node.key)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((run / folder).iterdir()):
        shutil.copy2(f, out / f.name)
    for name in TOKENIZER_FILES:
        if (tok / name).is_file():
            shutil.copy2(tok / name, out / name)
    (out / "README.md").write_text(model_card(cfg, cell, store, at, words), encoding="utf-8")


def _tokenizer_of(cell: Cell):
    for node in cell.train.walk():
        if node.stage == "tokenizer":
            return node
    raise LookupError(f"{cell.label}: no tokenizer among its inputs")


def model_card(cfg: SweepConfig, cell: Cell, store: Store, step: int, words: Optional[tuple[int, int]] = None) -> str:
    """What the checkpoint is: its recipe, the data it saw to this step (words: the word-count
    checkpoint it is and the words seen by then), and the store keys."""
    recipe = cell.train.config["recipe"]
    tokens = step * recipe["batch_size"] * recipe["seq_len"]
    stats = store.manifest(cell.train.stage, cell.train.key)["stats"]
    corpus = next(n for n in cell.train.walk() if n.stage == "corpus")
    keys = {n.stage: n.key for n in cell.train.walk() if n.stage in ("corpus", "tokenizer", "generate")}
    keys["train"] = cell.train.key
    lines = [
        f"# {cell.label}, q={cell.q:g}, seed {cell.seed}, step {step}",
        "",
        f"A Llama trained from scratch by cdray (sweep `{cfg.name}`), exported at step {step} of "
        f"{recipe['steps']}: {tokens:,} training tokens seen ({recipe['batch_size']} sequences of "
        f"{recipe['seq_len']} tokens a step), a synthetic share of "
        f"{stats.get('realised_q', cell.q):.4g} of its sequences.",
        "",
        *([f"The word-count checkpoint of {words[0]:,} words: the first step by which the run had seen "
           f"that many, {words[1]:,} words (real and synthetic alike, each word counted where its "
           f"first token is; cdray.models.words).", ""] if words else []),
        "Load it with `AutoModelForCausalLM.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`.",
        "",
        "## Recipe", "", "```json", json.dumps(recipe, indent=1, sort_keys=True), "```", "",
        "## Model", "", "```json", json.dumps(cell.train.config["model"], indent=1, sort_keys=True), "```", "",
        "## Data", "",
        f"Real text: the corpus `{keys['corpus']}` ({json.dumps(corpus.config.get('sources', corpus.config))[:400]}).",
    ]
    if cell.train.has_input("synthetic"):
        gen = cell.train.input("synthetic").input("generate")
        lines += [f"Synthetic text: the corpus `{gen.key}` ({cell.arm}), sampled with "
                  f"`{json.dumps(gen.config.get('generation', {}), sort_keys=True)[:600]}`."]
    lines += ["", "## Store keys", "", *(f"- {stage}: `{key}`" for stage, key in sorted(keys.items())), ""]
    return "\n".join(lines)
