"""A cdray checkpoint scored by cdray and by the official BabyLM 2025 pipeline, on the same data.

    python bench/babylm_conformance.py --official PATH/evaluation-pipeline-2025 \\
        --model .cdray/store/train/KEY/step_000150/model --tokenizer .cdray/store/tokenizer/KEY \\
        --data data/eval/babylm2025 [--max-items 200] [--tasks blimp ewok ...]

PATH is an unmodified checkout of github.com/babylm/evaluation-pipeline-2025 (not part of cdray;
its reading task needs `pip install statsmodels patsy`). Both sides read the same copy of the data
(gunzipped into the official layout, the first --max-items rows of each file; reading whole) and
the same folder holding the checkpoint and its saved tokenizer. The official code runs as it is
in a subprocess; its per-item log-likelihoods are read by wrapping (not changing) its ranking
functions. Prints per task both scores, the share of items where both pick the same option, and
the largest log-likelihood difference; for reading, both of cdray's modes against the official
surprisals. CI has no checkout of the official pipeline, so no test runs that comparison.

    python bench/babylm_conformance.py --quick [--data DIR]   (~1 minute; tests/test_bench.py)

--quick needs no official checkout: it scores a random 2 x 32 checkpoint made here (its tokenizer
trained on generated English and the items' own words) on the first 2 items of each file of the
data (default: the BabyLM sample beside the repository; reading's first 150 words) through the
same preparation, cdray runs and comparisons, with cdray's own log-likelihoods standing in for the
official side, keyed by the sentences the official code would score (a drift in how items are
matched shows as fewer items or other picks). It leaves out the official pipeline itself: the
"official" column repeats cdray's scores, and the reading lines compare cdray's two reading modes
with each other.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# both sides draw progress bars per file; the comparison lines are what matters
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

OFFICIAL_TASK = {"blimp": "blimp", "supplement": "blimp", "ewok": "ewok", "entity_tracking": "entity_tracking",
                 "wug": "wug_adj"}


def prepare(model: Path, tokenizer: Path, data: Path, work: Path, max_items,
            reading_rows: Optional[int] = None) -> tuple[Path, Path]:
    """(one folder with the model and its tokenizer, the data gunzipped into the official layout;
    reading's file whole, or its header and first reading_rows rows)."""
    from cdray.eval import babylm

    hf = work / "checkpoint"
    hf.mkdir(parents=True)
    for folder in (model, tokenizer):
        for f in Path(folder).iterdir():
            if f.is_file():
                shutil.copy(f, hf / f.name)
    out = work / "data"
    for task, folder in babylm.FOLDERS.items():
        (out / folder).mkdir(parents=True)
        for path in babylm.item_files(data, task):
            name = path.name[:-3] if path.name.endswith(".gz") else path.name
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as src, open(out / folder / name, "w", encoding="utf-8") as dst:
                for i, line in enumerate(src):
                    # reading is one regression over all rows; elsewhere a CSV header is no item
                    if task != "reading" and max_items is not None and i >= max_items:
                        break
                    if task == "reading" and reading_rows is not None and i > reading_rows:
                        break
                    dst.write(line)
    return hf, out


def run_cdray(model: Path, tokenizer: Path, data: Path, task: str, out: Path, mode: str = "exact") -> dict:
    from cdray.eval import babylm
    from cdray.eval.tasks import evaluate_task

    summary = evaluate_task(model, tokenizer, data, task, out, max_items=None, batch_size=64, reading_mode=mode)
    items = {p.stem: babylm.read_items(p) for p in sorted((out / "items").glob("*.jsonl"))}
    return {"scores": summary["scores"], "items": items}


# ---------------------------------------------------------------- the official side, in a subprocess


def official_worker(official: Path, hf: Path, data_dir: Path, task: str, dump: Path) -> None:
    """Runs inside a subprocess: the official zero-shot evaluation, its log-likelihoods recorded."""
    sys.path.insert(0, str(official))
    import torch
    from evaluation_pipeline.sentence_zero_shot import compute_results as cr
    from evaluation_pipeline.sentence_zero_shot import run as official_run

    seen: list = []

    def recording(original):
        def wrapped(args, subset_to_stats, all_log_probs, raw_sentences, *rest):
            lls = torch.stack(all_log_probs[next(iter(all_log_probs))], dim=1)
            seen.extend([r["sentences"], row.tolist()] for r, row in zip(raw_sentences, lls))
            return original(args, subset_to_stats, all_log_probs, raw_sentences, *rest)
        return wrapped

    cr.rank_and_evaluate = recording(cr.rank_and_evaluate)
    cr.rank_and_evaluate_wug = recording(cr.rank_and_evaluate_wug)
    sys.argv = ["run", "--data_path", str(data_dir), "--task", task, "--model_path_or_name", str(hf),
                "--backend", "causal", "--output_dir", str(dump.parent / "official_out"), "--batch_size", "16"]
    args = official_run._parse_arguments()
    model = official_run.get_model(args)
    loader = official_run.get_dataloader(args)
    results, _ = cr.compute_results(args, model, loader, official_run.get_temperatures(args))
    if "wug" in task:
        _, average = official_run.process_results_wug(results)
    else:
        _, average = official_run.process_results(args, results)
    score = float(next(iter(average.values())))
    dump.write_text(json.dumps({"score": score, "items": seen}))


def run_official(official: Path, hf: Path, data_dir: Path, task: str, work: Path) -> dict:
    dump = work / f"official_{task}_{data_dir.name}.json"
    cmd = [sys.executable, __file__, "--worker", str(official), str(hf), str(data_dir), task, str(dump)]
    subprocess.run(cmd, check=True, cwd=official, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(dump.read_text())


def run_official_reading(official: Path, hf: Path, csv: Path, work: Path) -> dict:
    out = work / "official_reading"
    subprocess.run([sys.executable, "-m", "evaluation_pipeline.reading.run", "--model_path_or_name", str(hf),
                    "--backend", "causal", "--data_path", str(csv), "--output_dir", str(out)],
                   check=True, cwd=official, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = next(out.rglob("report.txt")).read_text()
    scores = {line.split(":")[0]: float(line.split(":")[1]) for line in report.splitlines() if ":" in line}
    preds = [json.loads(line) for line in next(out.rglob("prediction.jsonl")).read_text().splitlines()]
    return {"eye_tracking": scores["EYE TRACKING SCORE"], "reading": scores["SELF-PACED READING SCORE"],
            "surprisal": [p["Logprob"] for p in preds], "prev": [p["Prev_Logprob"] for p in preds]}


# ---------------------------------------------------------------- comparison


def compare_choices(task: str, data: Path, ours: dict, theirs: dict) -> tuple[int, float, float, int]:
    """(items matched, share picking the same option, largest |Δ log-likelihood|, items left out
    because lm-eval cut them to the model's context: the official pipeline feeds them whole)."""
    from cdray.eval import babylm

    pool: dict[tuple, list] = {}
    for sentences, lls in theirs["items"]:
        pool.setdefault(tuple(sentences), []).append(lls)
    same, worst, n, cut = 0, 0.0, 0, 0
    for path in babylm.item_files(data, task):
        for row, rec in zip(babylm.read_rows(path), ours["items"][babylm.file_stem(path)]):
            key = tuple(_official_sentences(task, row))
            if not pool.get(key):
                continue
            lls = pool[key].pop(0)
            if rec.get("truncated"):
                cut += 1
                continue
            n += 1
            same += int(np.argmax(lls) == np.argmax(rec["lls"]))
            worst = max(worst, float(np.max(np.abs(np.asarray(lls) - np.asarray(rec["lls"])))))
    return n, same / n if n else math.nan, worst, cut


def _official_sentences(task: str, row: dict) -> list[str]:
    if task in ("blimp", "supplement"):
        return [row["sentence_good"], row["sentence_bad"]]
    if task == "ewok":
        return [" ".join([row["Context1"], row["Target1"]]), " ".join([row["Context1"], row["Target2"]])]
    if task == "entity_tracking":
        return [row["input_prefix"] + o for o in row["options"]]
    return row["sentences"].split("\t")


# ---------------------------------------------------------------- --quick: no official checkout

DEFAULT_DATA = ROOT / "data" / "eval" / "babylm2025"  # the sample the repository ships


def quick_checkpoint(data: Path, work: Path) -> tuple[Path, Path]:
    """(model, tokenizer) dirs of a random 2 x 32 checkpoint whose tokenizer knows the items' words."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cdray.config import ModelConfig, TokenizerConfig
    from cdray.data.tokenizer import train_tokenizer
    from cdray.eval import babylm
    from cdray.models.llama import build_model, save_model

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import synthetic_document

    work.mkdir(parents=True)
    rng = random.Random(0)
    texts = [synthetic_document(rng, 20) for _ in range(100)]
    for task in ("blimp", "ewok", "entity_tracking", "wug"):
        for path in babylm.item_files(data, task)[:2]:
            texts += [" ".join(str(v) for v in row.values()) for row in babylm.read_rows(path, 4)]
    pq.write_table(pa.table({"text": texts}), work / "train.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=400), work / "train.parquet", work / "tokenizer")
    save_model(build_model(ModelConfig(layers=2, hidden=32, heads=2, ffn=64, context=512), 400, 0), work / "model")
    return work / "model", work / "tokenizer"


def cdray_as_official(task: str, data: Path, ours: dict) -> dict:
    """--quick's stand-in for run_official: cdray's log-likelihoods, keyed by the sentences the
    official code scores for each item, in run_official's format."""
    from cdray.eval import babylm

    items = []
    for path in babylm.item_files(data, task):
        for row, rec in zip(babylm.read_rows(path), ours["items"][babylm.file_stem(path)]):
            items.append([_official_sentences(task, row), rec["lls"]])
    return {"score": ours["scores"]["wug_spearman" if task == "wug" else task], "items": items}


def cdray_reading_as_official(ours: dict) -> dict:
    """--quick's stand-in for run_official_reading: cdray's exact-mode surprisals and scores."""
    recs = next(iter(ours["items"].values()))
    return {"eye_tracking": ours["scores"]["eye_tracking"], "reading": ours["scores"]["reading"],
            "surprisal": [-r["pred"] for r in recs],
            "prev": [None if r["prev_pred"] is None else -r["prev_pred"] for r in recs]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        official_worker(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5], Path(sys.argv[6]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--max-items", type=int, default=None)
    p.add_argument("--tasks", nargs="+", default=["blimp", "supplement", "ewok", "entity_tracking", "wug", "reading"])
    p.add_argument("--quick", action="store_true",
                   help="no official checkout: a random checkpoint made here, 2 items a file, cdray "
                        "standing in for the official side (the preparation and comparison code only)")
    a = p.parse_args()
    if a.quick:
        a.data = a.data or DEFAULT_DATA
        if not a.data.is_dir():
            p.error(f"--quick: no BabyLM data at {a.data} (pass --data)")
        a.max_items = a.max_items or 2
    else:
        missing = [f"--{k}" for k in ("official", "model", "tokenizer", "data") if getattr(a, k) is None]
        if missing:
            p.error(f"the following arguments are required: {', '.join(missing)} (or --quick)")

    from cdray.eval import babylm

    work = Path(tempfile.mkdtemp(prefix="cdray-conformance-"))
    if a.quick:
        a.model, a.tokenizer = quick_checkpoint(a.data, work / "quick")
        print("--quick: cdray stands in for the official pipeline (its column repeats cdray's scores)")
    hf, data = prepare(a.model, a.tokenizer, a.data, work, a.max_items, 150 if a.quick else None)
    print(f"checkpoint {a.model}, tokenizer {a.tokenizer}, data {a.data} (first {a.max_items or 'all'} "
          f"items per file), work dir {work}")
    print(f"{'task':<16} {'cdray':>9} {'official':>9} {'items':>6} {'same pick':>9} {'max |ΔLL|':>10}")
    for task in a.tasks:
        if task == "reading":
            continue
        ours = run_cdray(a.model, a.tokenizer, data, task, work / f"cdray_{task}")
        folder = data / babylm.FOLDERS[task]
        theirs = (cdray_as_official(task, data, ours) if a.quick else
                  run_official(a.official, hf, folder, OFFICIAL_TASK[task], work))
        n, same, worst, cut = compare_choices(task, data, ours, theirs)
        score = ours["scores"]["wug_spearman" if task == "wug" else task]
        what = " (WUG: Spearman's ρ)" if task == "wug" else ""
        if cut:
            what += f" ({cut} items longer than the model's context left out of the comparison)"
        print(f"{task:<16} {score:9.4f} {theirs['score']:9.4f} {n:6d} {same:9.4f} {worst:10.2e}{what}")
    if "reading" in a.tasks:
        csv = next((data / babylm.FOLDERS["reading"]).glob("*.csv"))
        modes = {mode: run_cdray(a.model, a.tokenizer, data, "reading", work / f"cdray_reading_{mode}", mode)
                 for mode in ("exact", "babylm2025")}
        theirs = (cdray_reading_as_official(modes["exact"]) if a.quick else
                  run_official_reading(a.official, hf, csv, work))
        for mode, ours in modes.items():
            recs = next(iter(ours["items"].values()))
            diff = np.abs(np.asarray([-r["pred"] for r in recs]) - np.asarray(theirs["surprisal"]))
            prev = [(-r["prev_pred"], t) for r, t in zip(recs, theirs["prev"])
                    if r["prev_pred"] is not None and t is not None and math.isfinite(t)]
            pdiff = max((abs(x - y) for x, y in prev), default=0.0)
            missing = sum((r["prev_pred"] is None) != (t is None or not math.isfinite(t))
                          for r, t in zip(recs, theirs["prev"]))
            print(f"reading ({mode}): eye tracking {ours['scores']['eye_tracking']:.4f} vs official "
                  f"{theirs['eye_tracking']:.2f}, self-paced {ours['scores']['reading']:.4f} vs "
                  f"{theirs['reading']:.2f}; surprisal |Δ| median {np.median(diff):.2e} max {diff.max():.2e} "
                  f"over {len(diff)} words ({int((diff > 1e-3).sum())} differ by > 1e-3), previous word "
                  f"max |Δ| {pdiff:.2e}, rows missing on one side only: {missing}")


if __name__ == "__main__":
    main()
