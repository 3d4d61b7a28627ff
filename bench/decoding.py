"""Decoding throughput: HF single-model sampling vs cdray's CD engine vs a paper-style CD loop.

Run: PYTHONPATH=. .venv/bin/python bench/decoding.py   (a few minutes on 2 CPU cores)
     PYTHONPATH=. .venv/bin/python bench/decoding.py --quick   (seconds: a 2x64 pair, batch 8, 8 new
     tokens, one repeat; every contender and the ratio line, numbers meaningless)
GPU: python3 bench/decoding.py --device cuda --preset good --dtype bf16 --new 400 --sweep-batches 512,1024
     (the paper's GOOD shape, 162M, with a same-shaped EARLY-k amateur; --sweep-batches then times
     cdray's engine alone at larger batches and prints the best tokens/s as `cd_best_tok_s=`)
Same prompts, models and batch for every contender; each is timed `--repeats` times, interleaved,
and its best run counts (the CPU is shared). Last line: cd_vs_single=X cd_vs_naive=Y
(ratios of new tokens/s: cdray CD / HF generate of the expert alone, cdray CD / paper-style loop).
"""
from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]


PRESETS = {"good": dict(layers=12, hidden=768, heads=12, vocab=32000),  # the paper's GOOD (162M)
           # --quick: the code paths in seconds on a CPU
           "quick": dict(layers=2, hidden=64, heads=2, vocab=500, batch=8, new=8, prompt=8, repeats=1)}


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def make_models(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.heads, max_position_embeddings=1024,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    models = []
    for seed in (0, 1):  # expert and a same-architecture amateur (an EARLY-k checkpoint's shape)
        torch.manual_seed(seed)
        m = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():
            m.lm_head.weight.mul_(8.0)  # trained-like peaked distributions, so V_head is small
        models.append(m.to(args.device))
    return models


def hf_generate(expert, prompts, n_new, dtype):
    """(a) the expert alone: HF generate, ancestral sampling, KV cache, fixed length."""
    import torch

    with torch.inference_mode(), torch.autocast(prompts.device.type, dtype=dtype,
                                                enabled=dtype != torch.float32):
        out = expert.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                              do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                              max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=3)
    assert out.shape[1] == prompts.shape[1] + n_new


def paper_loop(expert, amateur, prompts, n_new, alpha=0.1, penalty=-20.0):
    """(c) the paper's way: two separate dynamic caches, fp32, one token per step, no EOS."""
    import torch
    from transformers import DynamicCache

    caches = [DynamicCache(config=expert.config), DynamicCache(config=amateur.config)]
    # transformers 5 renamed the forward's `past_key_values` to `cache` (5.24 has `cache`)
    key = "cache" if "cache" in inspect.signature(expert.forward).parameters else "past_key_values"
    ids, out = prompts, []
    with torch.inference_mode():
        for _ in range(n_new):
            zg = expert(input_ids=ids, use_cache=True, **{key: caches[0]}).logits[:, -1].float()
            zb = amateur(input_ids=ids, use_cache=True, **{key: caches[1]}).logits[:, -1].float()
            lpg, lpb = zg.log_softmax(-1), zb.log_softmax(-1)
            head = lpg.exp() > alpha * lpg.exp().max(-1, keepdim=True).values
            scores = torch.where(head, lpg - lpb, torch.full_like(lpg, penalty))
            tok = torch.multinomial(scores.softmax(-1), 1)
            out.append(tok)
            ids = tok
    assert len(out) == n_new
    # the caches really grew: a silently ignored cache argument would make this loop look fast
    assert caches[0].get_seq_length() == prompts.shape[1] + n_new - 1, caches[0].get_seq_length()


def cdray_cd(decoder, prompts, n_new, batch):
    """(b) cdray's engine: stacked models (same shape), per-slot static cache, inverse-CDF sampler."""
    rows = decoder.generate(prompts, list(range(len(prompts))), max_new_tokens=n_new,
                            stop_at_eos=False, batch_size=batch, max_len=len(prompts[0]) + n_new)
    assert all(len(r.tokens) == n_new for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new", type=int, default=64, help="new tokens per row")
    p.add_argument("--prompt", type=int, default=20)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", action="store_true", help="also time separate/bf16 engine variants")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="cdray's engine and HF generate (the paper-style loop is always fp32)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model shape preset")
    p.add_argument("--quick", action="store_const", dest="preset", const="quick",
                   help="= --preset quick: a 2x64 pair, batch 8, 8 new tokens, one repeat (seconds)")
    p.add_argument("--sweep-batches", default="", help="comma list: also time cdray alone at these batches")
    p.add_argument("--skip-baselines", action="store_true",
                   help="time cdray's engine only (no ratio line); with --sweep-batches")
    p.add_argument("--attention", default="auto",
                   help="comma list of cdray.decode.stacked.ATTENTION kinds; the batch sweep times each, "
                        "the ratio line uses the first. Fast-step options after colons, e.g. "
                        "triton:fp8:compiled, triton:cfg=64.4.2, flex:nographs, flex:kv128 "
                        "(see set_attention)")
    p.add_argument("--count-syncs", action="store_true",
                   help="after each --sweep-batches batch, one more run counting the host's waits "
                        "on the GPU (torch.cuda.set_sync_debug_mode)")
    p.add_argument("--profile-attention", default="auto", help="attention kind of --profile")
    p.add_argument("--profile", type=int, default=0, metavar="BATCH",
                   help="print a torch.profiler kernel table of cdray at this batch (32 new tokens, "
                        "or --new if fewer)")
    args = p.parse_args()
    if args.preset:
        for key, value in PRESETS[args.preset].items():
            if getattr(args, key) == p.get_default(key):  # flags given beside a preset win
                setattr(args, key, value)

    import torch

    from cdray.config import DecodingConfig
    from cdray.decode.engine import Decoder
    from cdray.models.llama import param_counts

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    expert, amateur = make_models(args)
    counts = param_counts(expert.config)
    print(f"expert/amateur: {counts['total'] / 1e6:.1f}M params each ({counts['non_embedding'] / 1e6:.1f}M "
          f"non-embedding), vocab {args.vocab}; batch {args.batch}, prompt {args.prompt}, "
          f"{args.new} new tokens, {args.threads} threads, device {args.device}, {args.dtype}")
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, args.vocab, (args.batch, args.prompt), generator=g)
    prompts[:, 0] = 1
    prompt_lists = prompts.tolist()
    prompts = prompts.to(args.device)
    d = DecodingConfig()
    decoders = {"cdray": Decoder(expert, amateur, "contrastive", d, device=args.device, dtype=dtype)}
    if args.variants:
        decoders["cdray[separate]"] = Decoder(expert, amateur, "contrastive", d, engine="separate",
                                              device=args.device, dtype=dtype)
        decoders["cdray[bf16]"] = Decoder(expert, amateur, "contrastive", d, dtype=torch.bfloat16,
                                          device=args.device)
    def contenders_for(n_new):
        out = {
            "single(HF generate)": lambda: hf_generate(expert, prompts, n_new, dtype),
            "naive(paper loop)": lambda: paper_loop(expert, amateur, prompts, n_new),
        }
        for name, dec in decoders.items():
            out[name] = lambda dec=dec: cdray_cd(dec, prompt_lists, n_new, args.batch)
        return out

    sweep = [int(b) for b in args.sweep_batches.split(",") if b]
    kinds = args.attention.split(",")
    if args.skip_baselines:
        if sweep:
            for kind in kinds:
                set_attention(decoders["cdray"], kind)
                print(f"attention {kind}:")
                sweep_batches(args, decoders["cdray"], sweep)
        if args.profile:
            set_attention(decoders["cdray"], args.profile_attention)
            profile(args, decoders["cdray"], args.profile)
        return
    set_attention(decoders["cdray"], kinds[0])
    for fn in contenders_for(4).values():  # short warm-up (allocator, MKL, first-call costs)
        fn()
    cdray_cd(decoders["cdray"], prompt_lists, args.new, args.batch)  # compiles the flex step
    contenders = contenders_for(args.new)
    best = {name: float("inf") for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            sync(args.device)
            t0 = time.perf_counter()
            fn()
            sync(args.device)
            best[name] = min(best[name], time.perf_counter() - t0)
    tokens = args.batch * args.new
    rate = {name: tokens / s for name, s in best.items()}
    for name, r in rate.items():
        print(f"{name:22s} {r:9.0f} new tok/s  (best of {args.repeats}: {best[name]:.2f} s)")
    single, naive, cd = rate["single(HF generate)"], rate["naive(paper loop)"], rate["cdray"]
    print(f"naive_vs_single={naive / single:.2f}")
    if sweep:
        sweep_batches(args, decoders["cdray"], sweep)
    print(f"cd_vs_single={cd / single:.2f} cd_vs_naive={cd / naive:.2f}")


def set_attention(decoder, spec: str) -> None:
    """Point every stacked group of the decoder at one attention kind, with fast-step options after
    colons: compiled, nographs, kvN (flex blocks), fp8 (the KV cache), cfg=BLOCK_N.WARPS.STAGES
    (the triton kernel's launch shape), float32logits (the triton step's logits widened to fp32
    before the fused sampler: the step as it was, for an A/B), noahead (the engine waits for each
    step's tokens before it queues the next, as it did before, for an A/B)."""
    from cdray.decode.attention import KernelConfig

    kind, *opts = spec.split(":")
    options, fp8 = {}, False
    decoder.look_ahead = True
    for opt in opts:
        if opt == "nographs":
            options["graphs"] = False
        elif opt == "compiled":
            options["compiled"] = True
        elif opt == "fp8":
            fp8 = True
        elif opt == "float32logits":
            options["float_logits"] = True
        elif opt == "noahead":
            decoder.look_ahead = False
        elif opt.startswith("kv"):
            options["kv_block"] = int(opt[2:])
        elif opt.startswith("cfg="):
            options["kernel_config"] = KernelConfig.parse(opt[4:].replace(".", ","))
        else:
            raise SystemExit(f"--attention: unknown option {opt!r} in {spec!r}")
    if fp8 and kind == "flex":
        raise SystemExit(f"--attention {spec!r}: flex cannot read an fp8 cache")
    for group in decoder.groups:
        group.attention, group.kv_fp8 = kind, fp8
        group._fast = None
    # as the Decoder sets it: the fused sampler takes the step's logits in the model's dtype
    options.setdefault("float_logits", not decoder.fused_sampler)
    for group in decoder.groups:
        group.fast_options = options


def profile(args, decoder, batch: int) -> None:
    """Where a decode step's time goes: the top kernels (or CPU ops) of 32 new tokens (fewer
    when --new asks for fewer)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rows = torch.randint(4, args.vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(7))
    rows[:, 0] = 1
    rows = rows.tolist()
    n_new = min(32, args.new)
    cdray_cd(decoder, rows, n_new, batch)
    cuda = args.device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(args.device)
    t0 = time.perf_counter()
    with torch_profile(activities=acts) as prof:
        cdray_cd(decoder, rows, n_new, batch)
        sync(args.device)
    print(f"profile: batch {batch}, {n_new} new tokens in {time.perf_counter() - t0:.2f} s (profiler on)")
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))


def sweep_batches(args, decoder, batches: list[int]) -> None:
    """cdray's engine alone at larger batches (one warm-up, then the best of --repeats)."""
    import torch

    best_rate = 0.0
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        rows = torch.randint(4, args.vocab, (batch, args.prompt), generator=g)
        rows[:, 0] = 1
        rows = rows.tolist()
        try:
            # warm-up: the whole run (the flex step compiles per batch and cache length, and a
            # shorter run at the same cache length would prefill far wider rows)
            cdray_cd(decoder, rows, args.new, batch)
            secs = float("inf")
            for _ in range(args.repeats):
                sync(args.device)
                t0 = time.perf_counter()
                cdray_cd(decoder, rows, args.new, batch)
                sync(args.device)
                secs = min(secs, time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            print(f"cdray batch {batch:5d}: out of memory")
            break
        rate = batch * args.new / secs
        best_rate = max(best_rate, rate)
        peak = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
                if args.device.startswith("cuda") else "")
        print(f"cdray batch {batch:5d}: {rate:9.0f} new tok/s ({secs:.2f} s){peak}", flush=True)
        if args.count_syncs and args.device.startswith("cuda"):
            print(f"cdray batch {batch:5d}: {count_syncs(decoder, rows, args.new, batch)} "
                  f"synchronizing calls in a run of {args.new} steps", flush=True)
    print(f"cd_best_tok_s={best_rate:.0f}")


def count_syncs(decoder, rows, n_new, batch) -> int:
    """How often one run's host waits for the GPU (each such wait idles the GPU's queue)."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            cdray_cd(decoder, rows, n_new, batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


if __name__ == "__main__":
    main()
