"""Generation scaling: corpus generation with 1 vs 2 Ray Data actors on the same prompts.

Run from the repo root (after `make setup`):
    .venv/bin/python bench/generation_scaling.py           # a few minutes on 2 idle CPU cores
    .venv/bin/python bench/generation_scaling.py --quick   # 16 prompts x 2 x 16 tokens, 1 then 2 actors
                                                          # once each (~1 minute; a noisy ratio)

Both runs go through cdray's generate path, `ray_exec.generate_with_ray_data` (a Ray Data
ActorPoolStrategy pool of `generation.ShardGenerator` actors, each holding expert and amateur, with
generation.actor_cpus=0.5 so two actors leave a CPU for Ray Data's read tasks, and 1 torch thread
each), on the same prompts, shards, models and seeds, contrastive decoding with an EARLY-style
amateur of the expert's shape, `stop_at_eos: false` so both runs do exactly the same work (rows
depend only on prompt, seed and models, so the two corpora must be identical, which is checked).
Throughput = new tokens / time from the first shard's start to the last shard's end (from the shard
manifests): the generation rate once the actors are up (the ratio line). The same over the wall time
of the whole generate call, actor start-up included (4-9 s here: Ray Data and the actor processes
starting, each importing torch and loading both models; it was 10-18 s while actors imported
transformers), is printed beside it as two_vs_one_actor_wall.
The order alternates 1, 2, 2, 1 actors to cancel drift in the host's load.
Last line: two_vs_one_actor=X  (decoding throughput ratio, target >= 1.6 on 2 cores)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def setup(tmp: Path, n_docs: int) -> tuple:
    """Corpus, tokenizer and prompts through cdray's own stages; random-init expert and amateur."""
    from conftest import micro_sweep_dict, write_text_corpus

    from cdray import config as C
    from cdray.dag import builders as stages
    from cdray.dag.graph import build_graph
    from cdray.dag.store import Store
    from cdray.models.llama import build_model, save_model

    d = micro_sweep_dict(write_text_corpus(tmp / "text", n_docs=n_docs), tmp)
    d["corpus"]["seed_fraction"] = 0.5  # plenty of prompts
    d["tokenizer"]["vocab_size"] = 2000
    d["generation"].update(prompt_tokens=16, stop_at_eos=False, actor_cpus=0.5)
    cfg = C.from_dict(d)
    graph = build_graph(cfg)
    store = Store.at(cfg.store.root)
    for node in (graph.corpus, graph.tokenizer, graph.prompts):
        stages.build(node, cfg, store)
    tok_dir = store.dir("tokenizer", graph.tokenizer.key)
    prompts = store.dir("prompts", graph.prompts.key) / "prompts.parquet"
    shape = C.ModelConfig(**C.MODEL_PRESETS["tiny"])  # the demo's GOOD shape
    dirs = {}
    for name, seed in (("expert", 1), ("amateur", 2)):
        dirs[name] = tmp / "models" / name
        save_model(build_model(shape, cfg.tokenizer.vocab_size, seed), dirs[name])
    return cfg, str(tok_dir), str(prompts), dirs


def shard_intervals(shard_dir: Path) -> list[tuple[float, float]]:
    """(start, end) of every shard, from its manifest (file mtime = commit time, `seconds` = its
    span from the call to the commit); empty if the manifests do not say how long a shard took."""
    import json

    spans = []
    for p in shard_dir.glob("*.json"):
        seconds = json.loads(p.read_text()).get("seconds")
        if seconds is None:
            return []
        end = p.stat().st_mtime
        spans.append((end - seconds, end))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of shards in flight at the same moment (an actor runs up to
    generation.shards_per_actor at once, sharing its batch)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller workload (noisier ratio)")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pyarrow.parquet as pq
    from common import load_line, start_ray

    from cdray.decode.synthetic import shard_plan
    from cdray.shell.ray_exec import generate_with_ray_data

    print(load_line())
    with tempfile.TemporaryDirectory(prefix="cdray-bench-gen-") as tmp:
        tmp = Path(tmp)
        cfg, tok_dir, prompts, dirs = setup(tmp, 60 if args.quick else 300)
        n_prompts = pq.read_metadata(prompts).num_rows
        n_use = min(n_prompts, 16 if args.quick else 192)
        gen = dataclasses.replace(cfg.generation, continuations=2, max_new_tokens=16 if args.quick else 64,
                                  batch_size=16, shard_prompts=max(1, n_use // 8), token_budget=10**9)
        shards = shard_plan(n_use, gen.shard_prompts)
        print(f"workload: {n_use} prompts x {gen.continuations} continuations x {gen.max_new_tokens} new "
              f"tokens in {len(shards)} shards, batch {gen.batch_size}; expert and amateur 4x128 "
              f"(vocab {cfg.tokenizer.vocab_size}); contrastive; actor_cpus={gen.actor_cpus}, 1 torch thread")
        start_ray()

        def run(actors: int, tag: str) -> float:
            g = dataclasses.replace(gen, actors=actors)
            out = tmp / f"out-{actors}{tag}"  # a fresh dir: committed shards are never redone
            kwargs = {"expert_dir": str(dirs["expert"]),
                      "amateur": {"kind": "early", "step": 0, "model_dir": str(dirs["amateur"]), "dropout": 0.0},
                      "strategy": "contrastive", "generation": g, "prompts_path": prompts,
                      "tokenizer_dir": tok_dir, "out_dir": str(out)}
            t0, e0 = time.perf_counter(), time.time()
            generate_with_ray_data(kwargs, shards)
            wall, e1 = time.perf_counter() - t0, time.time()
            tokens = sum(pq.read_table(p, columns=["new_tokens"]).column("new_tokens").to_numpy().sum()
                         for p in sorted((out / "shards").glob("*.parquet")))
            intervals = shard_intervals(out / "shards")
            span = (max(e for _, e in intervals) - min(s for s, _ in intervals)) if intervals else None
            extra = (f"; {tokens / span:.0f} tok/s from first shard start to last shard end, "
                     f"at most {most_at_once(intervals)} shard(s) in flight at once; first shard "
                     f"started {min(s for s, _ in intervals) - e0:.1f} s into the call, the call returned "
                     f"{e1 - max(e for _, e in intervals):.1f} s after the last") if span else ""
            print(f"  {actors} actor(s) [{tag}]: {tokens} new tokens in {wall:.1f} s = "
                  f"{tokens / wall:.0f} tok/s{extra}")
            spans[actors].append(tokens / span if span else None)
            return tokens / wall

        rates, spans = {1: [], 2: []}, {1: [], 2: []}
        order = ((1, "a"), (2, "a")) if args.quick else ((1, "a"), (2, "a"), (2, "b"), (1, "b"))
        for actors, tag in order:
            rates[actors].append(run(actors, tag))
        same = all(
            pq.read_table(tmp / "out-1a" / "shards" / p.name).equals(pq.read_table(p))
            for p in sorted((tmp / "out-2a" / "shards").glob("*.parquet")))
        print(f"1- and 2-actor corpora identical: {same}")
        wall_ratio = sum(rates[2]) / sum(rates[1])
        if not all(v for v in spans[1] + spans[2]):
            sys.exit("the shard manifests carry no decoding time: cannot measure the decoding rate")
        ratio = sum(spans[2]) / sum(spans[1])
        print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        runs = len(order) // 2
        print(f"whole call, actor start-up included: 1 actor {sum(rates[1]) / runs:.0f} tok/s, 2 actors "
              f"{sum(rates[2]) / runs:.0f} tok/s: two_vs_one_actor_wall={wall_ratio:.3f}")
        print(f"while shards were being decoded: 1 actor {sum(spans[1]) / runs:.0f} tok/s, 2 actors "
              f"{sum(spans[2]) / runs:.0f} tok/s (target ratio >= 1.6)")
        print(f"two_vs_one_actor={ratio:.3f}")


if __name__ == "__main__":
    main()
