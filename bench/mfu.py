"""GPU model FLOPs utilisation of cdray's training loop on the paper's GOOD model (162M, context 1024, bf16).

Run from the repo root on a GPU machine (after `make setup TORCH=...` with a CUDA torch wheel):
    .venv/bin/python bench/mfu.py                      # GOOD 12x768, vocab 32000, batch 16 x 1024, bf16
    .venv/bin/python bench/mfu.py --batch 32 --no-compile
    .venv/bin/python bench/mfu.py --smoke              # micro shape on CPU, 3 steps: the code path only
    .venv/bin/python bench/mfu.py --quick              # the same without torch.compile (~15 s; compiling
                                                       # costs a minute on a CPU with a cold cache)

It runs cdray.models.training.train (the same function Ray Train runs in each worker) on a random
pre-tokenized stream and reads the loop's own StepClock from the summary (steady-state steps only:
the first step, which carries torch.compile, is timed apart).
MFU = model FLOPs per token x tokens/s / peak bf16 dense FLOP/s of the card, with two FLOP counts:
  6N        N = matmul parameters (every weight except the input embedding, whose lookup is free)
  6N + 12LdT  + attention scores and mixing (PaLM appendix B convention, causal mask not halved)
Last line: mfu=X  (the 6N figure; the target is >= 0.40 on one H100)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# dense bf16 peak (no sparsity), from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def peak_for(name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS.items():
        parts = key.split()
        if all(p.lower() in name.lower() for p in parts):
            return tflops
    if "h100" in name.lower():  # an H100 whose form factor the name leaves out: assume SXM
        return PEAK_BF16_TFLOPS["H100 SXM"]
    return None


def flops_per_token(model_cfg, vocab: int, seq_len: int) -> tuple[float, float, int]:
    from cdray.models.llama import llama_config, param_counts

    counts = param_counts(llama_config(model_cfg, vocab))
    n_matmul = counts["non_embedding"] + vocab * model_cfg.hidden  # + lm_head, - input embedding
    dense = 6.0 * n_matmul
    attention = 12.0 * model_cfg.layers * model_cfg.hidden * seq_len
    return dense, dense + attention, counts["total"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (one GPU)")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30, help="steps (the first is timed apart)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the card's bf16 peak")
    ap.add_argument("--smoke", action="store_true", help="micro shape on CPU: exercise the code path")
    ap.add_argument("--quick", action="store_true", help="= --smoke --no-compile (seconds)")
    ap.add_argument("--profile", action="store_true",
                    help="instead: profile 3 steps of the same model/optimizer/autocast step and print "
                         "where GPU time goes (kernel table and matmul / attention / other shares)")
    args = ap.parse_args()
    if args.quick:
        args.smoke = args.no_compile = True

    import numpy as np
    import torch

    from cdray import config as C
    from cdray.models.train_data import TrainJob
    from cdray.models.training import train

    if args.smoke:
        device, model_cfg, vocab = "cpu", C.ModelConfig(**C.MODEL_PRESETS["micro"]), 256
        batch, seq, steps, peak = 2, 64, 3, args.peak_tflops or 1.0
        name = "CPU (smoke run: the MFU figure means nothing)"
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/mfu.py needs a CUDA GPU (or --smoke for a CPU code-path check)")
        device, model_cfg, vocab = "cuda", C.ModelConfig(**C.MODEL_PRESETS["good"]), 32000
        batch, seq, steps = args.batch, args.seq, args.steps
        name = torch.cuda.get_device_name(0)
        peak = args.peak_tflops or peak_for(name)
        if peak is None:
            sys.exit(f"unknown card {name!r}: pass --peak-tflops (dense bf16)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    recipe = C.TrainConfig(steps=steps, batch_size=batch, seq_len=seq, precision="bf16",
                           warmup_steps=min(150, steps), checkpoint_every=steps, eval_blocks=1,
                           compile=not args.no_compile, use_gpu=device == "cuda")
    dense, with_attn, n_total = flops_per_token(model_cfg, vocab, seq)
    if args.profile:
        profile_step(model_cfg, vocab, recipe, device)
        return
    with tempfile.TemporaryDirectory(prefix="cdray-bench-mfu-") as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        real, ev = tmp / "real.npy", tmp / "eval.npy"
        np.save(real, rng.integers(4, vocab, size=steps * batch * seq + seq).astype(np.uint16))
        np.save(ev, rng.integers(4, vocab, size=2 * seq).astype(np.uint16))
        job = TrainJob(model=model_cfg, vocab_size=vocab, recipe=recipe, seed=0, q=0.0,
                       milestones=(steps,), real_tokens=str(real), eval_tokens=str(ev))
        res = train(job, tmp / "run", device=device)
    t = res["throughput"]
    tok_s = t["tokens_per_s"]
    mfu, mfu_attn = dense * tok_s / (peak * 1e12), with_attn * tok_s / (peak * 1e12)
    print(f"device: {name}, peak {peak:.0f} bf16 TFLOP/s; model {model_cfg.layers}x{model_cfg.hidden}, "
          f"vocab {vocab}: {n_total / 1e6:.1f}M params; batch {batch} x {seq}, bf16 autocast, "
          f"compile={recipe.compile}")
    print(f"{t['timed_steps']} timed steps: {tok_s:.0f} tokens/s, first step {t['first_step_s']:.1f} s, "
          f"data wait {100 * t['data_wait_share']:.2f}% of step time")
    print(f"model TFLOP/s: {dense * tok_s / 1e12:.1f} (6N), {with_attn * tok_s / 1e12:.1f} (6N + attention)")
    print(f"MFU: {100 * mfu:.1f}% (6N), {100 * mfu_attn:.1f}% (6N + attention); target >= 40%")
    print(f"mfu={mfu:.3f}")


def profile_step(model_cfg, vocab: int, recipe, device: str) -> None:
    """The training step of cdray.models.training.train (model, AdamW, autocast, compile) under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cdray.models.llama import build_model
    from cdray.models.training import autocast, make_optimizer

    model = build_model(model_cfg, vocab, 0).to(device).train()
    opt, sched = make_optimizer(model, recipe)
    net = torch.compile(model) if recipe.compile else model
    x = torch.randint(4, vocab, (recipe.batch_size, recipe.seq_len), device=device)

    def step():
        with autocast(device, recipe.precision):
            loss = net(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(4):
        step()
    cuda = device == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            step()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    print(events.table(sort_by=key, row_limit=20, max_name_column_width=70))
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        total = sum(e.self_device_time_total for e in kernels) or 1.0
        shares = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
        for e in kernels:
            name = e.key.lower()
            kind = ("attention" if any(k in name for k in ("flash", "fmha", "attention", "sdpa"))
                    else "matmul" if any(k in name for k in ("gemm", "nvjet", "cutlass", "sm90_xmma"))
                    else "other")
            shares[kind] += e.self_device_time_total
        print("GPU time per step: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in shares.items())
              + f" of {total / 3 / 1000:.1f} ms")


if __name__ == "__main__":
    main()
