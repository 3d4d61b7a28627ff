"""The scale study of the replication: where do synthetic arms move from hurting to helping?

    .venv/bin/python bench/scale_study.py write [POINT ...] # sweeps/study/*.yaml, one per point
    .venv/bin/python bench/scale_study.py run [POINT ...]   # `cdray sweep` each (all by default)
    .venv/bin/python bench/scale_study.py collect           # docs/study/results.json, scale.png, qcurve.png
    .venv/bin/python bench/scale_study.py --quick           # all of it but the sweeps, in a temp folder

--quick (tests/test_bench.py; under a minute) writes every point's sweep file (provisional token
counts, each loaded and validated), builds the cheapest point's corpus, tokenizer and train tokens
and writes its sweep from the measured count (`write`), then runs `collect` over a store holding
only those, with docs/study/results.json as the earlier results: the figures come from the recorded
numbers. It leaves out `run` (the sweeps themselves: hours).

Each point is an ordinary cdray sweep on the offline packaged corpus: BASELINE, NO-CONTRAST and
CD-EARLY-k at q = 0.3, laid out as the paper's design scaled down (Ulm et al. 2025, arXiv 2510.08245). Only the
axes below move between points; everything else is fixed here, so every difference in a point's
numbers comes from its axis:

- words: the real corpus size (before the eval and seed splits),
- model: the GOOD's (and every student's) shape,
- epochs: passes over the real train split in one run (the paper: ~16),
- good: the GOOD's checkpoint as a share of training (the paper: 2500/8000; 1.0 = final).

Fixed: the real corpus is Wikipedia lead sections (the packaged `wiki` text: many short documents,
so even 40k words split into sizeable eval and seed sets); k = 1/16 of training (the paper's
500/8000, about one epoch in its runs); the synthetic budget is 0.75 of the real train tokens (the
paper's ~97M/130M), measured on the built token stream before the sweep file is written; rows run
their full length without stopping at EOS, as the paper's loop did, so the budget is always met;
q = 0.3, exact mixing; the GOOD is the BASELINE run of seed 43, as in the paper; best checkpoint
per run (the paper's selection) and final checkpoint both recorded. Runs go one point at a time,
the log in docs/study/run.log.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SWEEPS = ROOT / "sweeps" / "study"
OUT = ROOT / "docs" / "study"
STORE = ".cdray/store"  # the points' store, relative to the repository root (--quick: a temp one)

BATCH, SEQ = 8, 128
MODELS = {
    "tiny": {"preset": "tiny"},  # 4 x 128: 1.0M non-embedding parameters, 1.6M in all
    "small": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024, "context": 256},  # 4.2M / 5.2M
}
# name -> (words, model, epochs, good share); the order they run in (cheapest first)
POINTS = {
    "w40k-tiny-e4": (40_000, "tiny", 4, 5 / 16),
    "w40k-tiny-e8": (40_000, "tiny", 8, 5 / 16),
    "w40k-tiny-e16": (40_000, "tiny", 16, 5 / 16),
    "w100k-tiny-e4": (100_000, "tiny", 4, 5 / 16),
    "w100k-tiny-e8": (100_000, "tiny", 8, 5 / 16),
    "w100k-tiny-e16": (100_000, "tiny", 16, 5 / 16),
    "w100k-tiny-e16-goodfinal": (100_000, "tiny", 16, 1.0),
    "w100k-tiny-e16-qcurve": (100_000, "tiny", 16, 5 / 16),  # the mixing ratio q (finding c)
    "w400k-tiny-e4": (400_000, "tiny", 4, 5 / 16),
    "w100k-small-e16": (100_000, "small", 16, 5 / 16),
    "w400k-tiny-e16": (400_000, "tiny", 16, 5 / 16),
}


def shown(path: Path) -> Path:
    """A path as the sweep files and logs name it: from the repository root when inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def point_config(name: str, real_tokens: int = 0, seeds=(43,)) -> dict:
    """The point's sweep; real_tokens: the measured train split (0: a provisional file whose
    corpus, tokenizer and token keys are already final)."""
    words, model, epochs, good = POINTS[name]
    # 16 milestones per run: k = the first (1/16 of training), the GOOD's step another one
    every = max(1, round(epochs * real_tokens / (BATCH * SEQ) / 16))
    steps = 16 * every
    return {
        "name": f"study-{name}",
        "store": {"root": STORE},
        "tracking": {"uri": "sqlite:///.cdray/mlflow.db", "experiment": "cdray-study"},
        "ray": {"num_cpus": 2, "max_concurrent_cells": 2},
        "corpus": {"sources": [{"kind": "packaged", "name": "wiki", "packages": ["wiki"]}],
                   "total_words": words, "eval_fraction": 0.1, "seed_fraction": 0.1,
                   "chunk_min_words": 20, "chunk_max_words": 60},
        "tokenizer": {"vocab_size": 2000},
        "train": {"steps": steps, "batch_size": BATCH, "seq_len": SEQ, "lr": 2.0e-3,
                  "warmup_steps": max(20, steps // 50), "checkpoint_every": every, "eval_blocks": 32,
                  "precision": "fp32"},
        "expert": {"model": MODELS[model], "seed": 43, "step": round(good * 16) * every},
        "generation": {"prompt_tokens": 16, "continuations": 8, "max_new_tokens": 112,
                       "stop_at_eos": False, "token_budget": max(1, int(0.75 * real_tokens)),
                       "batch_size": 32, "shard_prompts": 32, "actors": 2, "actor_cpus": 0.5},
        "eval": {"max_blocks": 64, "batch_size": 16},
        "grid": {"k": [every], "strategy": ["contrastive", "no_contrast"],
                 "q": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7] if name.endswith("-qcurve") else [0.0, 0.3],
                 "seed": list(seeds)},
    }


def real_train_tokens(name: str) -> int:
    """Build the point's corpus, tokenizer and train tokens (seconds, in this process) and count
    the train split's tokens: steps and budget are set from the measured number."""
    from cdray import config as C
    from cdray.dag.builders import build
    from cdray.dag.graph import build_graph
    from cdray.dag.store import Store

    cfg = C.from_dict(point_config(name, real_tokens=BATCH * SEQ * 16))
    graph, store = build_graph(cfg), Store.at(ROOT / cfg.store.root)
    for node in (graph.corpus, graph.tokenizer, graph.tokens_train):
        build(node, cfg, store)
    return store.manifest("tokens", graph.tokens_train.key)["stats"]["tokens"]


def write(names: list[str]) -> None:
    SWEEPS.mkdir(parents=True, exist_ok=True)
    for name in names:
        words, model, epochs, good = POINTS[name]
        real = real_train_tokens(name)
        head = (f"# scale study point {name}: {words:,} words, {model} model, ~{epochs} epochs over the "
                f"real train split ({real:,} tokens), GOOD at {good:.0%} of training.\n# Written by "
                f"bench/scale_study.py (`write`); run with `cdray sweep "
                f"{shown(SWEEPS / (name + '.yaml'))}`.\n")
        (SWEEPS / f"{name}.yaml").write_text(head + yaml.safe_dump(point_config(name, real), sort_keys=False))


def run(names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "run.log", "a") as log:
        for name in names:
            path = SWEEPS / f"{name}.yaml"
            log.write(f"\n=== {name}: cdray sweep {shown(path)}\n")
            log.flush()
            # this checkout's cdray, whatever the venv has installed (a study can run from a
            # worktree of its own while the main checkout changes)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            done = subprocess.run([sys.executable, "-m", "cdray.cli", "sweep", str(path)], cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
            log.write(f"=== {name}: exit {done.returncode}\n")
            log.flush()
            collect()


def measure(name: str) -> dict:
    """A point's numbers, read from the store (None where not built yet)."""
    from cdray import config as C
    from cdray.dag.graph import build_graph
    from cdray.dag.store import Store

    cfg = C.load(SWEEPS / f"{name}.yaml")
    graph, store = build_graph(cfg), Store.at(ROOT / cfg.store.root)
    words, model, epochs, good = POINTS[name]
    real = store.manifest("tokens", graph.tokens_train.key)["stats"]["tokens"] if store.is_done(
        "tokens", graph.tokens_train.key) else None
    run_tokens = cfg.train.steps * cfg.train.batch_size * cfg.train.seq_len
    out = {"point": name, "words": words, "model": model, "good_share": good, "steps": cfg.train.steps,
           "k": cfg.grid.k[0], "expert_step": cfg.expert_step, "real_train_tokens": real,
           "epochs_over_real": run_tokens / real if real else None, "arms": {}}
    for cell in graph.cells:
        if not store.is_done("evaluate", cell.evaluate.key):
            continue
        ev = store.manifest("evaluate", cell.evaluate.key)["stats"]
        # the q = 0.3 arms by name (the study's axis); a q curve's other points with their q
        name = cell.arm if cell.q in (0.0, 0.3) else f"{cell.arm} q={cell.q:g}"
        arm = out["arms"].setdefault(name, {"best_ppl": {}, "final_ppl": {}})
        arm["best_ppl"][cell.seed] = ev["best_ppl"]
        arm["final_ppl"][cell.seed] = ev["final_ppl"]
        arm["best_step"] = ev["best_step"]
        if cell.train.key == graph.good.key:
            curve = {m["step"]: m["ppl"] for m in ev["milestones"]}
            out["good_ppl"] = curve.get(cfg.expert_step)
            out["baseline_curve"] = curve
    for label, gen in graph.generations.items():
        syn = graph.synthetic[label]
        if store.is_done("tokens", syn.key):
            s = store.manifest("tokens", syn.key)["stats"]["tokens"]
            gstats = store.manifest("generate", gen.key)["stats"]
            out.setdefault("synthetic", {})[label] = {
                "tokens": s, "over_real": s / real if real else None,
                "times_seen_at_q": 0.3 * run_tokens / s, "budget_reached": gstats.get("budget_reached"),
                "distinct_2": gstats.get("distinct_2"), "expert_nll_mean": gstats.get("expert_nll_mean")}
    base = out["arms"].get("BASELINE")
    for arm, v in out["arms"].items():
        for which in ("best_ppl", "final_ppl"):
            seeds = sorted(set(v[which]) & set(base[which])) if base else []
            deltas = [100 * (base[which][s] - v[which][s]) / base[which][s] for s in seeds]
            v[which.replace("ppl", "delta_pct")] = sum(deltas) / len(deltas) if deltas else None
    return out


def collect() -> list[dict]:
    """Every point's numbers from the store; a point this store holds fewer arms of keeps the numbers
    an earlier run recorded in results.json (the store that measured them may be gone)."""
    earlier = {}
    if (OUT / "results.json").is_file():
        earlier = {r["point"]: r for r in json.loads((OUT / "results.json").read_text())}
    rows = []
    for name in POINTS:
        if (SWEEPS / f"{name}.yaml").is_file():
            try:
                row = measure(name)
            except Exception as e:  # noqa: BLE001 - a point not built yet has nothing to report
                row = {"point": name, "error": f"{type(e).__name__}: {e}"}
            before = earlier.get(name, {})
            fewer_arms = len(before.get("arms", {})) > len(row.get("arms", {}))
            lost_tokens = before.get("real_train_tokens") and row.get("real_train_tokens") is None
            if fewer_arms or not row.get("arms") and lost_tokens:
                row = before
            rows.append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    figure(rows, OUT / "scale.png")
    for row in rows:
        if row["point"].endswith("-qcurve") and len(row.get("arms", {})) > 3:
            q_figure(row, OUT / "qcurve.png")
    return rows


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [("NO-CONTRAST", "NO-CONTRAST"), ("CD-EARLY", "CD-EARLY-k")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    lines: dict[tuple, list] = {}
    for r in rows:
        if ("arms" not in r or r.get("good_share") != 5 / 16 or r.get("epochs_over_real") is None
                or r["point"].endswith("-qcurve")):
            continue
        lines.setdefault((r["model"], r["words"]), []).append(r)
    for ax, (prefix, title) in zip(axes, arms):
        for (model, words), pts in sorted(lines.items()):
            pts = sorted(pts, key=lambda r: r["epochs_over_real"])
            xs, ys = [], []
            for r in pts:
                arm = next((v for a, v in r["arms"].items() if a.startswith(prefix) and " q=" not in a), None)
                if arm and arm.get("best_delta_pct") is not None:
                    xs.append(r["epochs_over_real"]), ys.append(arm["best_delta_pct"])
            if xs:
                ax.plot(xs, ys, marker="o", label=f"{model}, {words // 1000}k words")
        for r in rows:  # the GOOD at its final step: one marker, labelled
            if r.get("good_share") == 1.0 and "arms" in r:
                arm = next((v for a, v in r["arms"].items() if a.startswith(prefix) and " q=" not in a), None)
                if arm and arm.get("best_delta_pct") is not None:
                    ax.plot([r["epochs_over_real"]], [arm["best_delta_pct"]], marker="*", markersize=12,
                            linestyle="none", color="black", label=f"{r['model']}, {r['words'] // 1000}k, GOOD final")
        paper = {"NO-CONTRAST": 3.68, "CD-EARLY": 2.98}[prefix]  # Ulm et al. 2025, arXiv 2510.08245, 162M, 100M words
        ax.plot([16], [paper], marker="D", color="grey", linestyle="none", label=f"the paper ({paper:+.2f}%)")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks([4, 8, 16], ["4", "8", "16"])
        ax.set_xlabel("epochs over the real train split in one run")
        ax.set_title(f"{title} at q = 0.3")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("perplexity Δ vs BASELINE (%; > 0: helps)")
    fig.suptitle("Scale study on the offline corpus: perplexity change of the synthetic arms at q = 0.3 "
                 "(one seed a point, best checkpoint)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def q_figure(row: dict, path: Path) -> None:
    """The q curve of one point: perplexity change vs BASELINE per q, best and final checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, which, title in zip(axes, ("best_delta_pct", "final_delta_pct"),
                                ("best checkpoint (the paper's selection)", "final checkpoint")):
        for prefix in ("NO-CONTRAST", "CD-EARLY"):
            pts = {0.0: 0.0}  # BASELINE is q = 0
            for name, arm in row["arms"].items():
                if name.startswith(prefix) and arm.get(which) is not None:
                    pts[float(name.split(" q=")[1]) if " q=" in name else 0.3] = arm[which]
            if len(pts) > 1:
                qs = sorted(pts)
                ax.plot(qs, [pts[q] for q in qs], marker="o", label=prefix if prefix == "NO-CONTRAST" else
                        f"CD-EARLY-{row['k']}")
        ax.axvspan(0.2, 0.4, color="grey", alpha=0.12, label="the paper's μΔREL peak (q 0.2-0.4)")
        ax.axvline(0.3, color="grey", linestyle=":", linewidth=1)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("synthetic fraction q")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("perplexity Δ vs BASELINE (%; > 0: helps)")
    fig.suptitle(f"q curve at {row['words'] // 1000}k words, {row['model']} model, "
                 f"{row['epochs_over_real']:.0f} epochs (one seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def quick() -> None:
    """Every step but `run` on a temp store: see the module docstring."""
    import shutil
    import tempfile

    global SWEEPS, OUT, STORE
    tmp = Path(tempfile.mkdtemp(prefix="cdray-study-"))
    recorded = OUT / "results.json"
    SWEEPS, OUT, STORE = tmp / "sweeps", tmp / "out", str(tmp / "store")
    SWEEPS.mkdir(parents=True)
    for name in POINTS:
        (SWEEPS / f"{name}.yaml").write_text(yaml.safe_dump(point_config(name, BATCH * SEQ * 16), sort_keys=False))
    cheapest = next(iter(POINTS))
    write([cheapest])
    steps = yaml.safe_load((SWEEPS / f"{cheapest}.yaml").read_text())["train"]["steps"]
    print(f"sweep files: {len(POINTS)} points written; {cheapest}: {steps} steps from its measured train tokens")
    OUT.mkdir(parents=True)
    shutil.copy(recorded, OUT / "results.json")
    rows = collect()
    print(f"collect: {len(rows)} points, {sum(bool(r.get('arms')) for r in rows)} with arms (from {shown(recorded)})")
    for fig in ("scale.png", "qcurve.png"):
        path = OUT / fig
        print(f"figure {fig}: {path.stat().st_size} bytes" if path.is_file() else f"figure {fig}: missing")
    shutil.rmtree(tmp)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "collect"
    names = sys.argv[2:] or list(POINTS)
    if what == "--quick":
        quick()
    elif what == "write":
        write(names)
    elif what == "run":
        write(names)
        run(names)
    else:
        for r in collect():
            print(json.dumps({k: v for k, v in r.items() if k != "baseline_curve"}, default=str))


if __name__ == "__main__":
    main()
