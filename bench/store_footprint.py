"""A training run in a remote store: the bytes it keeps, the bytes a reader of one checkpoint
fetches, and how long each milestone holds the steps up against how long its upload takes.

Run from the repo root (after `make setup`):
    .venv/bin/python bench/store_footprint.py            # the demo's model, 16 milestones (~3 min)
    .venv/bin/python bench/store_footprint.py --quick    # the micro model, 4 milestones (~1 min)

One training run goes through cdray's Ray Train stage (one worker, local Ray) into a store on
moto's S3 server on loopback, as a cluster's runs go into a bucket. Printed, all from this run:
  store_ratio     store bytes of the run / (milestones x one milestone's weights); goal <= 1.25
  old_ratio       the same for the layout that kept optimizer and RNG state at every milestone
  fetch_ratio     bytes a reader of one milestone downloads / that milestone's files; goal <= 1.1
  old_fetch_ratio the same when a reader fetched the whole run
  stall_s         the median time a milestone's checkpoint held the step loop up (writing it on
                  the node, handing it to Ray), against upload_s, the median background upload
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from common import load_line, start_ray  # noqa: E402

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def moto_store(tmp: Path) -> str:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(S3_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="bench")
    return f"s3://bench/footprint?endpoint_override={host}:{port}&scheme=http&region=us-east-1"


def sweep(tmp: Path, root: str, quick: bool) -> dict:
    from cdray.config import from_dict

    corpus = tmp / "corpus"
    corpus.mkdir()
    words = "the cat saw a dog near the river and the old man found a red ball in the garden".split()
    for i in range(40 if quick else 120):
        (corpus / f"doc{i:03d}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(300)) + "\n")
    steps, every = (8, 2) if quick else (64, 4)
    return from_dict({
        "name": "footprint", "store": {"root": root, "cache": str(tmp / "cache")},
        "tracking": {"enabled": False},
        "corpus": {"sources": [{"kind": "local", "name": "text", "path": str(corpus)}],
                   "eval_fraction": 0.1, "seed_fraction": 0.1},
        "tokenizer": {"vocab_size": 256 if quick else 2000},
        "train": {"steps": steps, "batch_size": 4, "seq_len": 64, "warmup_steps": 1,
                  "checkpoint_every": every, "eval_blocks": 2, "precision": "fp32"},
        "expert": {"model": {"preset": "micro" if quick else "tiny"}},
        # no corpus is generated (the grid has no synthetic arm), but the section must fit the model
        "generation": {"prompt_tokens": 16, "max_new_tokens": 64},
        "grid": {"k": [], "q": [0.0]},
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the micro model, 4 milestones")
    args = ap.parse_args()
    print(load_line())
    from cdray.dag import builders
    from cdray.dag.graph import build_graph
    from cdray.dag.store import Store
    from cdray.shell.ray_exec import build_node

    with tempfile.TemporaryDirectory(prefix="cdray-footprint-") as tmp:
        tmp = Path(tmp)
        cfg = sweep(tmp, moto_store(tmp), args.quick)
        store = Store.at(cfg.store.root, cfg.store.cache)
        node = build_graph(cfg).good
        for n in node.walk():
            if n is not node:
                builders.build(n, cfg, store)
        start_ray()
        started = time.perf_counter()
        manifest = build_node(node, cfg, store)
        wall = time.perf_counter() - started
        files = manifest["files"]
        steps = sorted({int(rel[5:11]) for rel in files if rel.startswith("step_")})
        weights = sum(m["bytes"] for rel, m in files.items() if rel.startswith(f"step_{steps[0]:06d}/model/"))
        resume = sum(m["bytes"] for rel, m in files.items() if "/resume/" in rel)
        run_bytes = manifest["bytes"]
        store_ratio = run_bytes / (len(steps) * weights)
        old_ratio = (run_bytes + (len(steps) - 1) * resume) / (len(steps) * weights)

        reader = Store.at(cfg.store.root, tmp / "reader-cache")
        step = steps[len(steps) // 2]
        wanted = builders.milestone_weights(step)
        fetched_dir = reader.fetch("train", node.key, wanted)
        fetched = sum(p.stat().st_size for p in fetched_dir.rglob("*") if p.is_file())
        checkpoint = sum(m["bytes"] for rel, m in files.items() if wanted(rel))
        stats = manifest["stats"]
        stall = statistics.median(stats["checkpoint_seconds"])
        upload = statistics.median(stats["upload_seconds"])
        print(f"run: {len(steps)} milestones of {weights / 1e6:.2f} MB weights, store bytes {run_bytes / 1e6:.1f} MB, "
              f"resume state {resume / 1e6:.1f} MB (newest milestone only), fit {wall:.1f} s")
        print(f"store_ratio={store_ratio:.3f} (goal <= 1.25)  old_ratio={old_ratio:.3f}")
        print(f"fetch_ratio={fetched / checkpoint:.3f} (goal <= 1.1; {fetched / 1e6:.2f} MB for step {step})  "
              f"old_fetch_ratio={run_bytes / checkpoint:.2f}")
        print(f"stall_s={stall:.3f} per milestone (median; writing it and handing it on) against "
              f"upload_s={upload:.3f} (median background upload of one milestone)")


if __name__ == "__main__":
    main()
