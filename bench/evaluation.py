"""BabyLM evaluation speed: the full sample set (~18k items) with a ~1M-parameter model on 2 CPU cores.

Run: PYTHONPATH=. .venv/bin/python bench/evaluation.py [--max-items N] [--serial] [--compare-stock]
     PYTHONPATH=. .venv/bin/python bench/evaluation.py --per-checkpoint 4 [--max-items 100]
     PYTHONPATH=. .venv/bin/python bench/evaluation.py --quick   (~1 minute: 2 items a file, a
     1 x 32 model with a 500-token vocabulary; the fan-out and its RESULT line, not a speed)
It scores every task of data/eval/babylm2025 (the sample the repository ships) through cdray's babylm stage, one Ray task
per task on a local 2-CPU Ray cluster (1 torch thread each, as a sweep does), and prints the
wall time, items, requests and throughput. With --serial it also scores everything in this one
process and prints the speed-up of the fan-out over it. With --compare-stock it first runs the same
fan-out as cdray ran it before (lm-eval's stock HFLM, Jinja templates compiled per document) and
prints each task's CPU seconds against the current code (PrefixSharingHFLM, templates compiled
once). With --per-checkpoint N it instead scores every task of N checkpoints both ways a sweep
could: one Ray task per (checkpoint, task), each loading the checkpoint and starting lm-eval, and
one Ray task per checkpoint scoring all its tasks with one load (what a sweep does), and prints
both wall and CPU times and their ratio. The model is freshly initialised (scoring cost does not
depend on the weights).
     PYTHONPATH=. .venv/bin/python bench/evaluation.py --checkpoint-cost [--max-items N]
measures, in this one process and thread (as a checkpoint's BabyLM task runs), what `cdray plan`
charges a checkpoint beside the model's forward passes (cdray/sweep/eval_cost.py): loading a
GOOD-shaped (162M) checkpoint, lm-eval's start-up per item file (every file at one item), and the
CPU work per request outside the model's forward passes and the scoring math (what a GPU does).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from common import start_ray  # noqa: E402  (first: keeps the local Ray cluster on loopback)
DATA = ROOT / "data" / "eval" / "babylm2025"


def make_checkpoint(tmp: Path, layers: int, hidden: int, vocab: int) -> tuple[Path, Path, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import synthetic_document

    from cdray.config import MODEL_PRESETS, ModelConfig, TokenizerConfig
    from cdray.data.tokenizer import train_tokenizer
    from cdray.models.llama import build_model, llama_config, param_counts, save_model

    rng = random.Random(0)
    pq.write_table(pa.table({"text": [synthetic_document(rng, 30) for _ in range(400)]}), tmp / "train.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=vocab), tmp / "train.parquet", tmp / "tokenizer")
    shape = ModelConfig(**{**MODEL_PRESETS["tiny"], "layers": layers, "hidden": hidden, "ffn": 4 * hidden})
    save_model(build_model(shape, vocab, 0), tmp / "model")
    return tmp / "model", tmp / "tokenizer", param_counts(llama_config(shape, vocab))["total"]


def stock_lm(model_dir: str, tok_dir: str, batch: int):
    """lm-eval's own HFLM over the same checkpoint (what cdray used before PrefixSharingHFLM)."""
    from lm_eval.models.huggingface import HFLM

    from cdray.eval.tasks import eval_tokenizer
    from cdray.models.llama import load_model

    model = load_model(Path(model_dir)).eval()
    return HFLM(pretrained=model, tokenizer=eval_tokenizer(tok_dir), batch_size=batch, add_bos_token=True,
                max_length=model.config.max_position_embeddings)


def score_task(model_dir: str, tok_dir: str, task: str, out: str, max_items, batch: int,
               stock: bool = False) -> dict:
    import torch

    from cdray.eval import tasks as lmeval_tasks

    torch.set_num_threads(1)
    started, cpu = time.time(), time.process_time()
    lm, cached = None, lmeval_tasks.compiled_templates_cached
    if stock:
        lm = stock_lm(model_dir, tok_dir, batch)
        # and lm-eval's own per-document template compilation
        lmeval_tasks.compiled_templates_cached = contextlib.nullcontext
    try:
        s = lmeval_tasks.evaluate_task(model_dir, tok_dir, DATA, task, Path(out), max_items=max_items,
                                       batch_size=batch, lm=lm)
    finally:
        lmeval_tasks.compiled_templates_cached = cached
    return {"task": task, "items": sum(s["items"].values()), "seconds": time.time() - started,
            "cpu": time.process_time() - cpu, "scores": s["scores"]}


def score_checkpoint(model_dir: str, tok_dir: str, tasks: list[str], out: str, max_items, batch: int) -> dict:
    """Every task of one checkpoint in this process with one loaded model (build_babylm_group's way)."""
    import torch

    from cdray.eval import tasks as lmeval_tasks

    torch.set_num_threads(1)
    started, cpu = time.time(), time.process_time()
    lm = lmeval_tasks.hf_lm(model_dir, tok_dir, batch)
    items = 0
    for task in tasks:
        s = lmeval_tasks.evaluate_task(model_dir, tok_dir, DATA, task, Path(out) / task, max_items=max_items,
                                       batch_size=batch, lm=lm)
        items += sum(s["items"].values())
    return {"items": items, "seconds": time.time() - started, "cpu": time.process_time() - cpu}


def per_checkpoint(args, tmp: Path, tasks: list[str]) -> None:
    """N checkpoints, all tasks: a Ray task per (checkpoint, task) against a Ray task per checkpoint."""
    import ray

    from cdray.config import MODEL_PRESETS, ModelConfig
    from cdray.models.llama import build_model, save_model

    model, tok, _ = make_checkpoint(tmp, args.layers, args.hidden, args.vocab)
    shape = ModelConfig(**{**MODEL_PRESETS["tiny"], "layers": args.layers, "hidden": args.hidden,
                           "ffn": 4 * args.hidden})
    models = []
    for i in range(args.per_checkpoint):
        save_model(build_model(shape, args.vocab, i), tmp / f"model{i}")
        models.append(str(tmp / f"model{i}"))
    start_ray(2)
    one_task = ray.remote(num_cpus=1)(score_task)
    one_ckpt = ray.remote(num_cpus=1)(score_checkpoint)
    ray.get([one_task.remote(models[0], str(tok), "wug", str(tmp / f"warm{i}"), 5, args.batch) for i in range(2)])
    started = time.time()
    pairs = ray.get([one_task.remote(m, str(tok), t, str(tmp / f"pair{i}_{t}"), args.max_items, args.batch)
                     for i, m in enumerate(models) for t in tasks])
    pair_wall, pair_cpu = time.time() - started, sum(r["cpu"] for r in pairs)
    started = time.time()
    grouped = ray.get([one_ckpt.remote(m, str(tok), tasks, str(tmp / f"ckpt{i}"), args.max_items, args.batch)
                       for i, m in enumerate(models)])
    group_wall, group_cpu = time.time() - started, sum(r["cpu"] for r in grouped)
    ray.shutdown()
    items = sum(r["items"] for r in grouped)
    print(f"{len(models)} checkpoints x {len(tasks)} tasks, {items} items (max_items={args.max_items}):")
    print(f"  a Ray task per (checkpoint, task): {pair_wall:6.1f} s wall, {pair_cpu:6.1f} CPU s")
    print(f"  a Ray task per checkpoint:         {group_wall:6.1f} s wall, {group_cpu:6.1f} CPU s")
    print(f"RESULT per_checkpoint_cpu_ratio={pair_cpu / group_cpu:.2f} wall_ratio={pair_wall / group_wall:.2f}")


def checkpoint_cost(args, tmp: Path, tasks: list[str]) -> None:
    """The per-checkpoint constants of cdray/sweep/eval_cost.py, measured on this CPU."""
    import torch

    from cdray.config import MODEL_PRESETS, ModelConfig
    from cdray.eval.prefix_lm import PrefixSharingHFLM
    from cdray.eval.tasks import evaluate_task, hf_lm
    from cdray.models.llama import build_model, save_model
    from cdray.sweep import eval_cost

    torch.set_num_threads(1)
    model, tok, params = make_checkpoint(tmp, args.layers, args.hidden, args.vocab)
    save_model(build_model(ModelConfig(**MODEL_PRESETS["good"]), 32000, 0), tmp / "good")
    hf_lm(model, tok, args.batch)  # imports (a sweep's worker has them loaded once)
    loads = []
    for _ in range(2):
        t = time.perf_counter()
        good = hf_lm(tmp / "good", tok, args.batch)
        # safetensors maps the file lazily: copy every weight once, as moving it to a GPU would
        [p.detach().clone() for p in good.model.parameters()]
        loads.append(time.perf_counter() - t)
        del good
    lm = hf_lm(model, tok, args.batch)
    device_s = [0.0]  # thread CPU seconds in the model and the scoring math: a GPU's work

    def timed(fn):
        def wrapper(self, *a, **k):
            t = time.thread_time()
            try:
                return fn(self, *a, **k)
            finally:
                device_s[0] += time.thread_time() - t
        return wrapper

    PrefixSharingHFLM._forward = timed(PrefixSharingHFLM._forward)
    PrefixSharingHFLM._score_positions = timed(PrefixSharingHFLM._score_positions)

    def run(max_items, name):
        device_s[0] = 0.0
        t = time.thread_time()
        for task in tasks:
            evaluate_task(None, None, DATA, task, tmp / name / task, max_items=max_items, batch_size=args.batch,
                          lm=lm)
        return time.thread_time() - t, device_s[0]

    run(1, "warm")
    start_cpu, start_dev = run(1, "start")
    size = eval_cost.suite(DATA, tasks, args.max_items)
    start_s = (start_cpu - start_dev) / size.files
    cpu, dev = run(args.max_items, "all")
    host = (cpu - dev - start_s * size.files) / size.requests
    print(f"model {params / 1e6:.2f}M parameters; GOOD (162M) checkpoint load: "
          f"{', '.join(f'{x:.2f}' for x in loads)} s")
    print(f"lm-eval start-up: {start_cpu - start_dev:.1f} CPU s for {size.files} files at one item = "
          f"{start_s:.3f} s a file")
    print(f"suite ({size.items} items, {size.requests} requests, ~{size.tokens / 1e6:.2f}M tokens): {cpu:.1f} CPU s, "
          f"{dev:.1f} of them in the model and scoring math -> {host * 1e3:.2f} ms of CPU work a request")
    print(f"RESULT load_s={min(loads):.2f} start_s_per_file={start_s:.3f} host_s_per_request={host:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint-cost", action="store_true",
                    help="measure the per-checkpoint constants of cdray/sweep/eval_cost.py")
    ap.add_argument("--per-checkpoint", type=int, default=0, metavar="N",
                    help="compare a Ray task per (checkpoint, task) with one per checkpoint, N checkpoints")
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--serial", action="store_true")
    # also run the fan-out as before (stock HFLM, per-document templates) first: CPU s side by side
    ap.add_argument("--compare-stock", action="store_true")
    # default: 2 x 128 with a 2,000-token vocabulary = 1.04M parameters in all
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--quick", action="store_true",
                    help="= --max-items 2 --layers 1 --hidden 32 --vocab 500 (the code path in about a minute)")
    args = ap.parse_args()
    if args.quick:
        args.max_items, args.layers, args.hidden, args.vocab = 2, 1, 32, 500
    if not DATA.is_dir():
        sys.exit(f"no BabyLM data at {DATA}")
    import ray

    from cdray.config import BABYLM_TASKS

    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
    order = [t for t in ["blimp", "entity_tracking", "reading", "ewok", "supplement", "wug"] if t in BABYLM_TASKS]
    if args.checkpoint_cost:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint_cost(args, Path(tmp), order)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
    if args.per_checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            per_checkpoint(args, Path(tmp), [t for t in ["blimp", "entity_tracking", "reading", "ewok",
                                                          "supplement", "wug"] if t in BABYLM_TASKS])
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, tok, params = make_checkpoint(tmp, args.layers, args.hidden, args.vocab)
        print(f"model: {params / 1e6:.2f}M parameters ({args.layers} x {args.hidden}, vocab {args.vocab})")
        start_ray(2)  # cdray's local cluster: loopback, this checkout on the workers' path
        remote = ray.remote(num_cpus=1)(score_task)
        # warm both workers (imports of torch / lm-eval / datasets), as a sweep's workers are
        ray.get([remote.remote(str(model), str(tok), "wug", str(tmp / f"warm{i}"), 5, args.batch) for i in range(2)])
        # longest first, so the two workers finish together
        order = ["blimp", "entity_tracking", "reading", "ewok", "supplement", "wug"]
        order = [t for t in order if t in BABYLM_TASKS]
        stock = {}
        if args.compare_stock:
            print(f"before: stock HFLM, templates compiled per document (load {os.getloadavg()[0]:.1f}):")
            stock = {r["task"]: r for r in ray.get([
                remote.remote(str(model), str(tok), t, str(tmp / f"stock_{t}"), args.max_items, args.batch, True)
                for t in order])}
            for r in stock.values():
                print(f"  {r['task']:<16} {r['items']:>6} items  {r['seconds']:7.1f} s wall  {r['cpu']:7.1f} s CPU")
            print(f"  all: {sum(r['cpu'] for r in stock.values()):.1f} CPU s")
        print(f"now: PrefixSharingHFLM, templates compiled once (load {os.getloadavg()[0]:.1f}):")
        started = time.time()
        rows = ray.get([remote.remote(str(model), str(tok), t, str(tmp / f"ray_{t}"), args.max_items, args.batch)
                        for t in order])
        fan_out = time.time() - started
        ray.shutdown()
        items = sum(r["items"] for r in rows)
        for r in rows:
            line = f"  {r['task']:<16} {r['items']:>6} items  {r['seconds']:7.1f} s wall  {r['cpu']:7.1f} s CPU"
            if r["task"] in stock:
                s = stock[r["task"]]
                # a NaN (a regression over too few rows) matches a NaN
                same = all(math.isclose(s["scores"][k], v, abs_tol=1e-6)
                           or (math.isnan(v) and math.isnan(s["scores"][k])) for k, v in r["scores"].items())
                line += (f"  (before {s['cpu']:.1f} s: {s['cpu'] / r['cpu']:.2f}x; "
                         f"scores {'equal' if same else 'DIFFER'})")
            print(line)
        cpu = sum(r["cpu"] for r in rows)
        # on a shared machine wall time measures the neighbours too; CPU seconds / 2 cores is what
        # the same work costs on 2 idle cores (a lower bound on wall time: the two workers' loads differ)
        bound = max(cpu / 2, max(r["cpu"] for r in rows))
        print(f"fan-out (2 Ray tasks at a time, 1 thread each): {items} items in {fan_out:.1f} s wall "
              f"= {items / fan_out:.0f} items/s; {cpu:.1f} CPU s -> {bound:.1f} s on 2 idle cores")
        if args.serial:
            started = time.time()
            for t in order:
                score_task(str(model), str(tok), t, str(tmp / f"serial_{t}"), args.max_items, args.batch)
            serial = time.time() - started
            print(f"serial (one process, 1 thread): {serial:.1f} s; fan-out speed-up {serial / fan_out:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"RESULT items={items} wall_s={fan_out:.1f} cpu_s={cpu:.1f} idle_2core_s={bound:.1f} limit=180")


if __name__ == "__main__":
    main()
