"""End to end: a micro sweep through Ray (Train, Data, Tune) and MLflow, then a no-op re-run."""
from __future__ import annotations

import json

import pytest

from cdray import config as C
from cdray.dag.graph import build_graph
from cdray.dag.store import Store
from cdray.sweep.plan import plan

pytestmark = pytest.mark.slow


def _killed_mid_sweep(cfg_dict: dict, cwd, store_dir) -> dict:
    """Run `cdray sweep` as a driver of its own and SIGKILL it once the first cell is evaluated.

    Returns the evaluate manifests' creation times at the kill.
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    (cwd / "sweep.yaml").write_text(yaml.safe_dump(cfg_dict))
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cdray.cli", "sweep", "sweep.yaml"], cwd=cwd, env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    evaluated = lambda: list((store_dir / "evaluate").glob(f"*/{'manifest.json'}"))  # noqa: E731
    deadline = time.time() + 600
    while not evaluated():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the first cell never finished"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    return {p.parent.name: json.loads(p.read_text())["created"] for p in evaluated()}


def test_micro_sweep_killed_resumed_then_cached(micro_cfg_dict, ray_session, capsys, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from cdray.shell.driver import run_sweep
    from cdray.sweep.plan import anchored, sweep_key
    from cdray.sweep.report import report_from_mlflow

    # relative paths, as in the README recipes: trials run in other directories
    monkeypatch.chdir(tmp_path)
    micro_cfg_dict = micro_cfg_dict | {"store": {"root": "rel/store"},
                                       "tracking": {"uri": "sqlite:///rel/mlflow.db", "experiment": "test"}}
    cfg = anchored(C.from_dict(micro_cfg_dict))

    # a driver killed after its first cell: re-running the same sweep finishes the rest
    done_at_kill = _killed_mid_sweep(micro_cfg_dict, tmp_path, tmp_path / "rel" / "store")
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    parent_at_kill = client.search_runs([client.get_experiment_by_name("test").experiment_id],
                                        filter_string="tags.`cdray.kind` = 'sweep'")[0].info.run_id
    assert 1 <= len(done_at_kill) < len(build_graph(cfg).cells)

    rows = run_sweep(C.from_dict(micro_cfg_dict))
    assert cfg.store.root == str(tmp_path / "rel" / "store")
    out = capsys.readouterr().out
    assert {r["arm"] for r in rows} == {"BASELINE", "NO-CONTRAST", "CD-EARLY-4"}
    assert "BASELINE" in out and "CD-EARLY-4" in out and "Δ vs BASELINE" in out
    store = Store.at(cfg.store.root)
    graph = build_graph(cfg)
    assert all(r.cached for r in plan(graph, store))

    # realised q is logged and exact for q * batch * steps integral
    cd = next(r for r in rows if r["arm"] == "CD-EARLY-4")
    assert cd["realised_q"] == pytest.approx(0.5)

    # the synthetic corpus rows are unique (prompt id, continuation) pairs within budget
    gen = graph.generations["CD-EARLY-4"]
    stats = store.manifest("generate", gen.key)["stats"]
    assert stats["rows"] > 0 and stats["new_tokens"] >= cfg.generation.token_budget

    # MLflow: one parent, one child per cell with params, metrics, tags and dataset inputs
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("cdray.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("cdray.kind") == "cell"]
    assert len(parents) == 1 and len(children) == len(graph.cells) == 3
    speeds = 0
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        for p in ("arm", "q", "seed", "strategy", "k", "params_total", "realised_q"):
            assert p in child.data.params or p in ("k",), p
        assert {"final_ppl", "best_ppl", "eval_ppl", "train_loss"} <= set(child.data.metrics)
        # a run's speed is its own attempt's steady steps: one the killed driver left at (or a step
        # before) its last milestone resumes with none to time, and logs no speed
        timed = store.manifest("train", child.data.tags["cdray.train_key"])["stats"]["throughput"]["timed_steps"]
        assert ({"train_tokens_per_s", "train_data_wait_share"} <= set(child.data.metrics)) == (timed > 0)
        speeds += timed > 0
        history = client.get_metric_history(child.info.run_id, "eval_ppl")
        assert sorted(m.step for m in history) == [4, 8, 12]
        assert child.data.tags["cdray.train_key"]
        assert child.inputs.dataset_inputs, "the corpus is recorded as a dataset input"
    assert speeds >= 1  # the runs the killed driver had not reached timed their steps
    # a generate stage's progress, logged to the parent run as each shard committed
    live = client.get_metric_history(parents[0].info.run_id,
                                     "generate_CD-EARLY-4.progress.leading_tokens")
    assert live and max(m.step for m in live) >= stats["shards_used"]  # step: shards committed
    assert max(m.value for m in live) >= cfg.generation.token_budget
    manifests = {(s, k): store.manifest(s, k)["created"] for s, k in store.list()}
    # finished cells were not recomputed, and the killed run's parent run was reused
    assert {k: manifests[("evaluate", k)] for k in done_at_kill} == done_at_kill
    assert parents[0].info.run_id == parent_at_kill
    assert len({c.data.tags["cdray.cell_id"] for c in children}) == len(children)

    # a second run rebuilds nothing and adds no MLflow runs
    rows2 = run_sweep(cfg)
    assert sorted(json.dumps(r, sort_keys=True) for r in rows2) == sorted(json.dumps(r, sort_keys=True) for r in rows)
    assert {(s, k): store.manifest(s, k)["created"] for s, k in store.list()} == manifests
    assert len(client.search_runs([exp.experiment_id], max_results=100)) == len(runs)
    assert parents[0].info.run_id == client.search_runs(
        [exp.experiment_id], filter_string="tags.`cdray.kind` = 'sweep'")[0].info.run_id

    capsys.readouterr()
    report_from_mlflow(cfg)
    assert "CD-EARLY-4" in capsys.readouterr().out

    # a seed added to the finished sweep: its cells join the same parent; finished cells are not
    # run again (their child runs keep their end times)
    grown = anchored(C.from_dict(micro_cfg_dict | {"grid": {**micro_cfg_dict["grid"], "seed": [42, 7]}}))
    ended = {c.info.run_id: c.info.end_time for c in children}
    run_sweep(grown)
    after = client.search_runs([exp.experiment_id], max_results=100)
    assert [r.info.run_id for r in after if r.data.tags.get("cdray.kind") == "sweep"] == [parent_at_kill]
    kids = [r for r in after if r.data.tags.get("cdray.kind") == "cell"]
    assert len(kids) == len(build_graph(grown).cells) == 6  # a BASELINE and two mixed cells a seed
    assert {r.info.run_id: r.info.end_time for r in kids if r.info.run_id in ended} == ended
    report_from_mlflow(grown)
    assert capsys.readouterr().out.count("BASELINE") >= 1
    assert sweep_key(cfg) == sweep_key(C.from_dict(micro_cfg_dict | {"store": {"root": "/elsewhere"}}))


def test_live_metrics_survive_a_tracking_failure():
    """A tracking error mid-stage is reported once; the stage's progress callback never raises."""
    from types import SimpleNamespace

    from cdray.sweep.cell_runs import live_metrics

    class Down:
        calls = 0

        def log_metrics(self, run_id, rows):
            Down.calls += 1
            raise ConnectionError("http://user:s3cret@host: refused")

    said = []
    log = live_metrics(Down(), "run", SimpleNamespace(label="generate CD-EARLY-4"), said.append)
    for shards in (1, 2, 3):
        log({"shards": shards, "leading_tokens": 10 * shards, "tokens_per_s": 5.0})
    assert Down.calls == 1 and len(said) == 1
    assert "generate CD-EARLY-4" in said[0] and "s3cret" not in said[0]


@pytest.mark.parametrize("use_tune", [True, False], ids=["sweep", "run"])
def test_a_grid_seed_that_is_the_goods_runs_end_to_end(micro_cfg_dict, ray_session, tmp_path, use_tune):
    """The paper's design: GOOD = the BASELINE run of one grid seed (43 here). Generation reads
    that run, so it is built before the cells, for `cdray sweep` (Tune) and `cdray run` alike."""
    from cdray.shell.driver import run_sweep

    seeds = [42, 43] if use_tune else [43]
    cfg = C.from_dict(micro_cfg_dict | {"grid": {"k": [4], "strategy": ["contrastive"], "q": [0.0, 0.5],
                                                 "seed": seeds}})
    graph = build_graph(cfg)
    assert any(c.train.key == graph.good.key for c in graph.cells)
    rows = run_sweep(cfg, use_tune=use_tune, echo=lambda line: None)
    assert sorted((r["arm"], r["seed"]) for r in rows) == sorted(
        (arm, s) for arm in ("BASELINE", "CD-EARLY-4") for s in seeds)
    store = Store.at(cfg.store.root)
    assert all(r.cached for r in plan(graph, store))
    good = store.manifest("train", graph.good.key)
    gen = store.manifest("generate", graph.generations["CD-EARLY-4"].key)
    assert good["created"] <= gen["created"]


def test_a_baseline_cell_is_built_while_the_good_still_trains(micro_cfg_dict, ray_session, tmp_path):
    """Dispatched by readiness: the GOOD is held at a step until the BASELINE cell, which reads no
    synthetic corpus, is evaluated; a driver that built the shared work first would wait forever.
    Then `cdray export` of its best checkpoint, and of its word-count checkpoints (train.checkpoint_words)."""
    import threading
    import time

    from cdray.common import faults
    from cdray.shell.driver import run_sweep

    d = micro_cfg_dict | {"grid": {"k": [], "strategy": ["no_contrast"], "q": [0.0, 0.5], "seed": [42]},
                          "train": {**micro_cfg_dict["train"], "checkpoint_words": [300, 600, 10**9]}}
    cfg = C.from_dict(d)
    graph = build_graph(cfg)
    store = Store.at(cfg.store.root)
    baseline = next(c for c in graph.cells if c.arm == "BASELINE")
    hold = faults.hold(store.dir("train", graph.good.key), "train-step-rank0", 6)
    seen = {}

    def release() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not store.is_done("evaluate", baseline.evaluate.key):
            time.sleep(0.2)
        seen["baseline_done_while_good_held"] = store.is_done("evaluate", baseline.evaluate.key) and hold.exists()
        seen["good_unfinished"] = not store.is_done("train", graph.good.key)
        hold.unlink(missing_ok=True)

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    rows = run_sweep(cfg, echo=lambda line: None)
    releaser.join(5)
    assert seen == {"baseline_done_while_good_held": True, "good_unfinished": True}
    assert {r["arm"] for r in rows} == {"BASELINE", "NO-CONTRAST"}
    # the arm's best checkpoint exported: plain transformers loads it, with the sweep's tokenizer,
    # and computes what cdray's own loader of the store's files computes
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdray.data.tokenizer import load_tokenizer
    from cdray.models.llama import load_model
    from cdray.sweep.export import export

    out = export(cfg, "NO-CONTRAST", 42, "best", tmp_path / "exported")
    cell = next(c for c in graph.cells if c.arm == "NO-CONTRAST")
    best = store.manifest("evaluate", cell.evaluate.key)["stats"]["best_step"]
    assert f"step {best}" in (out / "README.md").read_text() and cell.train.key in (out / "README.md").read_text()
    tok = AutoTokenizer.from_pretrained(out)
    text = "the cat saw a dog near the river"
    ids = tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == load_tokenizer(store.dir("tokenizer", graph.tokenizer.key))(text)["input_ids"]
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        ours = load_model(store.dir("train", cell.train.key) / f"step_{best:06d}" / "model")(ids).logits
    assert torch.equal(theirs, ours)

    # its word-count checkpoints: one folder each, named as the BabyLM pipeline names revisions
    # (10**9 words is never reached: no folder); each loads, and is the milestone of its step
    from cdray.models.words import folder_name

    words = export(cfg, "NO-CONTRAST", 42, "words", tmp_path / "by-words")
    stats = store.manifest("train", cell.train.key)["stats"]
    assert sorted(p.name for p in words.iterdir()) == sorted(folder_name(w) for w in (300, 600))
    for w in (300, 600):
        at = stats["word_checkpoints"][str(w)]
        seen = next(m["words"] for m in stats["milestones"] if m["step"] == at)
        assert seen >= w and f"{w:,} words" in (words / folder_name(w) / "README.md").read_text()
        with torch.no_grad():
            theirs = AutoModelForCausalLM.from_pretrained(words / folder_name(w))(ids).logits
            ours = load_model(store.dir("train", cell.train.key) / f"step_{at:06d}" / "model")(ids).logits
        assert torch.equal(theirs, ours)
