"""Sweep efficiency: stage executions of a 2 k x 3 q x 2 seed sweep vs the minimal DAG and a naive run.

Run from the repo root (after `make setup`):
    .venv/bin/python bench/sweep.py            # about 5 minutes on 2 idle CPU cores
    .venv/bin/python bench/sweep.py --quick    # k {4} x q {0, 0.3} x seed {43}: the same checks, ~1-2 minutes

The grid: k in {4, 8} (two EARLY-k amateurs), q in {0, 0.3, 0.6}, seeds {1, 2}, strategy contrastive.
The minimal DAG is counted here from the grid alone (not from cdray's graph): 1 GOOD training per
GOOD seed, 1 synthetic corpus per (amateur, strategy), 1 BASELINE training per seed, 1 mixed training
per remaining cell, plus the shared corpus/tokenizer/token/prompt stages and one evaluation per trained
cell. The sweep must execute exactly that, stage by stage; the naive count is every cell running its
whole chain with nothing shared between cells. A second run of the same sweep must execute nothing.
--quick's one seed is the GOOD's (expert.seed 43): its BASELINE is the GOOD run itself, as in the
paper, so it trains twice (GOOD, CD-EARLY-4 at q = 0.3) and checks that sharing too.
Last line: executed=N minimal=M naive=K rerun_executed=0
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

K, Q, SEEDS, STRATEGIES = [4, 8], [0.0, 0.3, 0.6], [1, 2], ["contrastive"]
EXPERT_SEED = 43  # tests/conftest.py's micro sweep


def expected_counts(k, q, seeds, strategies, r=(), p=(), expert_seed=EXPERT_SEED) -> Counter:
    """Stage executions of the minimal DAG, derived from the grid by hand."""
    amateurs = len(k) + len(r) + len(p)
    corpora = sum(amateurs if s in ("contrastive", "contrastive_tail") else 1 for s in strategies)
    good_seeds = 1  # expert.seed: one GOOD run serves every EARLY-k amateur and every corpus
    baselines = len(seeds) if 0.0 in q else 0  # BASELINE cells, one per seed
    # a BASELINE of the GOOD's seed trains nothing: its run is the GOOD's (still evaluated as a cell)
    baseline_runs = sum(s != expert_seed for s in seeds) if 0.0 in q else 0
    mixed = corpora * sum(1 for v in q if v > 0) * len(seeds)
    return Counter({
        "corpus": 1, "tokenizer": 1, "prompts": 1,
        "tokens": 2 + corpora,  # train + eval splits, one synthetic stream per corpus
        "generate": corpora,
        "train": good_seeds + len(r) + baseline_runs + mixed,
        "evaluate": baselines + mixed,
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 1 k x 2 q x 1 seed grid (2 trainings)")
    args = ap.parse_args()
    grid = ([4], [0.0, 0.3], [EXPERT_SEED], STRATEGIES) if args.quick else (K, Q, SEEDS, STRATEGIES)
    from common import load_line, start_ray
    from conftest import micro_sweep_dict, write_text_corpus

    from cdray import config as C
    from cdray.dag.graph import build_graph
    from cdray.dag.store import Store
    from cdray.shell.driver import run_sweep

    with tempfile.TemporaryDirectory(prefix="cdray-bench-sweep-") as tmp:
        tmp = Path(tmp)
        corpus = write_text_corpus(tmp / "corpus")
        k, q, seeds, strategies = grid
        d = micro_sweep_dict(corpus, tmp, k=k, q=q, seed=seeds, strategy=strategies)
        d["tracking"]["enabled"] = False
        assert d["expert"]["seed"] == EXPERT_SEED
        cfg = C.from_dict(d)
        graph = build_graph(cfg)
        want = expected_counts(k, q, seeds, strategies)
        minimal = sum(want.values())
        # naive: every cell builds its own chain (each distinct stage of the chain once), sharing nothing
        naive_by_stage = Counter()
        for c in graph.cells:
            chain = {(n.stage, n.key) for n in c.evaluate.walk()}
            naive_by_stage.update(stage for stage, _ in chain)
        naive = sum(naive_by_stage.values())

        store = Store.at(cfg.store.root)
        assert not store.list(), "the bench store must start empty"
        print(load_line())
        start_ray(cfg.ray.num_cpus)  # run_sweep reuses it
        t0 = time.perf_counter()
        run_sweep(cfg, echo=lambda s: None)
        first_s = time.perf_counter() - t0
        built = store.list()
        got = Counter(stage for stage, _ in built)
        executed = len(built)
        before = {a: store.manifest(*a)["created"] for a in built}
        t0 = time.perf_counter()
        run_sweep(cfg, echo=lambda s: None)
        second_s = time.perf_counter() - t0
        after = store.list()
        rerun = sum(store.manifest(*a)["created"] != before.get(a) for a in after)
        rerun += len(set(after) - set(before))

        trains = [n for n in graph.nodes() if n.stage == "train"]
        labels = Counter(n.label.split(" q=")[0].split(" seed=")[0] for n in trains)
        print(f"grid: k={k} q={q} seeds={seeds} strategy={strategies}: {len(graph.cells)} cells "
              f"after q=0 cells collapse to one BASELINE per seed")
        print(f"{'stage':<10} {'executed':>8} {'minimal':>8} {'naive':>6}")
        for stage in ("corpus", "tokenizer", "tokens", "prompts", "train", "generate", "evaluate"):
            print(f"{stage:<10} {got[stage]:>8} {want[stage]:>8} {naive_by_stage[stage]:>6}")
        print("train runs: " + ", ".join(f"{v} x {k.removeprefix('train ')}" for k, v in sorted(labels.items())))
        ok = got == want and rerun == 0
        print(f"first run {first_s:.0f} s, second run {second_s:.1f} s")
        print(f"stage counts match the minimal DAG: {got == want}; second run executed {rerun} stages"
              + ("" if ok else "  <-- MISMATCH"))
        print(f"executed={executed} minimal={minimal} naive={naive} rerun_executed={rerun}")
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
