"""`cdray plan`'s GPU evaluation figure: the requests and tokens of a BabyLM suite counted from its
files, the forward rate derived from training's, and paper.yaml's cost with the full suite."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from conftest import BABYLM_SAMPLE, shipped_data_root

from cdray import config as C
from cdray.dag.graph import build_graph
from cdray.dag.store import Store
from cdray.sweep import eval_cost
from cdray.sweep.estimate import DEFAULT_TRAIN, estimate, reckon

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
# the sample holds every 5th item of these folders' files, and WUG and reading whole
SAMPLED = {"blimp_filtered": ("sentence_good", "sentence_bad"), "supplement_filtered": ("sentence_good", "sentence_bad"),
           "ewok_filtered": ("Context1",), "entity_tracking": ("input_prefix",)}


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def full_size_stand_in(sample: Path, out: Path) -> Path:
    """The full BabyLM 2025 sets' size from the 1-in-5 sample: each sampled file's items five
    times, each copy made a distinct request by trailing spaces (no word more); WUG, reading whole."""
    for folder in sorted(p for p in sample.iterdir() if p.is_dir()):
        (out / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            if folder.name not in SAMPLED:
                shutil.copy(f, out / folder.name / f.name)
                continue
            rows = [json.loads(line) for line in gzip.open(f, "rt", encoding="utf-8") if line.strip()]
            _write_jsonl_gz(out / folder.name / f.name, [
                {**r, **{k: str(r[k]) + " " * copy for k in SAMPLED[folder.name]}} for copy in range(5) for r in rows])
    return out


def test_a_suite_counts_the_requests_and_tokens_the_evaluator_runs(tmp_path):
    d = tmp_path / "babylm"
    _write_jsonl_gz(d / "blimp_filtered" / "a.jsonl.gz", [
        {"sentence_good": "the cat sat", "sentence_bad": "the cat sit"},
        {"sentence_good": "the cat sat", "sentence_bad": "cat the sat"}])  # one request asked again
    _write_jsonl_gz(d / "entity_tracking" / "b.jsonl.gz", [
        {"input_prefix": "Box 0 contains the hat . Box 0 contains ", "options": ["the hat", "nothing", "the map ."]}])
    d.joinpath("reading").mkdir()
    (d / "reading" / "r.csv").write_text("item,word,prev_item,prev_word\nThe truck,was,The,truck\n"
                                         "The truck was,old,The truck,was\n")
    tpw = eval_cost.TOKENS_PER_WORD
    blimp = eval_cost.task_suite(d, "blimp", None)
    assert (blimp.files, blimp.items, blimp.requests) == (1, 2, 3)
    assert blimp.tokens == pytest.approx(3 + tpw * 9)  # a BOS and three words each
    et = eval_cost.task_suite(d, "entity_tracking", None)
    assert (et.items, et.requests) == (1, 3)
    assert et.tokens == pytest.approx(3 + tpw * (9 + 2 + 1 + 3))  # the prefix runs once for its options
    reading = eval_cost.task_suite(d, "reading", 1)  # reading reads every row whatever max_items says
    assert (reading.items, reading.requests) == (2, 3)  # row 2's previous word is row 1's word
    assert eval_cost.task_suite(d, "blimp", 1).items == 1
    both = eval_cost.suite(d, ["blimp", "entity_tracking"], None)
    assert (both.files, both.requests) == (2, 6) and both.tokens == pytest.approx(blimp.tokens + et.tokens)


def test_the_gpu_forward_rate_is_derived_from_the_training_rate():
    train = DEFAULT_TRAIN["gpu"]
    bf16 = eval_cost.forward_rate(train, "bf16")
    assert bf16 == pytest.approx(train * 3 / 1.86)
    assert eval_cost.forward_rate(train, "fp32") == pytest.approx(bf16 * 67 / 989)
    assert eval_cost.forward_rate(7.0e3, "fp32", "cpu") == pytest.approx(2.1e4)
    s = eval_cost.Suite(files=10, items=100, requests=512, tokens=1e6)
    # load + start-up + host + launches (two batches of 512 requests, each run twice) + forward
    assert eval_cost.checkpoint_seconds(s, 10**8, 1e14, 512) == pytest.approx(
        eval_cost.LOAD_S + 10 * eval_cost.START_S_PER_FILE + 512 * eval_cost.HOST_S_PER_REQUEST
        + 2 * eval_cost.LAUNCH_S_PER_BATCH + 1.0)


@pytest.mark.skipif(not BABYLM_SAMPLE.is_dir(), reason="no BabyLM sample")
def test_paper_yaml_with_the_full_babylm_suite_costs_at_most_1_5x_the_recipe_without(tmp_path):
    """The issue's goal (it was 23x: 4,823 against 206 GPU-hours), on a full-size stand-in of the
    BabyLM 2025 sets at every milestone of every cell."""
    full = full_size_stand_in(BABYLM_SAMPLE, tmp_path / "babylm2025-x5")
    sample = eval_cost.suite(BABYLM_SAMPLE, C.BABYLM_TASKS, None)
    size = eval_cost.suite(full, C.BABYLM_TASKS, None)
    assert size.files == sample.files and size.requests > 4.5 * sample.requests
    figures = {}
    for name, babylm in (("without", ["eval.babylm_dir=null"]), ("with", [f"eval.babylm_dir={full}"])):
        cfg = C.load(SWEEPS / "paper.yaml", ["profile=cluster", f"store.root={tmp_path / 'store'}", *babylm,
                                                    f"data_root={shipped_data_root(tmp_path / 'data')}"])
        graph, store = build_graph(cfg), Store.at(cfg.store.root)
        todo = graph.build_order()
        figures[name] = reckon(graph, cfg, store, todo)
        text = estimate(graph, cfg, store, todo)
    r = figures["with"]
    assert r["checkpoints"] == 160 * 16 and r["suite"] == size and r["perplexity"] > 0
    assert figures["without"]["babylm"] == 0 and figures["without"]["perplexity"] == r["perplexity"]
    ratio = r["total"] / figures["without"]["total"]
    assert 1.2 < ratio <= 1.5, ratio
    assert "derived (not measured on a GPU)" in text and "(measured on CPU)" in text
