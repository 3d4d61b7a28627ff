"""Training throughput: cdray's train stage on Ray Train vs a plain PyTorch loop, bf16/compile, data wait.

Run from the repo root (after `make setup`):
    .venv/bin/python bench/training.py              # about 10-15 minutes on 2 shared CPU cores
    .venv/bin/python bench/training.py --quick      # a smoke run (numbers are noisy)

Sections (all measured in this one run, so ratios compare like with like):
  1. ~10M-parameter Llama, batch 16 x 256, fp32: a plain single-process PyTorch loop vs cdray's train
     stage run by `ray_exec.build_node` (Ray Train TorchTrainer, one worker), interleaved
     plain / ray / ray / plain. Both sides time the same thing: wall time of every step after the
     first (data read + forward + backward + AdamW step + loss.item()); cdray's side is the loop's own
     StepClock, returned in the stage manifest (stats.throughput), so Ray start-up, model build and
     the final checkpoint are left out of the ratio on purpose (the whole fit() wall time is printed
     beside it).
  2. The same model through cdray's loop in-process: fp32 / bf16 autocast x torch.compile off / on.
  3. The tiny demo recipe (sweeps/tiny.yaml shape): does torch.compile pay for itself in 200 steps?
  4. Share of step time spent waiting for data (memmapped block read + host-to-device), all runs.
Last line: ray_train_vs_plain=X  (tokens/s of the Ray Train runs over tokens/s of the plain runs)
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
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cdray import config as C  # noqa: E402
from cdray.model import build_model, llama_config, param_counts  # noqa: E402
from cdray.pipeline import Node  # noqa: E402
from cdray.store import Store  # noqa: E402
from cdray.training import StepClock, TrainJob, train  # noqa: E402

MODEL_10M = C.ModelConfig(layers=6, hidden=256, heads=4, ffn=1024, context=256)
VOCAB_10M = 8192
TINY = C.ModelConfig(**C.MODEL_PRESETS["tiny"])  # the demo's shape, vocab 2000
VOCAB_TINY = 2000


def write_stream(path: Path, n_tokens: int, vocab: int, seed: int) -> str:
    """A pre-tokenized flat token stream, the format the tokens stage writes (uint16 .npy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(path, rng.integers(4, vocab, size=n_tokens, dtype=np.int64).astype(np.uint16))
    return str(path)


def make_job(tmp: Path, model: C.ModelConfig, vocab: int, recipe: C.TrainConfig) -> TrainJob:
    need = recipe.steps * recipe.batch_size * recipe.seq_len
    return TrainJob(model=model, vocab_size=vocab, recipe=recipe, seed=0, q=0.0,
                    milestones=(recipe.steps,),
                    real_tokens=write_stream(tmp / f"real_{vocab}.npy", need + recipe.seq_len, vocab, 1),
                    eval_tokens=write_stream(tmp / f"eval_{vocab}.npy", 4 * recipe.seq_len, vocab, 2))


# ---------------------------------------------------------------- (a) a plain PyTorch loop


def plain_loop(job: TrainJob, threads: int) -> dict:
    """The textbook loop: memmapped blocks, AdamW, warmup-cosine, no cdray code in the step."""
    r = job.recipe
    torch.set_num_threads(threads)
    tokens = np.load(job.real_tokens, mmap_mode="r")
    order = np.random.default_rng(job.seed).permutation(len(tokens) // r.seq_len)
    torch.manual_seed(job.seed)
    model = build_model(job.model, job.vocab_size, job.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, betas=(r.beta1, r.beta2),
                            weight_decay=r.weight_decay)
    warm, total = r.warmup_steps, r.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warm) if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, total - warm))))
    net = torch.compile(model) if r.compile else model
    clock = StepClock(r.batch_size * r.seq_len)  # the same definition of a step's time as cdray's
    for step in range(r.steps):
        clock.start()
        ids = order[step * r.batch_size:(step + 1) * r.batch_size]
        x = torch.from_numpy(np.stack([tokens[i * r.seq_len:(i + 1) * r.seq_len] for i in ids]).astype(np.int64))
        clock.data_ready()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r.precision == "bf16"):
            loss = net(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        clock.stop()
    return clock.summary()


# ---------------------------------------------------------------- (b) cdray's stage on Ray Train


def ray_train_stage(job: TrainJob, store_root: Path) -> tuple[dict, float]:
    """Build one train node exactly as a sweep does (ray_exec.build_node -> TorchTrainer.fit)."""
    from cdray.ray_exec import build_node

    store = Store.at(store_root)
    inputs = []
    for name, path in (("real", job.real_tokens), ("eval", job.eval_tokens)):
        node = Node("tokens", {"split": name, "file": path}, (), f"tokens[{name}]")
        d = store.dir(node.stage, node.key)
        d.mkdir(parents=True, exist_ok=True)
        os.link(path, d / "tokens.npy")  # the train stage reads its inputs from the store
        inputs.append((name, node))
    config = {"model": dataclasses.asdict(job.model), "vocab_size": job.vocab_size,
              "recipe": dataclasses.asdict(job.recipe), "seed": job.seed, "q": job.q,
              "milestones": list(job.milestones)}
    node = Node("train", config, tuple(inputs), "train bench")
    cfg = dataclasses.replace(C.SweepConfig(), train=job.recipe)
    t0 = time.perf_counter()
    manifest = build_node(node, cfg, store)
    return manifest["stats"]["throughput"], time.perf_counter() - t0


def in_process(job: TrainJob, out: Path) -> dict:
    return train(job, out)["throughput"]


# ---------------------------------------------------------------- report helpers


def fmt(t: dict) -> str:
    return (f"{t['tokens_per_s']:8.0f} tok/s  ({t['timed_steps']} timed steps, first step "
            f"{t['first_step_s']:.2f} s, data wait {100 * t['data_wait_share']:.3f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25, help="steps per run (the first is not timed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= Ray CPUs of the worker)")
    ap.add_argument("--quick", action="store_true", help="few steps, skip the compile sections")
    args = ap.parse_args()
    steps = 6 if args.quick else args.steps
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load = os.getloadavg()
    print(f"host: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(shared machine: only ratios measured in this run are meaningful); torch {torch.__version__}, "
          f"{args.threads} thread(s)")

    recipe = C.TrainConfig(steps=steps, batch_size=16, seq_len=256, lr=1e-3, warmup_steps=2,
                           checkpoint_every=steps, eval_blocks=2, precision="fp32",
                           torch_threads=args.threads)
    n = param_counts(llama_config(MODEL_10M, VOCAB_10M))
    print(f"model: {MODEL_10M.layers}x{MODEL_10M.hidden} ffn {MODEL_10M.ffn}, vocab {VOCAB_10M}: "
          f"{n['total'] / 1e6:.1f}M params ({n['non_embedding'] / 1e6:.1f}M non-embedding); "
          f"batch {recipe.batch_size} x {recipe.seq_len}, {steps} steps per run")

    from cdray.ray_exec import init_ray

    data_shares = []
    with tempfile.TemporaryDirectory(prefix="cdray-bench-train-") as tmp:
        tmp = Path(tmp)
        job = make_job(tmp, MODEL_10M, VOCAB_10M, recipe)

        print("\n[1] plain PyTorch loop vs cdray train stage on Ray Train (1 worker), fp32")
        plain, ray_runs, fit_walls = [], [], []
        plain.append(plain_loop(job, args.threads))
        print(f"  plain #1 (before Ray)  {fmt(plain[-1])}")
        init_ray(C.RayConfig(num_cpus=2))
        for i in range(2):
            t, wall = ray_train_stage(job, tmp / f"store{i}")
            ray_runs.append(t)
            fit_walls.append(wall)
            print(f"  ray #{i + 1}                {fmt(t)}; whole build_node {wall:.1f} s "
                  f"(Ray Train start-up, model build, eval, checkpoint included)")
        plain.append(plain_loop(job, args.threads))
        print(f"  plain #2 (Ray idle)    {fmt(plain[-1])}")
        data_shares += [t["data_wait_share"] for t in ray_runs]

        def rate(runs):
            return sum(r["timed_steps"] for r in runs) * recipe.batch_size * recipe.seq_len / sum(
                r["step_seconds"] for r in runs)

        ratio = rate(ray_runs) / rate(plain)
        print(f"  ray/plain per pair: " + ", ".join(f"{r['tokens_per_s'] / p['tokens_per_s']:.3f}"
                                                  for r, p in zip(ray_runs, plain)))

        if not args.quick:
            import ray

            ray.shutdown()  # the compile sections want the cores to themselves
            print("\n[2] cdray's loop in-process, ~10M model: precision x torch.compile")
            results = {}
            for precision in ("fp32", "bf16"):
                for comp in (False, True):
                    r = dataclasses.replace(recipe, precision=precision, compile=comp)
                    t = in_process(dataclasses.replace(job, recipe=r), tmp / f"var-{precision}-{comp}")
                    results[(precision, comp)] = t
                    data_shares.append(t["data_wait_share"])
                    print(f"  {precision} compile={str(comp):5} {fmt(t)}")
            base = results[("fp32", False)]["tokens_per_s"]
            best = max(results, key=lambda k: results[k]["tokens_per_s"])
            print("  speed vs fp32 eager: " + ", ".join(
                f"{p}{'+compile' if c else ''}={v['tokens_per_s'] / base:.2f}" for (p, c), v in results.items()))
            print(f"  fastest: {best[0]}{' + compile' if best[1] else ''}")

            print("\n[3] tiny demo recipe (4x128, vocab 2000, batch 16 x 128, fp32): compile break-even")
            tiny_recipe = dataclasses.replace(recipe, seq_len=128, steps=max(steps, 30),
                                              checkpoint_every=max(steps, 30))
            tiny_job = make_job(tmp / "tiny", TINY, VOCAB_TINY, tiny_recipe)
            tt = {}
            for comp in (False, True):
                t = in_process(dataclasses.replace(tiny_job, recipe=dataclasses.replace(tiny_recipe, compile=comp)),
                               tmp / f"tiny-{comp}")
                tt[comp] = t
                data_shares.append(t["data_wait_share"])
                print(f"  compile={str(comp):5} {fmt(t)}")
            per_step = {c: t["step_seconds"] / t["timed_steps"] for c, t in tt.items()}
            extra = tt[True]["first_step_s"] - tt[False]["first_step_s"]
            saved = per_step[False] - per_step[True]
            if saved > 0:
                print(f"  compile costs {extra:.1f} s once and saves {1000 * saved:.1f} ms/step: "
                      f"pays off after {extra / saved:.0f} steps (the demo trains 200 per run)")
            else:
                print(f"  compile costs {extra:.1f} s once and saves nothing per step "
                      f"({1000 * per_step[False]:.1f} vs {1000 * per_step[True]:.1f} ms): never pays off")

    print(f"\n[4] data wait share of step time: max {100 * max(data_shares):.3f}% over "
          f"{len(data_shares)} cdray runs (target < 2%)")
    print(f"plain {rate(plain):.0f} tok/s, ray train {rate(ray_runs):.0f} tok/s (target ratio >= 0.95)")
    print(f"ray_train_vs_plain={ratio:.3f}")


if __name__ == "__main__":
    main()
