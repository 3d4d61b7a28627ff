"""Engine A/B on a noisy machine: an older commit's decoder against the working tree's, alternated.

Run: PYTHONPATH=. .venv/bin/python bench/decoding_ab.py 963f126 --runs 10   (~3 minutes, 2 CPU cores)
     PYTHONPATH=. .venv/bin/python bench/decoding_ab.py --quick   (seconds: HEAD against the working
     tree, a 2x64 pair, batch 8, 8 new tokens, 2 runs; checks the loader and the timing, not a speed)
Both engines load into one process (the old one from `git archive REV cdray`, the whole package
under another name, so any commit's layout loads), sample the same rows with the same models
(bench/decoding.py's 10M pair, batch 64, 64 new tokens) and are timed in turns, so a noisy neighbour
slows both alike. Prints whether they sampled the same tokens, each engine's median and best time,
and last `speedup=X`: the median over runs of old time / new time.
"""
from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

# where a commit keeps its Decoder: the package's layout changed over time
ENGINE_MODULES = ("decode.engine", "decoding_engine")
IMPORT = re.compile(r"^(\s*)(from|import) cdray(?=[.\s])", re.MULTILINE)


def load_engine(rev: str, into: Path):
    """(Decoder, DecodingConfig) of commit `rev`: its whole cdray package, imported as
    cdray_at_REV (every `cdray` import of its modules renamed) beside the working tree's."""
    package = "cdray_at_" + "".join(c if c.isalnum() else "_" for c in rev)
    subprocess.run(f"git archive {rev} cdray | tar -x -C {into}", shell=True, check=True, cwd=ROOT)
    (into / "cdray").rename(into / package)
    for path in (into / package).rglob("*.py"):
        path.write_text(IMPORT.sub(lambda m: f"{m[1]}{m[2]} {package}", path.read_text()))
    sys.path.insert(0, str(into))
    try:
        for name in ENGINE_MODULES:
            if (into / package / (name.replace(".", "/") + ".py")).is_file():
                engine = importlib.import_module(f"{package}.{name}")
                return engine.Decoder, importlib.import_module(f"{package}.config").DecodingConfig
        raise SystemExit(f"{rev}: no decoder module ({' or '.join(ENGINE_MODULES)}) in its cdray package")
    finally:
        sys.path.remove(str(into))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", nargs="?", help="the older commit (anything `git archive` takes; --quick: HEAD)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--quick", action="store_true",
                   help="HEAD (unless REV is given), a 2x64 pair, batch 8, 8 new tokens, 2 runs")
    args = p.parse_args()
    shape = argparse.Namespace(vocab=8000, hidden=256, layers=6, heads=4, device="cpu")
    if args.quick:
        args.rev, args.runs, args.new, args.batch = args.rev or "HEAD", 2, 8, 8
        shape = argparse.Namespace(vocab=500, hidden=64, layers=2, heads=2, device="cpu")
    if not args.rev:
        p.error("give the older commit REV (or --quick)")

    import decoding as bench_decoding
    import torch

    from cdray.config import DecodingConfig
    from cdray.decode.engine import Decoder

    torch.set_num_threads(2)
    expert, amateur = bench_decoding.make_models(shape)
    prompts = torch.randint(4, shape.vocab, (args.batch, 20), generator=torch.Generator().manual_seed(0))
    prompts[:, 0] = 1
    rows, seeds = prompts.tolist(), list(range(args.batch))
    # the old package's files stay until the end: its modules import others as they need them
    tmp = tempfile.TemporaryDirectory(prefix="cdray-ab-")
    OldDecoder, OldConfig = load_engine(args.rev, Path(tmp.name))
    engines = {args.rev: OldDecoder(expert, amateur, "contrastive", OldConfig()),
               "working tree": Decoder(expert, amateur, "contrastive", DecodingConfig())}

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
    tmp.cleanup()


if __name__ == "__main__":
    main()
