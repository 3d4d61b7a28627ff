"""Decode attention alone, at the paper's GOOD decoding shape: cdray's Triton kernel (launch shapes,
bf16 and fp8 caches) vs FlexAttention, as a fraction of this GPU's copy bandwidth (one run).

Run: python3 bench/decode_attention.py   (a CUDA machine; ~1 minute; bench/gpu_checks.sh runs it)
     .venv/bin/python bench/decode_attention.py --quick   (any machine, seconds: the CPU through
     Triton's interpreter, 4 rows of 2 heads x 16 over 64 keys, two launch shapes, wall-clock timing;
     checks the code path and the kernels' numbers; leaves out FlexAttention (a compiled GPU
     kernel) and any meaningful bandwidth figure)
Rows of GOOD + its EARLY amateur (2 x batch rows, 12 kv heads of 64) with key counts drawn
uniformly from [prompt, prompt + new]: what a decode step of a 400-token run reads on average.
Each line: kernel, cache, launch shape, microseconds per call, GB/s of cache bytes it must read,
and that rate over a device-to-device copy's (read + write bytes) measured in the same run.
Last line: `best_config=BLOCK_N,WARPS,STAGES[,PRODUCTS]` (the fastest fp8 shape; bf16's is printed
too).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

# launch shapes; on the H100 (BENCHMARKS.md) 64,4,3 was fastest for both caches, with the
# softmax over all 16 padded rows ("padded", the A/B reference). The one-row softmax ("mma" at
# GOOD's one query head per kv head) and the "vector" kernels (fp32 products on the vector units)
# are untried on a GPU so far.
GRID = ["64,4,3,padded", "64,4,3", "64,4,2", "128,4,3", "32,4,3", "64,2,3", "32,4,2,vector",
        "64,4,2,vector", "64,8,2,vector", "64,4,3,vector"]


QUICK_GRID = ["16,4,3", "16,4,2,vector"]  # --quick: shapes that fit its 64 keys


def timed(fn, iters: int, on_gpu: bool = True) -> float:
    """Seconds per call (CUDA events, after warm-up calls; else the wall clock)."""
    import time

    import torch

    if not on_gpu:
        fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def check_step(dev, b: int = 48) -> None:
    """The triton decode step against the eager step on this GPU (fp32 weights, GQA): logits,
    and the keys, values (and fp8 scales) each writes into the cache; b rows."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cdray.decode.attention import quantize
    from cdray.decode.stacked import StackedLlama

    cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(LlamaForCausalLM(cfg).eval())
    g = torch.Generator(device=dev).manual_seed(0)
    ids = torch.randint(4, 1000, (b, 1), generator=g, device=dev)
    positions = torch.randint(0, 300, (b, 1), generator=g, device=dev)
    for kv in ("model", "fp8"):
        s = StackedLlama(models, device=dev, attention="triton", kv_cache=kv)
        s.new_cache(b, 300)
        start = [torch.randn(c.shape, generator=g, device=dev) for c in s.k_cache + s.v_cache]
        if kv == "fp8":
            pairs = [quantize(c) for c in start]
            start = [q for q, _ in pairs]
            for dst, (_, sc) in zip(s.k_scale + s.v_scale, pairs):
                dst.copy_(sc)
        out = {}
        for kind in ("triton", "eager"):
            s.attention = kind
            for dst, src in zip(s.k_cache + s.v_cache, start):
                dst.view(torch.uint8).copy_(src.view(torch.uint8)) if kv == "fp8" else dst.copy_(src)
            logits = s.forward(ids, positions)
            out[kind] = (logits.clone(), [c.float().clone() for c in s.k_cache + s.v_cache + s.k_scale + s.v_scale])
        diff = (out["triton"][0] - out["eager"][0]).abs().max().item()
        same = sum(int(torch.equal(a, c)) for a, c in zip(out["triton"][1], out["eager"][1]))
        frac = min((a == c).float().mean().item() for a, c in zip(out["triton"][1], out["eager"][1]))
        print(f"step_check {kv}: logits max |triton - eager| {diff:.2e}; cache tensors bit-equal "
              f"{same}/{len(out['triton'][1])} (worst {frac:.6f} of elements)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1536, help="rows per model")
    p.add_argument("--members", type=int, default=2, help="stacked models (expert + amateur)")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--prompt", type=int, default=20)
    p.add_argument("--new", type=int, default=400)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--configs", default="",
                   help="';'-separated BLOCK_N,WARPS,STAGES[,PRODUCTS] (default: GRID)")
    p.add_argument("--quick", action="store_true",
                   help="on the CPU through Triton's interpreter, a tiny shape (seconds): the code path")
    args = p.parse_args()
    if args.quick:
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is first imported
        args.batch, args.heads, args.kv_heads, args.head_dim = 2, 2, 2, 16
        args.prompt, args.new, args.iters = 4, 60, 1
        args.configs = args.configs or ";".join(QUICK_GRID)

    import torch

    from cdray.decode.attention import KernelConfig, decode_attention, dequantize, quantize

    if args.quick:
        dev = torch.device("cpu")
        print(f"CPU through Triton's interpreter (--quick: timings mean nothing), torch {torch.__version__}")
    else:
        dev = torch.device("cuda")
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    N, nh, nkv, hd = args.members * args.batch, args.heads, args.kv_heads, args.head_dim
    T = -(-(args.prompt + args.new) // 64) * 64
    g = torch.Generator(device=dev).manual_seed(0)
    lengths = torch.randint(args.prompt, args.prompt + args.new + 1, (N,), generator=g, device=dev,
                            dtype=torch.int32)
    q = torch.randn(N, nh, hd, generator=g, device=dev, dtype=torch.bfloat16)
    k = torch.randn(N, nkv, T, hd, generator=g, device=dev, dtype=torch.bfloat16)
    v = torch.randn(N, nkv, T, hd, generator=g, device=dev, dtype=torch.bfloat16)
    kq, ks = quantize(k)
    vq, vs = quantize(v)
    keys = int(lengths.sum()) * nkv
    need = {"bf16": 2 * keys * hd * 2, "fp8": 2 * keys * (hd + 2)}
    big = torch.empty(2**24 if args.quick else 2**30, dtype=torch.uint8, device=dev)
    copy_s = timed(big.clone, args.iters, not args.quick)
    copy_bw = 2 * big.numel() / copy_s
    print(f"rows {N} x {nkv} kv heads x {hd}, mean keys {lengths.float().mean():.0f} of {T}; "
          f"copy {copy_bw / 1e9:.0f} GB/s (read + write)")
    del big

    def report(name: str, cache: str, secs: float) -> float:
        bw = need[cache] / secs
        print(f"{name:30s} {cache:4s} {secs * 1e6:8.1f} us  {bw / 1e9:6.0f} GB/s  "
              f"vs_copy={bw / copy_bw:.2f}", flush=True)
        return secs

    ref = decode_attention(q, k, v, lengths)
    out8 = decode_attention(q, kq, vq, lengths, ks, vs)
    print(f"fp8 vs bf16 cache, max |out diff| {(out8.float() - ref.float()).abs().max():.4f} "
          f"(unit-normal keys and values)")
    # both kernels against float64 attention over the values they read (the first 64 rows)
    checked = min(64, N)
    for name, out, keys, values in (("bf16", ref, k, v),
                                    ("fp8", out8, dequantize(kq[:64], ks[:64], torch.float64),
                                     dequantize(vq[:64], vs[:64], torch.float64))):
        err = 0.0
        for i in range(checked):
            L = int(lengths[i])
            kk = keys[i, :, :L].double().repeat_interleave(nh // nkv, 0)
            w = torch.softmax((q[i].double()[:, None] * kk).sum(-1) / hd ** 0.5, -1)
            want = (w[..., None] * values[i, :, :L].double().repeat_interleave(nh // nkv, 0)).sum(1)
            err = max(err, ((out[i].double() - want).norm() / want.norm()).item())
        print(f"{name} cache: kernel vs float64 attention, worst relative error {err:.1e}")
    if nh == nkv:  # the one-row softmax must keep the padded softmax's bits on this GPU too
        padded = KernelConfig(products="padded")
        same = [torch.equal(decode_attention(q, k, v, lengths, config=padded), ref),
                torch.equal(decode_attention(q, kq, vq, lengths, ks, vs, config=padded), out8)]
        print(f"one_row_bits_equal={all(same)} (bf16 {same[0]}, fp8 {same[1]})")
    configs = [KernelConfig.parse(c) for c in (args.configs.split(";") if args.configs else GRID)]
    best = {}
    for cfg in configs:
        shape = cfg.label()
        for cache, a in (("bf16", (k, v, lengths)), ("fp8", (kq, vq, lengths, ks, vs))):
            try:
                secs = report(f"triton {shape}", cache,
                              timed(lambda: decode_attention(q, *a, config=cfg), args.iters, not args.quick))
            except Exception as exc:  # a launch shape this GPU cannot run (shared memory)
                print(f"triton {shape} {cache}: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            if secs < best.get(cache, (float("inf"),))[0]:
                best[cache] = (secs, shape)
    try:
        if args.quick:
            raise NotImplementedError("left out by --quick (a compiled GPU kernel)")
        from cdray.decode.fast_step import FLEX_KV_BLOCK, block_mask, step_kernels

        kv_blocks = ((lengths - 1) // FLEX_KV_BLOCK + 1)[:, None, None].contiguous()
        kv_indices = torch.arange(T // FLEX_KV_BLOCK, dtype=torch.int32, device=dev)
        kv_indices = kv_indices.expand(N, 1, 1, -1).contiguous()
        mask = block_mask(kv_blocks, kv_indices, (lengths - 1).long(), T, FLEX_KV_BLOCK)
        flex = step_kernels(False)["flex"]
        q4 = q.reshape(N, nh, 1, hd)
        report("flex (64-key blocks)", "bf16",
               timed(lambda: flex(q4, k, v, block_mask=mask, enable_gqa=nh != nkv,
                                  kernel_options={"SPLIT_KV": 1}), args.iters, not args.quick))
    except NotImplementedError as exc:
        print(f"flex: {exc}")
    except Exception as exc:
        print(f"flex: {type(exc).__name__}: {str(exc)[:200]}")
    check_step(dev, 4 if args.quick else 48)
    for cache, (secs, shape) in best.items():
        print(f"best {cache}: {shape} ({secs * 1e6:.1f} us)")
    print(f"best_config={best.get('fp8', (0, KernelConfig().label()))[1]}")


if __name__ == "__main__":
    main()
