"""The generate stage's actor class on one device, without Ray: shards against the engine alone.

Run: PYTHONPATH=. .venv/bin/python bench/shard_device.py --preset tiny   (CPU, after `make demo`)
     PYTHONPATH=. .venv/bin/python bench/shard_device.py --quick   (CPU, seconds, no store: a
     tokenizer (vocab 256) and 32 seed chunks made here from generated English, batch 16, 16 new
     tokens, shards of 8 prompts; the same lines, about a random pair)
GPU: python3 bench/shard_device.py --device cuda --preset good --precision bf16 --kv-cache fp8
Builds the expert and a same-shaped EARLY-like amateur (random weights, sharpened heads) with the
demo store's tokenizer and seed prompts (or --tokenizer / --seed-parquet), saves them as the
train stage does, and loads them through cdray.decode.synthetic.ShardGenerator, the class each Ray
Data actor holds: weights read on the CPU and stacked onto the device, a batch planned from
memory, shards run at once through one SharedBatch as an actor runs them. Prints:
- the engine alone on the same decoder (one fixed-length batch): new tokens/s;
- every shard, run as many at a time as the stage runs (shards_per_actor, or --calls): tokens
  over the wall time, as a fraction of the engine alone
  (what the stage's own work costs: tokenizer decode, statistics, decontamination, parquet);
- the same first shards at another batch size, in a fresh generator: shard files identical or not.
Last line: `shards_vs_engine=X shard_bytes_identical=True|False`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

PRESETS = {"good": dict(layers=12, hidden=768, heads=12, ffn=3072),  # the paper's GOOD
           "tiny": dict(layers=2, hidden=64, heads=2, ffn=128)}


def demo_inputs(store: Path) -> tuple[Path, Path]:
    """(tokenizer dir, seed parquet) of the demo store."""
    tokenizers = sorted(store.glob("tokenizer/*/tokenizer.json"))
    seeds = sorted(store.glob("corpus/*/seed.parquet"))
    if not tokenizers or not seeds:
        raise SystemExit(f"no tokenizer or corpus under {store}: run `make demo` first, or pass "
                         f"--tokenizer and --seed-parquet")
    return tokenizers[0].parent, seeds[0]


def quick_inputs(work: Path) -> tuple[Path, Path]:
    """--quick: (tokenizer dir, seed parquet) made here: a BPE of 256 tokens trained on generated
    English sentences, and 32 of them as seed chunks."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import synthetic_document

    from cdray.config import TokenizerConfig
    from cdray.data.tokenizer import train_tokenizer

    rng = random.Random(0)
    texts = [synthetic_document(rng, 8) for _ in range(200)]
    pq.write_table(pa.table({"text": texts}), work / "train.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=256), work / "train.parquet", work / "tokenizer")
    seed = texts[:32]
    pq.write_table(pa.table({"source": ["generated"] * len(seed), "doc_id": [f"d{i}" for i in range(len(seed))],
                             "text": seed, "words": [len(t.split()) for t in seed]}), work / "seed.parquet")
    return work / "tokenizer", work / "seed.parquet"


def save_pair(args, vocab: int, out: Path) -> tuple[Path, Path]:
    import torch

    from cdray.config import ModelConfig
    from cdray.models.llama import build_model, save_model

    shape = ModelConfig(**PRESETS[args.preset], context=1024)
    dirs = []
    for seed, name in ((0, "expert"), (1, "amateur")):
        model = build_model(shape, vocab, seed)
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)  # trained-like peaked distributions
        save_model(model, out / name)
        dirs.append(out / name)
    return dirs[0], dirs[1]


def tiled_prompts(seed_parquet: Path, tokenizer: Path, tile: int, out: Path) -> int:
    """The seed prompts repeated `tile` times under new prompt ids (each id seeds its own rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cdray.decode.synthetic import make_prompts

    make_prompts(seed_parquet, tokenizer, 20, out.with_suffix(".once.parquet"))
    once = pq.read_table(out.with_suffix(".once.parquet"))
    prompts = once.column("prompt").to_pylist() * tile
    table = pa.table({"prompt_id": pa.array(np.arange(len(prompts), dtype=np.int64)),
                      "prompt": pa.array(prompts, type=pa.list_(pa.int32()))})
    pq.write_table(table, out)
    return len(prompts)


def run_shards(gen, plan: list[dict], threads: int) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        manifests = list(pool.map(lambda s: gen.run_shard(s["shard_id"], s["start"], s["end"]),
                                  plan))
    return manifests, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--kv-cache", choices=["model", "fp8"], default="model")
    p.add_argument("--batch", type=int, default=64, help="generation.batch_size (the cap)")
    p.add_argument("--new", type=int, default=64, help="max new tokens per row")
    p.add_argument("--tile", type=int, default=1, help="repeat the seed prompts this many times")
    p.add_argument("--shard-prompts", type=int, default=32)
    p.add_argument("--calls", type=int, default=0,
                   help="shards run at once (default: the stage's, generation.shards_per_actor)")
    p.add_argument("--store", default=str(ROOT / ".cdray" / "store"))
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--seed-parquet", default=None)
    p.add_argument("--quick", action="store_true",
                   help="no store: a tokenizer and seed chunks made here, batch 16, 16 new tokens (seconds)")
    args = p.parse_args()
    if args.quick:
        args.batch, args.new, args.shard_prompts = 16, 16, 8

    import torch

    from cdray.config import GenerationConfig
    from cdray.data.tokenizer import load_tokenizer
    from cdray.decode.shards import shard_paths
    from cdray.decode.synthetic import ShardGenerator, shard_plan, shards_per_actor

    work = Path(tempfile.mkdtemp(prefix="cdray-shards-"))
    if args.tokenizer and args.seed_parquet:
        tokenizer, seed_parquet = Path(args.tokenizer), Path(args.seed_parquet)
    elif args.quick:
        tokenizer, seed_parquet = quick_inputs(work)
    else:
        tokenizer, seed_parquet = demo_inputs(Path(args.store))
    vocab = len(load_tokenizer(tokenizer))
    expert, amateur = save_pair(args, vocab, work)
    n_prompts = tiled_prompts(seed_parquet, tokenizer, args.tile, work / "prompts.parquet")
    generation = GenerationConfig(batch_size=args.batch, max_new_tokens=args.new,
                                  shard_prompts=args.shard_prompts, precision=args.precision,
                                  kv_cache=args.kv_cache, memory_fraction=0.7, progress=False)

    def generator(batch: int, out: str) -> ShardGenerator:
        g = dataclasses.replace(generation, batch_size=batch)
        return ShardGenerator(expert_dir=str(expert), amateur={"kind": "early",
                                                               "model_dir": str(amateur)},
                              strategy="contrastive", generation=g,
                              prompts_path=str(work / "prompts.parquet"),
                              out_dir=str(work / out), tokenizer_dir=str(tokenizer),
                              device=args.device, torch_threads=2)

    t0 = time.perf_counter()
    gen = generator(args.batch, "corpus")
    print(f"{args.preset} pair, vocab {vocab}, {args.device} {args.precision}, kv {args.kv_cache}; "
          f"generator ready in {time.perf_counter() - t0:.1f} s, batch {gen.batch_size} "
          f"(cap {args.batch}); {n_prompts} prompts x {generation.continuations}, "
          f"{args.new} new tokens at most")

    # the engine alone: one batch of fixed-length rows (after a warm-up that captures its graphs)
    import pyarrow.parquet as pq

    prompts = pq.read_table(work / "prompts.parquet").column("prompt").to_pylist()
    rows = [prompts[i % len(prompts)] for i in range(gen.batch_size)]
    kw = dict(max_new_tokens=args.new, stop_at_eos=False, batch_size=gen.batch_size,
              max_len=gen.max_len)
    gen.decoder.generate(rows, list(range(len(rows))), **kw)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = gen.decoder.generate(rows, list(range(len(rows))), **kw)
    engine_tok_s = sum(len(r.tokens) for r in done) / (time.perf_counter() - t0)
    print(f"engine alone: {engine_tok_s:.0f} new tok/s (batch {gen.batch_size}, fixed length)")

    plan = shard_plan(n_prompts, args.shard_prompts)
    # as the stage decides it: from the batch cap (the driver does not know the planned batch)
    calls = args.calls or shards_per_actor(args.batch, args.shard_prompts * generation.continuations)
    manifests, wall = run_shards(gen, plan, threads=calls)
    tokens = sum(m["new_tokens"] for m in manifests)
    rates = sorted(m["tokens_per_s"] for m in manifests)
    util = sum(m["row_steps"] for m in manifests) / max(1, sum(m["slot_steps"] for m in manifests))
    shards_tok_s = tokens / wall
    eos = sum(m["stats"].get("eos_rate", 0) * m["rows"] for m in manifests) / sum(
        m["rows"] for m in manifests)
    print(f"shards: {len(plan)} of {args.shard_prompts} prompts, {calls} at a time: {tokens} new "
          f"tokens in {wall:.2f} s = {shards_tok_s:.0f} tok/s; manifests' tokens_per_s "
          f"{rates[0]:.0f}..{rates[-1]:.0f}; EOS rate {eos:.3f}; batch slots busy (summed over "
          f"shards) {util:.3f}")
    gen.batch.close(30)

    other = max(1, gen.batch_size // 3)
    again = generator(other, "corpus_b")
    first = plan[:2]
    run_shards(again, first, threads=2)
    again.batch.close(30)
    same = True
    for s in first:
        a, b = (json.loads(shard_paths(work / out, s["shard_id"])[1].read_text())
                for out in ("corpus", "corpus_b"))
        same = same and a["sha256"] == b["sha256"]
    print(f"first {len(first)} shards again at batch {other}: files identical {same}")
    print(f"shards_vs_engine={shards_tok_s / engine_tok_s:.2f} shard_bytes_identical={same}")


if __name__ == "__main__":
    main()
