"""What an fp8 KV cache (generation.kv_cache: fp8) changes in a trained pair's decoding (a check).

Run: PYTHONPATH=. .venv/bin/python bench/kv_fp8.py   (a minute on 2 CPU cores, after `make demo`)
     PYTHONPATH=. .venv/bin/python bench/kv_fp8.py --quick   (seconds, no store: a random micro
     pair (2x64, vocab 256, sharpened heads) and random prompts, 8 rows of 16 new tokens; the same
     lines, but about an untrained pair)
Takes the demo store's GOOD model (the first real-data-only training run under
.cdray/store/train, or --expert) with its first milestone checkpoint as the EARLY amateur (or
--amateur), and the store's seed prompts. On the CPU the eager step dequantizes an fp8 cache
exactly as cdray's Triton kernel reads it (e4m3 values times their per-vector scale), so this
measures the format, not a kernel. Two views, same prompts and row seeds:
- teacher-forced: along the rows sampled with the model-dtype cache, each step's next-token
  distributions under both caches: mean KL(model || fp8) and top-1 agreement, expert and amateur;
- sampled: rows generated with each cache: how many are identical, the mean position of the first
  differing token, and the mean expert NLL of the sampled tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]


def demo_pair(store: Path) -> tuple[Path, Path]:
    """(final, first milestone) checkpoint dirs of the store's first q = 0 training run."""
    for manifest in sorted(store.glob("train/*/manifest.json")):
        cfg = json.loads(manifest.read_text())["config"]
        if cfg.get("q") == 0.0:
            steps = sorted(p for p in manifest.parent.glob("step_*") if (p / "model").is_dir())
            if len(steps) >= 2:
                return steps[-1] / "model", steps[0] / "model"
    raise SystemExit(f"{store}: no real-data-only training run with two checkpoints (run `make demo`)")


def quick_pair(work: Path) -> tuple[Path, Path, list[list[int]]]:
    """--quick: a random micro expert and amateur saved as the train stage saves them, and prompts."""
    import torch

    from cdray.config import MODEL_PRESETS, ModelConfig
    from cdray.models.llama import build_model, save_model

    dirs = []
    for seed, name in ((0, "expert"), (1, "amateur")):
        model = build_model(ModelConfig(**MODEL_PRESETS["micro"]), 256, seed)
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)  # trained-like peaked distributions
        save_model(model, work / name)
        dirs.append(work / name)
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(4, 256, (int(n),), generator=g).tolist()
               for n in torch.randint(4, 12, (8,), generator=g)]
    return dirs[0], dirs[1], prompts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=ROOT / ".cdray" / "store")
    p.add_argument("--expert", type=Path, default=None)
    p.add_argument("--amateur", type=Path, default=None)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--new", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="a random micro pair, 8 rows x 16 tokens, no store")
    args = p.parse_args()

    import pyarrow.parquet as pq
    import torch

    from cdray.config import DecodingConfig
    from cdray.decode.sample import generate
    from cdray.decode.stacked import StackedLlama
    from cdray.models.llama import load_model

    torch.set_num_threads(2)
    if args.quick:
        work = tempfile.TemporaryDirectory(prefix="cdray-kv-fp8-")
        expert_dir, amateur_dir, prompts = quick_pair(Path(work.name))
        args.new, prompts_file = min(args.new, 16), "random token ids"
    else:
        expert_dir, amateur_dir = (args.expert, args.amateur) if args.expert else demo_pair(args.store)
        prompts_file = sorted(args.store.glob("prompts/*/prompts.parquet"))[0]
        prompts = [list(map(int, r)) for r in pq.read_table(prompts_file).column("prompt").to_pylist()]
    expert, amateur = load_model(expert_dir).eval(), load_model(amateur_dir).eval()
    prompts = prompts[:args.rows]
    seeds = list(range(len(prompts)))
    print(f"expert {expert_dir}\namateur {amateur_dir}\n{len(prompts)} prompts of {prompts_file}, "
          f"{args.new} new tokens, contrastive (alpha 0.1, penalty -20), no EOS stop")
    d = DecodingConfig()
    kw = dict(max_new_tokens=args.new, stop_at_eos=False, batch_size=len(prompts), attention="eager")
    rows = {kv: generate(expert, amateur, prompts, seeds, "contrastive", d, kv_cache=kv, **kw)
            for kv in ("model", "fp8")}

    # teacher-forced along the model-cache rows: both caches see the same tokens
    width = max(len(q) for q in prompts)
    seqs = [q + r.tokens for q, r in zip(prompts, rows["model"])]
    stacks = {kv: StackedLlama([expert, amateur], attention="eager", kv_cache=kv)
              for kv in ("model", "fp8")}
    kl = {kv: [] for kv in ("expert", "amateur")}
    agree = {kv: [] for kv in ("expert", "amateur")}
    with torch.inference_mode():
        logits = {}
        for kv, s in stacks.items():
            s.new_cache(len(seqs), width + args.new)
            ids = torch.tensor([q + [3] * (width - len(q)) for q in prompts])
            positions = torch.arange(width).expand(len(prompts), width)
            logits[kv] = s.forward(ids, positions, slots=torch.arange(len(prompts)),
                                   last=torch.tensor([len(q) - 1 for q in prompts]))
        for t in range(args.new):
            for m, name in enumerate(("expert", "amateur")):
                lp = logits["model"][m].log_softmax(-1)
                lq = logits["fp8"][m].log_softmax(-1)
                kl[name].append((lp.exp() * (lp - lq)).sum(-1))
                agree[name].append((lp.argmax(-1) == lq.argmax(-1)).float())
            if t == args.new - 1:
                break
            ids = torch.tensor([[s[len(q) + t]] for s, q in zip(seqs, prompts)])
            positions = torch.tensor([[len(q) + t] for q in prompts])
            logits = {kv: s.forward(ids, positions) for kv, s in stacks.items()}
    for name in ("expert", "amateur"):
        print(f"teacher-forced {name}: mean KL(model || fp8) {torch.cat(kl[name]).mean():.2e} nats, "
              f"top-1 agreement {torch.cat(agree[name]).mean():.4f}")

    a, b = rows["model"], rows["fp8"]
    same = sum(x.tokens == y.tokens for x, y in zip(a, b))
    first = [next((i for i, (u, v) in enumerate(zip(x.tokens, y.tokens)) if u != v), args.new)
             for x, y in zip(a, b)]
    print(f"sampled: {same}/{len(a)} rows identical; first differing token at mean position "
          f"{sum(first) / len(first):.1f} of {args.new}")
    for kv, rs in rows.items():
        print(f"sampled with the {kv} cache: mean expert NLL {sum(r.expert_nll_mean for r in rs) / len(rs):.4f}, "
              f"mean |V_head| {sum(r.head_size_mean for r in rs) / len(rs):.2f}")


if __name__ == "__main__":
    main()
