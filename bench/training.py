"""Training throughput: cdray's train stage on Ray Train vs a plain PyTorch loop, bf16/compile, data wait.

Run from the repo root (after `make setup`):
    .venv/bin/python bench/training.py                  # about 10-15 minutes on 2 shared CPU cores
    .venv/bin/python bench/training.py --skip-variants  # sections 1, 3, 4 (~4 minutes)
    .venv/bin/python bench/training.py --quick          # every code path but compile, ~1 minute

--quick (tests/test_bench.py runs it) runs sections 1, 2 and 4 on the micro model (2x64, vocab 512,
batch 4 x 64, 6 steps; section 2 without torch.compile) and leaves out section 3 (compile): its
ratio line is a smoke figure, not a measurement.

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
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import load_line, start_ray  # noqa: E402

from cdray import config as C  # noqa: E402
from cdray.dag.graph import Node  # noqa: E402
from cdray.dag.store import Store  # noqa: E402
from cdray.models.llama import build_model, llama_config, param_counts  # noqa: E402
from cdray.models.step_clock import StepClock  # noqa: E402
from cdray.models.train_data import TrainJob  # noqa: E402
from cdray.models.training import train  # noqa: E402

MODEL_10M = C.ModelConfig(layers=6, hidden=256, heads=4, ffn=1024, context=256)
VOCAB_10M = 8192
TINY = C.ModelConfig(**C.MODEL_PRESETS["tiny"])  # the demo's shape, vocab 2000
VOCAB_TINY = 2000
QUICK = C.ModelConfig(**C.MODEL_PRESETS["micro"])  # --quick: the code paths, not a measurement
VOCAB_QUICK = 512


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


def plain_loop(job: TrainJob, threads: int, stop_file: str | None = None, max_steps: int | None = None,
               result_file: str | None = None, niceness: int = 0) -> dict:
    """The textbook loop: memmapped blocks, AdamW, warmup-cosine, no cdray code in the step.

    Runs job.recipe.steps steps, or, given stop_file, until that file appears (at least 3 steps,
    so that two are timed, at most max_steps).
    """
    r = job.recipe
    os.nice(max(0, niceness - os.nice(0)))
    torch.set_num_threads(threads)
    tokens = np.load(job.real_tokens, mmap_mode="r")
    order = np.random.default_rng(job.seed).permutation(len(tokens) // r.seq_len)
    torch.manual_seed(job.seed)
    model = build_model(job.model, job.vocab_size, job.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, betas=(r.beta1, r.beta2),
                            weight_decay=r.weight_decay)
    warm, total = r.warmup_steps, max_steps or r.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, warm) if s < warm else 0.5 * (1 + np.cos(np.pi * min(1, (s - warm) / max(1, total - warm)))))
    net = torch.compile(model) if r.compile else model
    clock = StepClock(r.batch_size * r.seq_len)  # the same definition of a step's time as cdray's
    ends = []
    for step in range(total):
        if stop_file and step >= 3 and os.path.exists(stop_file):
            break
        clock.start()
        ids = order[(np.arange(step * r.batch_size, (step + 1) * r.batch_size)) % len(order)]
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
        ends.append(time.time())
    out = dict(clock.summary(), ends=ends)
    if result_file:
        Path(result_file).write_text(json.dumps(out))
    return out


# ---------------------------------------------------------------- (b) cdray's stage on Ray Train


def commit_tokens(store: Store, name: str, path: str) -> Node:
    """A tokens artifact holding the stream at `path`, committed in the store as the tokens stage
    commits one (its manifest last): the train stage builds only over committed inputs."""
    node = Node("tokens", {"split": name, "file": path}, (), f"tokens[{name}]")

    def link(out: Path) -> dict:
        (out / "tokens.npy").unlink(missing_ok=True)  # of an interrupted earlier commit
        os.link(path, out / "tokens.npy")
        return {"tokens": int(np.load(path, mmap_mode="r").shape[0])}

    store.get_or_build(node.stage, node.key, link, config=node.config, inputs={})
    return node


def train_node(job: TrainJob, store: Store) -> Node:
    """A train node over token files committed in the store, as the sweep would build it."""
    inputs = [(name, commit_tokens(store, name, path))
              for name, path in (("real", job.real_tokens), ("eval", job.eval_tokens))]
    config = {"model": dataclasses.asdict(job.model), "vocab_size": job.vocab_size,
              "recipe": dataclasses.asdict(job.recipe), "seed": job.seed, "q": job.q,
              "milestones": list(job.milestones)}
    return Node("train", config, tuple(inputs), "train bench")


def ray_train_stage(job: TrainJob, store: Store, node: Node) -> tuple[dict, float]:
    """Build one train node exactly as a sweep does (ray_exec.build_node -> TorchTrainer.fit)."""
    from cdray.shell.ray_exec import build_node

    cfg = dataclasses.replace(C.SweepConfig(), train=job.recipe)
    t0 = time.perf_counter()
    manifest = build_node(node, cfg, store)
    return manifest["stats"]["throughput"], time.perf_counter() - t0


def ray_worker_niceness() -> int:
    """The niceness Ray gives its worker processes (15 unless RAY_worker_niceness says otherwise)."""
    import ray

    return ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote())


def side_by_side(job: TrainJob, threads: int, tmp: Path) -> dict:
    """cdray's stage on Ray Train and the plain loop stepping at the same time, on the same host.

    The plain loop (its own process) starts once the Ray worker has finished its first step and
    stops when the Ray run's last step is done; each side's tokens/s is taken over the window where
    both were stepping, so load from anything else on the machine hits both sides alike. The plain
    process takes the niceness Ray gives its workers (15 by default): at different priorities the
    scheduler, not the code, would decide the ratio on a loaded host.
    """
    import multiprocessing as mp
    import threading

    store = Store.at(tmp / "store")
    node = train_node(job, store)
    metrics = store.dir(node.stage, node.key) / "metrics.jsonl"
    box = {}
    t = threading.Thread(target=lambda: box.update(zip(("ray", "wall"), ray_train_stage(job, store, node))))
    t.start()
    while t.is_alive() and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    stop, res = tmp / "stop", tmp / "plain.json"
    proc = mp.get_context("spawn").Process(
        target=plain_loop, args=(job, threads, str(stop), 10 * job.recipe.steps, str(res), ray_worker_niceness()))
    proc.start()
    t.join()
    stop.touch()
    proc.join()
    if "ray" not in box:
        raise RuntimeError("the Ray Train run failed (see the log above)")
    plain = json.loads(res.read_text())
    ray_ends = [json.loads(line)["time"] for line in metrics.read_text().splitlines()]
    lo, hi = max(ray_ends[0], plain["ends"][0]), min(ray_ends[-1], plain["ends"][-1])
    tok = job.recipe.batch_size * job.recipe.seq_len

    def window_rate(ends):
        inside = [e for e in ends if lo <= e <= hi]
        return ((len(inside) - 1) * tok / (inside[-1] - inside[0]), len(inside) - 1) if len(inside) > 1 else (None, 0)

    (ray_rate, ray_n), (plain_rate, plain_n) = window_rate(ray_ends), window_rate(plain["ends"])
    return {"ray": box["ray"], "fit_wall": box["wall"], "plain": plain, "window_s": hi - lo,
            "ray_rate": ray_rate, "plain_rate": plain_rate, "ray_steps": ray_n, "plain_steps": plain_n}


def in_process(job: TrainJob, out: Path) -> dict:
    return train(job, out)["throughput"]


# ---------------------------------------------------------------- report helpers


def fmt(t: dict) -> str:
    return (f"{t['tokens_per_s']:7.0f} tok/s wall, {t['tokens_per_cpu_s']:7.0f} tok/CPU-s "
            f"(loop thread {100 * t['thread_cpu_seconds'] / t['cpu_seconds']:.0f}% of process CPU) "
            f"\n{'':26}{t['timed_steps']} timed steps, first step {t['first_step_s']:.1f} s, "
            f"data wait {100 * t['data_wait_share']:.3f}%")


def demo_steps() -> int:
    from cdray import config as C

    return C.load(ROOT / "sweeps" / "tiny.yaml").train.steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="steps per cdray run (the first is not timed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= Ray CPUs of the worker)")
    ap.add_argument("--variant-steps", type=int, default=8, help="steps per precision/compile run")
    ap.add_argument("--variant-batch", type=int, default=16, help="batch of the precision/compile runs")
    ap.add_argument("--skip-ray", action="store_true", help="skip section 1 (the Ray Train run)")
    ap.add_argument("--skip-variants", action="store_true", help="skip section 2 (precision x compile)")
    ap.add_argument("--quick", action="store_true",
                    help="the micro model, 6 steps, no torch.compile: checks the code paths (seconds)")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"{load_line()}; torch {torch.__version__}, {args.threads} torch thread(s) per process")

    if args.quick:
        model, vocab, steps, batch, seq = QUICK, VOCAB_QUICK, 6, 4, 64
        args.variant_steps, args.variant_batch = 3, batch
    else:
        model, vocab, steps, batch, seq = MODEL_10M, VOCAB_10M, args.steps, 16, 256
    recipe = C.TrainConfig(steps=steps, batch_size=batch, seq_len=seq, lr=1e-3, warmup_steps=2,
                           checkpoint_every=steps, eval_blocks=2, precision="fp32",
                           torch_threads=args.threads)
    n = param_counts(llama_config(model, vocab))
    print(f"model: {model.layers}x{model.hidden} ffn {model.ffn}, vocab {vocab}: "
          f"{n['total'] / 1e6:.1f}M params ({n['non_embedding'] / 1e6:.1f}M non-embedding); "
          f"batch {recipe.batch_size} x {recipe.seq_len}")

    data_shares = []
    with tempfile.TemporaryDirectory(prefix="cdray-bench-train-") as tmp:
        tmp = Path(tmp)
        job = make_job(tmp, model, vocab, recipe)

        ratio = sbs = None
        if not args.skip_ray:
            print(f"\n[1] cdray train stage on Ray Train (1 worker) and a plain PyTorch loop, stepping at the "
                  f"same time, fp32, {steps} Ray steps")
            start_ray()
            sbs = side_by_side(job, args.threads, tmp / "sbs")
            ray_t, plain_t = sbs["ray"], sbs["plain"]
            data_shares.append(ray_t["data_wait_share"])
            print(f"  ray train (whole run)   {fmt(ray_t)}")
            print(f"  plain loop (whole run)  {fmt(plain_t)}")
            if sbs["ray_rate"] and sbs["plain_rate"]:
                print(f"  common window {sbs['window_s']:.1f} s: ray {sbs['ray_rate']:.0f} tok/s over "
                      f"{sbs['ray_steps']} steps, plain {sbs['plain_rate']:.0f} tok/s over {sbs['plain_steps']} steps")
            else:  # --quick: the runs are too short to overlap; the whole runs' rates stand in
                sbs["ray_rate"], sbs["plain_rate"] = ray_t["tokens_per_s"], plain_t["tokens_per_s"]
                print("  no common window (the runs did not step at the same time): the ratio below "
                      "compares the whole runs")
            cpu_ratio = ray_t["tokens_per_cpu_s"] / plain_t["tokens_per_cpu_s"]
            thread_ratio = (plain_t["thread_cpu_seconds"] / plain_t["timed_steps"]) / (
                ray_t["thread_cpu_seconds"] / ray_t["timed_steps"])
            print(f"  tokens per CPU-second, ray/plain: {cpu_ratio:.3f} (whole process), "
                  f"{thread_ratio:.3f} (the loop's own thread)")
            print(f"  whole build_node call {sbs['fit_wall']:.1f} s (Ray Train controller + worker start-up, "
                  f"model build, eval, checkpoint, manifest: not in the ratio)")
            ratio = sbs["ray_rate"] / sbs["plain_rate"]

        import ray

        if ray.is_initialized():
            ray.shutdown()  # the sections below run in this process only
        if not args.skip_variants:
            print(f"\n[2] cdray's loop in-process, {n['total'] / 1e6:.1f}M model, batch {args.variant_batch} x "
                  f"{recipe.seq_len}, {args.variant_steps} steps: precision x torch.compile "
                  "(ranked by tokens per CPU-second, which other load does not distort)")
            results = {}
            for precision in ("fp32", "bf16"):
                for comp in ((False,) if args.quick else (False, True)):
                    r = dataclasses.replace(recipe, precision=precision, compile=comp, steps=args.variant_steps,
                                            checkpoint_every=args.variant_steps, batch_size=args.variant_batch)
                    t = in_process(dataclasses.replace(job, recipe=r, milestones=(r.steps,)),
                                   tmp / f"var-{precision}-{comp}")
                    results[(precision, comp)] = t
                    data_shares.append(t["data_wait_share"])
                    print(f"  {precision} compile={str(comp):5} {fmt(t)}")
            base = results[("fp32", False)]["tokens_per_cpu_s"]
            best = max(results, key=lambda k: results[k]["tokens_per_cpu_s"])
            print("  speed vs fp32 eager: " + ", ".join(
                f"{p}{'+compile' if c else ''}={v['tokens_per_cpu_s'] / base:.2f}" for (p, c), v in results.items()))
            print(f"  fastest: {best[0]}{' + compile' if best[1] else ''}")

        if not args.quick:
            print("\n[3] the tiny demo shape (4x128, vocab 2000, batch 16 x 128, fp32): does compile pay off?")
            tiny_recipe = dataclasses.replace(recipe, seq_len=128, steps=max(steps, 30),
                                              checkpoint_every=max(steps, 30))
            tiny_job = make_job(tmp / "tiny", TINY, VOCAB_TINY, tiny_recipe)  # milestones = its steps
            tt = {}
            for comp in (False, True):
                t = in_process(dataclasses.replace(tiny_job, recipe=dataclasses.replace(tiny_recipe, compile=comp)),
                               tmp / f"tiny-{comp}")
                tt[comp] = t
                data_shares.append(t["data_wait_share"])
                print(f"  compile={str(comp):5} {fmt(t)}")
            per_step = {c: t["cpu_seconds"] / t["timed_steps"] for c, t in tt.items()}
            extra = tt[True]["first_step_s"] - tt[False]["first_step_s"]
            saved = per_step[False] - per_step[True]
            if saved > 0:
                print(f"  compile costs {extra:.1f} s (wall) once and saves {1000 * saved:.1f} CPU-ms/step: "
                      f"pays off after ~{extra / saved:.0f} steps; the demo trains {demo_steps()} steps per run")
            else:
                print(f"  compile costs {extra:.1f} s once and saves nothing per step "
                      f"({1000 * per_step[False]:.1f} vs {1000 * per_step[True]:.1f} CPU-ms): never pays off")

    print(f"\n[4] data wait (block read + host-to-device) share of step time: max "
          f"{100 * max(data_shares):.3f}% over {len(data_shares)} cdray runs (target < 2%)")
    if sbs is not None:
        print(f"ray train {sbs['ray_rate']:.0f} tok/s vs plain {sbs['plain_rate']:.0f} tok/s side by side "
              f"(target ratio >= 0.95; per CPU-second {cpu_ratio:.3f})")
        print(f"ray_train_vs_plain={ratio:.3f}")


if __name__ == "__main__":
    main()
