"""Generation shards run one at a time vs two at once through one shared decode batch.

Run (after `make demo`, whose store holds the trained models):
    PYTHONPATH=. .venv/bin/python bench/shard_overlap.py           (about a minute on 2 CPU cores)
    PYTHONPATH=. .venv/bin/python bench/shard_overlap.py --quick   (seconds, no demo store: the
        tests' micro sweep built here in-process (its GOOD trained 12 steps without Ray), arm
        CD-EARLY-4, 3 shards of 8 prompts once each way; the same lines, untrained-model numbers)

A Ray Data generation actor now runs two shards at once (two concurrent calls) whose rows share
its decode batch (cdray.decode.shared_batch): the next shard's rows take the slots that the last rows of
the previous one free, where a shard run alone drains the batch at its end. This times one
ShardGenerator of the demo's CD-EARLY-50 arm (its GOOD and step-50 checkpoints, its prompts and
generation settings, EOS stops) over the same shards both ways, in turns (A B A B ...), after a
warm-up shard, and prints each side's slot utilization (the share of computed batch slots that
sampled a token) and new tokens/s. Rows are identical both ways (tests/test_generation.py).
Last line: two_at_once_vs_one_at_a_time=X (ratio of tokens/s; > 1 is faster).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def run(kwargs: dict, shards: int, prompts: int, at_once: int) -> tuple[float, float]:
    """(slot utilization, new tokens/s) of `shards` shards after a warm-up one."""
    import numpy as np

    from cdray.decode.synthetic import ShardGenerator

    def spec(i: int) -> dict:
        return {"shard_id": np.array([i]), "start": np.array([i * prompts]),
                "end": np.array([(i + 1) * prompts])}

    with tempfile.TemporaryDirectory() as d:
        gen = ShardGenerator(**{**kwargs, "out_dir": d}, torch_threads=2)
        gen(spec(0))
        before = dict(gen.batch.usage)
        slots = threading.Semaphore(at_once)  # as Ray Data's concurrent calls per actor

        def call(i: int) -> None:
            with slots:
                gen(spec(i))

        t0 = time.perf_counter()
        threads = []
        for i in range(1, shards + 1):
            threads.append(threading.Thread(target=call, args=(i,)))
            threads[-1].start()
            time.sleep(0.01)  # shards start in order, as the pool hands them out
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        used = {k: gen.batch.usage[k] - before[k] for k in before}
        tokens = sum(json.loads((Path(d) / "shards" / f"shard_{i:05d}.json").read_text())["new_tokens"]
                     for i in range(1, shards + 1))
    return used["row_steps"] / used["slot_steps"], tokens / seconds


def quick_sweep(work: Path):
    """--quick: the tests' micro sweep (generated English, micro models, 12 training steps)."""
    from conftest import micro_sweep_dict, write_text_corpus

    from cdray.config import from_dict

    d = micro_sweep_dict(write_text_corpus(work / "corpus", n_docs=80), work)
    d["corpus"]["seed_fraction"] = 0.3  # prompts enough for 4 shards of 8
    d["tracking"]["enabled"] = False
    return from_dict(d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default=str(ROOT / "sweeps" / "tiny.yaml"))
    p.add_argument("--arm", default="CD-EARLY-50")
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="a micro sweep built here in-process instead of the demo's store (seconds)")
    args = p.parse_args()

    from cdray.config import load
    from cdray.dag.builders import build, generator_kwargs
    from cdray.dag.graph import build_graph
    from cdray.sweep.plan import anchored, open_store

    if args.quick:
        work = tempfile.TemporaryDirectory(prefix="cdray-overlap-")
        cfg, args.arm, args.shards, args.repeats = quick_sweep(Path(work.name)), "CD-EARLY-4", 3, 1
    else:
        cfg = anchored(load(args.sweep))
    cfg = replace(cfg, generation=replace(cfg.generation, progress=False))
    store = open_store(cfg)
    node = next(n for n in build_graph(cfg).nodes() if n.stage == "generate" and args.arm in n.label)
    if args.quick:
        for dep in node.walk():  # inputs first; the GOOD trains in this process (no Ray)
            if dep is not node:
                build(dep, cfg, store)
    for _, inp in node.inputs:
        if not store.is_done(inp.stage, inp.key):
            raise SystemExit(f"{inp.label} is not in the store {cfg.store.root}: run `make demo` first")
    kwargs = generator_kwargs(node, cfg, store, Path("unused"))
    g = cfg.generation
    print(f"{node.label}: shards of {g.shard_prompts} prompts x {g.continuations} rows, batch "
          f"{g.batch_size}, up to {g.max_new_tokens} new tokens, EOS stops {g.stop_at_eos}")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for at_once in (1, 2):
            used, rate = run(kwargs, args.shards, g.shard_prompts, at_once)
            rates[at_once].append(rate)
            print(f"{at_once} shard(s) at once: slot utilization {used:.3f}, {rate:.0f} new tok/s")
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"two_at_once_vs_one_at_a_time={ratio:.3f}")


if __name__ == "__main__":
    main()
