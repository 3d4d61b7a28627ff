"""Engine A/B on a noisy machine: an older commit's decoder against the working tree's, alternated.

Run: PYTHONPATH=. .venv/bin/python bench/decoding_ab.py 963f126 --runs 10   (~3 minutes, 2 CPU cores)
Both engines load into one process (the old one from `git archive REV cdray`), sample the same
rows with the same models (bench/decoding.py's 10M pair, batch 64, 64 new tokens) and are timed in
turns, so a noisy neighbour slows both alike. Prints whether they sampled the same tokens, each
engine's median and best time, and last `speedup=X`: the median over runs of old time / new time.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

ENGINE_MODULES = ("decoding", "stacked", "decoding_engine")  # the engine's own modules, in import order


def load_engine(rev: str, into: Path):
    """The decoding_engine module of commit `rev`, importing that commit's engine modules."""
    subprocess.run(f"git archive {rev} cdray | tar -x -C {into}", shell=True, check=True, cwd=ROOT)
    package = "cdray_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    sys.modules[package] = types.ModuleType(package)
    sys.modules[package].__path__ = []
    for name in ENGINE_MODULES:
        source = (into / "cdray" / f"{name}.py").read_text()
        for other in ENGINE_MODULES:
            source = source.replace(f"from cdray.{other} ", f"from {package}.{other} ")
        module = types.ModuleType(f"{package}.{name}")
        sys.modules[module.__name__] = module
        exec(compile(source, f"{rev}:cdray/{name}.py", "exec"), module.__dict__)
    return sys.modules[f"{package}.decoding_engine"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the older commit (anything `git archive` takes)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()

    import decoding as bench_decoding
    import torch

    from cdray.config import DecodingConfig
    from cdray.decode.engine import Decoder

    torch.set_num_threads(2)
    shape = argparse.Namespace(vocab=8000, hidden=256, layers=6, heads=4, device="cpu")
    expert, amateur = bench_decoding.make_models(shape)
    prompts = torch.randint(4, shape.vocab, (args.batch, 20), generator=torch.Generator().manual_seed(0))
    prompts[:, 0] = 1
    rows, seeds = prompts.tolist(), list(range(args.batch))
    with tempfile.TemporaryDirectory() as tmp:
        old_engine = load_engine(args.rev, Path(tmp))
    d = DecodingConfig()
    engines = {args.rev: old_engine.Decoder(expert, amateur, "contrastive", d),
               "working tree": Decoder(expert, amateur, "contrastive", d)}

    def run(dec):
        return dec.generate(rows, seeds, max_new_tokens=args.new, stop_at_eos=False,
                            batch_size=args.batch, max_len=20 + args.new)

    tokens = [[r.tokens for r in run(dec)] for dec in engines.values()]  # also the warm-up
    print(f"same tokens: {tokens[0] == tokens[1]}")
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.runs):
        for name, dec in engines.items():
            t0 = time.perf_counter()
            run(dec)
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name:14s} median {statistics.median(ts):.2f} s, best {min(ts):.2f} s "
              f"({args.batch * args.new / statistics.median(ts):.0f} new tok/s at the median)")
    old, new = times.values()
    print(f"speedup={statistics.median(o / n for o, n in zip(old, new)):.3f}")


if __name__ == "__main__":
    main()
