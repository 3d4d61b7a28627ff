"""Sweep efficiency: stage executions of a 2 k x 3 q x 2 seed sweep vs the minimal DAG and a naive run.

Run: .venv/bin/python bench/sweep.py   (about 5 minutes on 2 CPU cores)
Last line: executed=N minimal=M naive=K rerun_executed=0
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    from conftest import micro_sweep_dict, write_text_corpus

    from cdray import config as C
    from cdray.pipeline import build_graph
    from cdray.store import Store
    from cdray.sweep import run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = write_text_corpus(tmp / "corpus")
        d = micro_sweep_dict(corpus, tmp, k=[4, 8], q=[0.0, 0.3, 0.6], seed=[1, 2],
                             strategy=["contrastive"])
        d["tracking"]["enabled"] = False
        cfg = C.from_dict(d)
        graph = build_graph(cfg)
        # naive: every cell runs its whole chain, sharing nothing
        naive = sum(len(list(c.evaluate.walk())) for c in graph.cells)
        minimal = len(graph.nodes())
        store = Store.at(cfg.store.root)
        run_sweep(cfg, echo=lambda s: None)
        executed = len(store.list())
        before = {a: store.manifest(*a)["created"] for a in store.list()}
        run_sweep(cfg, echo=lambda s: None)
        rerun = sum(store.manifest(*a)["created"] != before.get(a) for a in store.list())
        rerun += len(store.list()) - len(before)
        trains = [n for n in graph.nodes() if n.stage == "train"]
        print(f"cells={len(graph.cells)} train_stages={len(trains)} "
              f"generate_stages={len(graph.generations)}")
        print(f"executed={executed} minimal={minimal} naive={naive} rerun_executed={rerun}")


if __name__ == "__main__":
    main()
