"""Stage builders: plain functions from a node's inputs (files in the store) to its output dir."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from cdray.common import console, faults
from cdray.common.special_tokens import BOS_ID, EOS_ID
from cdray.config import SweepConfig
from cdray.dag.execution import Execution
from cdray.dag.run_config import as_execution
from cdray.dag.graph import Node
from cdray.dag.store import Store

# A shard executor runs generation shards given as [{"shard_id", "start", "end"}, ...], in that
# order; with `enough`, it calls enough(counts) for each shard it commits, counts being the
# ShardGenerator's output row ({"shard_id", "rows", "new_tokens", "clean_tokens"}), and stops once
# that returns True (shards still in flight then may or may not commit: either is safe).
ShardExecutor = Callable[[dict, list[dict], Optional[Callable[[dict], bool]]], None]


def input_dir(store: Store, node: Node, name: str, only: Optional[Callable[[str], bool]] = None,
              fetch: bool = True) -> Path:
    """Where input `name` of `node` is on this host: a remote store downloads (and verifies) it
    first, just the files `only` accepts when given; fetch=False: where it would be."""
    dep = node.input(name)
    return store.fetch(dep.stage, dep.key, only) if fetch else store.dir(dep.stage, dep.key)


def milestone_weights(*steps: int) -> Callable[[str], bool]:
    """The files of a training run that readers of these milestones' weights need."""
    wanted = tuple(f"step_{s:06d}/" for s in steps)
    return lambda rel: rel.startswith(wanted) and (rel.split("/", 1)[1].startswith("model/")
                                                   or rel.endswith("/trainer_state.json"))


def every_milestone_weights(rel: str) -> bool:
    return rel.startswith("step_") and ("/model/" in rel or rel.endswith("/trainer_state.json"))


def downloads(store: Store) -> Path:
    """This node's downloads: pinned packages, mirrors of remote data folders, data digests."""
    return store.root / "_downloads"


def build_corpus(node: Node, ex: Execution, store: Store, out: Path) -> dict:
    from cdray.data.corpus import build_corpus as build
    from cdray.data.source_files import local_corpus

    # folder sources read from this node's disk (a remote one mirrored), checked against the
    # digests the key was planned with
    corpus = local_corpus(ex.corpus(node.config), None, node.config, downloads(store))
    return build(corpus, out, downloads(store))


def build_tokenizer(node: Node, ex: Execution, store: Store, out: Path) -> dict:
    from cdray.config import TokenizerConfig, parse_section
    from cdray.data.tokenizer import train_tokenizer

    recipe = parse_section(TokenizerConfig, node.config, "tokenizer")
    return train_tokenizer(recipe, input_dir(store, node, "corpus") / "train.parquet", out)


def build_tokens(node: Node, ex: Execution, store: Store, out: Path) -> dict:
    from cdray.data.tokenizer import tokenize_parquet, write_token_stream

    split = node.config["split"]
    if split == "synthetic":
        import pyarrow.parquet as pq

        table = pq.read_table(input_dir(store, node, "generate") / "corpus.parquet", columns=["tokens"])
        # generated rows already are token ids (prompt incl. BOS + continuation); strip a leading
        # BOS / trailing EOS so write_token_stream's wrapping does not double them
        def docs():
            for toks in table.column("tokens").to_pylist():
                if toks and toks[0] == BOS_ID:
                    toks = toks[1:]
                if toks and toks[-1] == EOS_ID:
                    toks = toks[:-1]
                yield toks

        return write_token_stream(docs(), out / "tokens.npy")
    corpus = input_dir(store, node, "corpus") / f"{split}.parquet"
    return tokenize_parquet(input_dir(store, node, "tokenizer"), corpus, out / "tokens.npy")


def build_prompts(node: Node, ex: Execution, store: Store, out: Path) -> dict:
    from cdray.decode.synthetic import make_prompts

    return make_prompts(input_dir(store, node, "corpus") / "seed.parquet",
                        input_dir(store, node, "tokenizer"), node.config["prompt_tokens"],
                        out / "prompts.parquet")


def train_job(node: Node, run: SweepConfig | Execution, store: Store, fetch: bool = True):
    """The pure training job of a train node (paths resolved in the store; fetch=False: where
    they will be once fetched, by the workers that read them)."""
    from cdray.config import ModelConfig, parse_section
    from cdray.models.train_data import TrainJob

    c = node.config
    syn = str(input_dir(store, node, "synthetic", fetch=fetch) / "tokens.npy") if node.has_input("synthetic") else None
    return TrainJob(
        model=parse_section(ModelConfig, c["model"], "model"),
        vocab_size=c["vocab_size"],
        recipe=as_execution(run).recipe(c["recipe"]),
        seed=c["seed"],
        q=c["q"],
        milestones=tuple(c["milestones"]),
        real_tokens=str(input_dir(store, node, "real", fetch=fetch) / "tokens.npy"),
        eval_tokens=str(input_dir(store, node, "eval", fetch=fetch) / "tokens.npy"),
        synthetic_tokens=syn,
        tokenizer_dir=str(input_dir(store, node, "tokenizer", fetch=fetch)) if node.has_input("tokenizer") else None,
    )


def build_train_local(node: Node, ex: Execution, store: Store, out: Path) -> dict:
    from cdray.models.training import train

    job = train_job(node, ex, store)
    return train(job, out, keep_resume=job.recipe.keep_resume)


def step_dir(run_dir: Path, step: int) -> Path:
    """The saved model of a training run's milestone `step`."""
    from cdray.models import checkpoints

    return checkpoints.step_dir(run_dir, step) / "model"


def generator_kwargs(node: Node, run: SweepConfig | Execution, store: Store, out: Path) -> dict:
    """Constructor arguments of generation.ShardGenerator for a generate node."""
    c, ex = node.config, as_execution(run)
    expert_dir = step_dir(input_dir(store, node, "expert", milestone_weights(c["expert_step"])), c["expert_step"])
    amateur = dict(c["amateur"])
    kind = amateur["kind"]
    if kind in ("early", "small"):
        run = input_dir(store, node, "amateur", milestone_weights(amateur["step"]))
        amateur["model_dir"] = str(step_dir(run, amateur["step"]))
    elif kind == "dropout":
        amateur["model_dir"] = str(expert_dir)
    else:
        amateur["model_dir"] = None
    amateur.setdefault("dropout", 0.0)
    return {
        "expert_dir": str(expert_dir),
        "amateur": amateur,
        "strategy": c["strategy"],
        "generation": ex.generation_config(c["generation"]),
        "prompts_path": str(input_dir(store, node, "prompts") / "prompts.parquet"),
        "tokenizer_dir": str(input_dir(store, node, "tokenizer")),
        "out_dir": str(out),
        "eval_parquet": (str(input_dir(store, node, "corpus") / "eval.parquet")
                         if node.has_input("corpus") else None),
        # a URI: the actors mirror it on their own nodes, into the store's downloads there
        "eval_items_dir": eval_items_dir(c, ex, downloads(store)),
        "data_cache": str(downloads(store)),
    }


def eval_items_dir(c: dict, ex: Execution, cache: Optional[Path] = None, local: bool = False) -> Optional[str]:
    """Where the evaluation items a generate (or contamination) node reads are: a path or a URI
    (local: a URI's mirror in cache). Their key holds the items' digest, checked here; the run's
    config says where they are."""
    if "eval_items" not in c:
        return None
    from cdray.common.redaction import mask_uri
    from cdray.data.telemetry import reference_digest, reference_folder

    folder = ex.babylm_dir
    if c["eval_items"] != "missing" and reference_digest(folder, cache) != c["eval_items"]:
        raise ValueError(f"eval.babylm_dir {mask_uri(folder)!r}: its evaluation items changed since the "
                         f"sweep was planned")
    return str(reference_folder(folder, cache)) if local else folder


def build_generate(node: Node, ex: Execution, store: Store, out: Path,
                   execute: Optional[ShardExecutor] = None,
                   progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Generate shards in prompt order until the leading ones hold the token budget, then
    finalise the corpus.

    One pass over the shards still to do, stopped once the budget is met: how many shards that
    takes is known only as they commit (rows stop at EOS), and a single pass starts the stage's
    actors once. Shards already committed (their manifest exists) are never regenerated, so an
    interrupted run resumes where it stopped; the kept rows depend only on shard order, not on
    timing. progress, when given, gets the stage's figures as each shard commits ("shards"
    committed, "leading_tokens", "tokens_per_s" of this pass so far, actor start-up included).
    """
    import pyarrow.parquet as pq

    from cdray.decode.shards import committed_tokens, finalize_corpus, leading_tokens
    from cdray.decode.synthetic import budget_reachable, shard_plan

    kwargs = generator_kwargs(node, ex, store, out)
    gen = kwargs["generation"]
    n_prompts = pq.read_metadata(kwargs["prompts_path"]).num_rows
    budget_reachable(gen, n_prompts)
    shards = shard_plan(n_prompts, gen.shard_prompts)
    execute = execute or _execute_in_process
    # rows a corpus drops do not count toward its budget
    count = "clean_tokens" if gen.drop_contaminated else "new_tokens"
    tokens = committed_tokens(out, count)
    while True:
        have = leading_tokens(tokens, len(shards))
        todo = [s for s in shards if s["shard_id"] not in tokens]
        if have >= gen.token_budget or not todo:
            break
        if gen.progress:
            console.progress(node.label, f"{len(tokens)}/{len(shards)} shards committed, {have:,}/"
                             f"{gen.token_budget:,} tokens; generating the rest in order until the budget is met",
                             final=True)

        def enough(counts: dict) -> bool:
            seen[int(counts["shard_id"])] = int(counts[count])
            leading = leading_tokens(seen, len(shards))
            made["tokens"] += int(counts["new_tokens"])
            rate = made["tokens"] / max(time.perf_counter() - made["since"], 1e-9)
            if progress is not None:
                progress({"shards": len(seen), "leading_tokens": leading, "tokens_per_s": rate})
            if gen.progress:
                eta = (gen.token_budget - leading) / rate if rate > 0 and leading < gen.token_budget else 0
                console.progress(node.label, f"{min(leading, gen.token_budget):,}/{gen.token_budget:,} tokens "
                                 f"({100 * min(1.0, leading / gen.token_budget):.0f}%), {rate:,.0f} tok/s, "
                                 f"ETA {int(eta // 60)}:{int(eta % 60):02d}")
            return leading >= gen.token_budget

        seen = dict(tokens)
        made = {"tokens": 0, "since": time.perf_counter()}  # this pass's, start-up included
        execute(kwargs, todo, enough)
        after = committed_tokens(out, count)
        if set(after) == set(tokens):
            raise RuntimeError(f"generate {node.label}: no shard was committed in {out}")
        tokens = after
    return finalize_corpus(out, len(shards), gen.token_budget, drop_contaminated=gen.drop_contaminated,
                           tokenizer_dir=Path(kwargs["tokenizer_dir"]), max_new_tokens=gen.max_new_tokens)


def _execute_in_process(kwargs: dict, shards: list[dict],
                        enough: Optional[Callable[[dict], bool]] = None) -> None:
    import numpy as np

    from cdray.decode.synthetic import ShardGenerator

    gen = ShardGenerator(**kwargs)
    for s in shards:
        res = gen({k: np.array([s[k]]) for k in ("shard_id", "start", "end")})
        if enough is not None and enough({k: int(v[0]) for k, v in res.items()}):
            return


def build_contamination(node: Node, ex: Execution, store: Store, out: Path) -> dict:
    """How many rows of a synthetic corpus share a word n-gram with the evaluation items."""
    from cdray.data.telemetry import contamination_stats

    return contamination_stats(input_dir(store, node, "generate") / "corpus.parquet",
                               input_dir(store, node, "tokenizer"),
                               eval_items_dir(node.config, ex, downloads(store), local=True), node.config["n"])


def build_evaluate(node: Node, ex: Execution, store: Store, out: Path) -> dict:
    from cdray.eval.device import eval_device
    from cdray.eval.perplexity import evaluate_run

    c = node.config
    return evaluate_run(input_dir(store, node, "run", every_milestone_weights),
                        input_dir(store, node, "eval") / "tokens.npy", out,
                        seq_len=c["seq_len"], max_blocks=c["max_blocks"], batch_size=ex.eval["batch_size"],
                        device=eval_device(ex.use_gpu), precision=c.get("precision", "fp32"))


def build_babylm(node: Node, ex: Execution, store: Store, out: Path, lm=None) -> dict:
    """One BabyLM (or built-in lm-eval) task on one milestone of a training run (lm: that
    milestone's model already loaded for lm-eval, build_babylm_group)."""
    from cdray.eval.device import eval_device
    from cdray.eval.tasks import evaluate_builtin, evaluate_task

    c = node.config
    model_dir = step_dir(input_dir(store, node, "run", milestone_weights(c["step"])), c["step"])
    tokenizer_dir = input_dir(store, node, "tokenizer")
    batch = ex.eval["scoring_batch_size"]
    run_on = {"device": eval_device(ex.use_gpu), "precision": c.get("precision", "fp32")}
    if c["task"].startswith("lm_eval:"):
        summary = evaluate_builtin(model_dir, tokenizer_dir, c["task"].split(":", 1)[1], out, batch_size=batch,
                                   **run_on)
    else:
        data_dir = babylm_task_dir(ex, c, downloads(store))
        summary = evaluate_task(model_dir, tokenizer_dir, data_dir, c["task"], out,
                                max_items=c["max_items"], batch_size=batch, lm=lm,
                                reading_mode=c.get("mode", "exact"), **run_on)
    return {"task": c["task"], "step": c["step"], "scores": summary["scores"],
            "items": summary.get("items", {}), "truncated": summary.get("truncated", {})}


def babylm_task_dir(ex: Execution, c: dict, cache: Path) -> str:
    """The local BabyLM folder holding a babylm node's task files (a URI's mirror in cache),
    checked against the digest the node was planned with."""
    from cdray.common.redaction import mask_uri
    from cdray.data import folders
    from cdray.eval import babylm

    where = ex.babylm_dir
    local = folders.mirror(where, babylm.task_file(c["task"]), cache) if where and folders.exists(where) else None
    if local is None or babylm.data_digest(local, c["task"], cache) != c["data"]:
        shown = mask_uri(where) if where else where
        raise ValueError(f"eval.babylm_dir {shown!r}: its {c['task']} files changed since the sweep was planned")
    return str(local)


def checkpoint_of(node: Node) -> tuple[str, int]:
    """The (training run key, step) a babylm node scores: nodes sharing it share a model."""
    return node.input("run").key, int(node.config["step"])


def build_babylm_group(nodes: list[Node], run: SweepConfig | Execution, store: Store) -> list[dict]:
    """Every task node of one checkpoint, in this process: the checkpoint is loaded and lm-eval
    started once for all of them (each task's start-up dominates at small item counts)."""
    from functools import partial

    from cdray.eval.device import eval_device
    from cdray.eval.tasks import hf_lm

    ex = as_execution(run)
    if len({checkpoint_of(n) for n in nodes}) > 1:
        raise ValueError("build_babylm_group: the nodes score different checkpoints")
    lm, out = None, []
    for node in nodes:
        if lm is None and not store.is_done(node.stage, node.key) and not node.config["task"].startswith("lm_eval:"):
            require_inputs(node, store)
            model_dir = step_dir(input_dir(store, node, "run", milestone_weights(node.config["step"])),
                                 node.config["step"])
            lm = hf_lm(model_dir, input_dir(store, node, "tokenizer"), ex.eval["scoring_batch_size"],
                       eval_device(ex.use_gpu), node.config.get("precision", "fp32"))
        out.append(build(node, ex, store, builder=partial(build_babylm, lm=lm)))
    return out


# a builder reads its node (config slice and inputs) and the run's Execution, never the sweep's config
BUILDERS: dict[str, Callable[[Node, Execution, Store, Path], dict]] = {
    "corpus": build_corpus,
    "tokenizer": build_tokenizer,
    "tokens": build_tokens,
    "prompts": build_prompts,
    "train": build_train_local,
    "generate": build_generate,
    "evaluate": build_evaluate,
    "babylm": build_babylm,
    "contamination": build_contamination,
}


class MissingInputError(RuntimeError):
    """A node was asked to build before one of its inputs was committed (a planning bug)."""


def require_inputs(node: Node, store: Store) -> None:
    """Raise MissingInputError naming the first input of `node` that is not built."""
    for name, dep in node.inputs:
        if not store.is_done(dep.stage, dep.key):
            raise MissingInputError(f"{node.label}: its input {name!r} ({dep.label}, "
                                    f"{dep.stage}/{dep.key}) is not built")


def build(node: Node, run: SweepConfig | Execution, store: Store,
          builder: Optional[Callable[[Node, Execution, Store, Path], dict]] = None,
          extra: Optional[dict] = None, in_place: bool = False) -> dict:
    """Get-or-build one node in this process once all its inputs are built; returns its manifest.
    `in_place`: the builder returns (stats, files) of files it put where they live (Store.get_or_build)."""
    if store.is_done(node.stage, node.key):
        return store.manifest(node.stage, node.key)
    require_inputs(node, store)
    fn = builder or BUILDERS[node.stage]
    ex = as_execution(run)
    def make(out: Path):
        faults.hold_seconds(node.stage)  # the schedule benchmark's set length (nothing unless asked)
        return fn(node, ex, store, out)

    return store.get_or_build(node.stage, node.key, make,
                              config=node.config, inputs=node.input_keys,
                              extra={"label": node.label, **(extra or {})}, in_place=in_place)
