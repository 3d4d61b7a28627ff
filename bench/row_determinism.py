"""Are sampled rows bit-identical whatever the batch around them, on this device? (a check, for GPUs)

Run: python3 bench/row_determinism.py --device cuda   (seconds; bench/gpu_checks.sh runs it)
     .venv/bin/python bench/row_determinism.py --quick   (the CPU, ~40 s, eager attention)
     TRITON_INTERPRET=1 .venv/bin/python bench/row_determinism.py --quick --attention triton \
         --rows 6 --new 2   (Triton's kernels through its interpreter on the CPU, about half a
         minute; `bench/gpu_checks.sh --quick` runs this, and tests/test_bench.py runs that)
tests/test_decoding.py proves this on the CPU; GPU kernels (cuBLAS, attention) may pick other
algorithms for other row or key counts, so this repeats the test's idea on any device, where
pytest may be missing: one expert/amateur pair, rows ending early at a frequent EOS, generated at
several batch sizes, with and without refill, in reverse order, and as two concurrent requests
sharing one batch (cdray.decode.shared_batch, as a generation actor runs two shards). Last line:
`rows_identical=True|False` (tokens and float telemetry equal, bit for bit).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--attention", default="auto", help="one of cdray.decode.stacked.ATTENTION")
    p.add_argument("--quick", action="store_true",
                   help="two other batch sizes, not four (each batch size compiles the flex step)")
    p.add_argument("--compile-layers", action="store_true",
                   help="fast step: also compile the layers (generation.compile_layers)")
    p.add_argument("--kv-cache", default="model", help="one of cdray.decode.stacked.KV_CACHE")
    p.add_argument("--good", type=int, default=0, metavar="ROWS",
                   help="GOOD-shaped models (162M, random weights), ROWS rows of 64 new tokens at "
                        "batch ROWS against ROWS/2 with refill and 3*ROWS/4 reversed: row bits "
                        "across the batch sizes of a real run, where BLAS may pick other kernels")
    p.add_argument("--kernel-config", default="",
                   help="the triton attention's launch shape, BLOCK_N,WARPS,STAGES[,vector]")
    p.add_argument("--rows", type=int, default=24, help="rows of the tiny pair (not --good)")
    p.add_argument("--new", type=int, default=150, help="new tokens per row of the tiny pair (not --good)")
    args = p.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cdray.config import DecodingConfig
    from cdray.decode.attention import KernelConfig
    from cdray.decode.engine import Decoder

    good = args.good > 0
    shape = (dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=12) if good else
             dict(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2))

    def model(seed: int):
        torch.manual_seed(seed)
        cfg = LlamaConfig(**shape, max_position_embeddings=256, tie_word_embeddings=False)
        m = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():
            m.lm_head.weight.mul_(40.0)  # peaked distributions: a non-trivial V_head
        return m

    expert, amateur = model(0), model(1)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    n = args.good if good else args.rows
    if good:
        g = torch.Generator().manual_seed(0)
        prompts = [[1] + torch.randint(4, 32000, (19,), generator=g).tolist() for _ in range(n)]
    else:
        prompts = [[1, 4 + i, 30 - i] + [7] * (i % 5) for i in range(n)]
    seeds = [100 + i for i in range(n)]
    new_tokens, max_len = (64, 96) if good else (args.new, args.new + 10)
    settings = dict(device=args.device, dtype=dtype, attention=args.attention,
                    compile_layers=args.compile_layers, kv_cache=args.kv_cache)

    def decoder(strategy, d):
        dec = Decoder(expert, amateur, strategy, d, **settings)
        if args.kernel_config:
            for group in dec.groups:
                group.fast_options["kernel_config"] = KernelConfig.parse(args.kernel_config)
        return dec

    def generate(expert, amateur, prompts, seeds, strategy, d, **kw):
        return decoder(strategy, d).generate(prompts, seeds, max_len=max_len, **kw)

    # the pair's most frequent sampled token serves as EOS, so rows end early and slots refill
    probe = generate(expert, amateur, prompts, seeds, "contrastive", DecodingConfig(alpha=0.1),
                     max_new_tokens=min(20, new_tokens), stop_at_eos=False)
    eos = Counter(t for r in probe for t in r.tokens).most_common(1)[0][0]
    kw = dict(max_new_tokens=new_tokens, stop_at_eos=True, eos_id=eos)

    def rows(order, **extra):
        out = generate(expert, amateur, [prompts[i] for i in order], [seeds[i] for i in order],
                       "contrastive", DecodingConfig(alpha=0.1), **kw, **extra)
        by_row = dict(zip(order, out))
        return [(r.tokens, r.head_size_mean, r.expert_nll_mean, r.amateur_nll_mean)
                for r in (by_row[i] for i in range(len(prompts)))]

    base = rows(range(n), batch_size=n)
    lengths = sorted(len(r[0]) for r in base)
    print(f"{args.device} {args.dtype} {args.attention} {args.kernel_config or 'default'} "
          f"kv {args.kv_cache}: {n} rows{' (GOOD shape)' if good else ''}, EOS {eos}, "
          f"new tokens min {lengths[0]} median {lengths[n // 2]} max {lengths[-1]}")
    same = True
    others = ([(f"batch {n // 2}, refill", range(n), dict(batch_size=n // 2)),
               (f"batch {3 * n // 4}, reversed", range(n - 1, -1, -1), dict(batch_size=3 * n // 4))]
              if good else
              [("batch 1", range(n), dict(batch_size=1)),
               ("batch 5, refill", range(n), dict(batch_size=5)),
               ("batch 8, no refill", range(n), dict(batch_size=8, refill=False)),
               ("batch 16, reversed", range(n - 1, -1, -1), dict(batch_size=16))])
    def shared(batch_size):
        """The rows as two requests through one SharedBatch, the second joining mid-run."""
        import threading
        import time

        from cdray.decode.shared_batch import SharedBatch

        batch = SharedBatch(decoder("contrastive", DecodingConfig(alpha=0.1)),
                            batch_size=batch_size, max_len=max_len, **kw)
        out, half = {}, n // 2

        def call(lo, hi):
            out.update(zip(range(lo, hi), batch.generate(prompts[lo:hi], seeds[lo:hi])[0]))

        first = threading.Thread(target=call, args=(0, half))
        first.start()
        while not batch.usage["row_steps"] and first.is_alive():
            time.sleep(0.001)  # the first request is decoding
        call(half, n)
        first.join()
        print(f"  shared batch: slot utilization {batch.usage['row_steps'] / batch.usage['slot_steps']:.3f}")
        return [(r.tokens, r.head_size_mean, r.expert_nll_mean, r.amateur_nll_mean)
                for r in (out[i] for i in range(n))]

    others.append((f"2 requests, shared batch {n // 4 if good else 5}", None,
                   dict(batch_size=n // 4 if good else 5)))
    for name, order, extra in others:
        if args.quick and not good and name not in ("batch 5, refill", "batch 16, reversed") \
                and order is not None:
            continue
        other = rows(list(order), **extra) if order is not None else shared(**extra)
        diff = [i for i, (a, b) in enumerate(zip(base, other)) if a != b]
        print(f"{name:20s} rows differing from batch {n}: {len(diff)} {diff[:8]}")
        same = same and not diff
    print(f"rows_identical={same}")


if __name__ == "__main__":
    main()
