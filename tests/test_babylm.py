"""BabyLM evaluation through lm-eval on a trained micro checkpoint, checked against plain transformers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import BABYLM_SAMPLE

from cdray import config as C
from cdray.eval import babylm

needs_data = pytest.mark.skipif(not BABYLM_SAMPLE.is_dir(),
                                reason=f"BabyLM 2025 sample data not found at {BABYLM_SAMPLE}")


def independent_score(model, ids_ctx: list[int], ids_cont: list[int]) -> float:
    """Sum of log p(continuation tokens | <s> context) with plain transformers."""
    ids = torch.tensor([[1, *ids_ctx, *ids_cont]])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], dim=-1)
    targets = ids[0, 1:]
    token_lp = logp.gather(-1, targets[:, None])[:, 0]
    return float(token_lp[len(ids_ctx):].sum())


def test_babylm_plan_says_why_when_data_is_missing(micro_cfg_dict, tmp_path):
    from cdray.dag.graph import build_graph

    graph = build_graph(C.from_dict(micro_cfg_dict))
    assert graph.babylm_note == "eval.babylm_dir is not set" and not graph.cells[0].babylm
    d = micro_cfg_dict | {"eval": {"babylm_dir": str(tmp_path / "nowhere")}}
    graph = build_graph(C.from_dict(d))
    assert "does not exist" in graph.babylm_note and "fetch-eval" in graph.babylm_note


def test_a_babylm_folder_in_a_bucket_digests_and_keys_as_the_local_one(micro_cfg_dict, tmp_path, s3_server):
    """eval.babylm_dir may be a URI: task digests, the decontamination items' digest and every key
    equal the local folder's; a node mirrors the task's files and checks them before scoring."""
    import json
    import uuid

    from conftest import s3_uri, upload_folder

    from cdray.dag.builders import babylm_task_dir
    from cdray.dag.run_config import execution_of
    from cdray.dag.graph import build_graph
    from cdray.dag.remote import RemoteRoot
    from cdray.data.telemetry import reference_digest

    local = tmp_path / "eval"
    for folder, name, sentence in (("blimp_filtered", "anaphor", "The cat saw herself."),
                                   ("ewok_filtered", "social", "The girl gave the boy a book.")):
        (local / folder).mkdir(parents=True)
        (local / folder / f"{name}.jsonl").write_text(json.dumps({"sentence_good": sentence}) + "\n")
    (local / "notes.txt").write_text("a reference text, read by decontamination only\n")
    endpoint, bucket = s3_server
    uri = upload_folder(local, s3_uri(endpoint, bucket, f"eval-{uuid.uuid4().hex[:8]}"))
    cache = tmp_path / "cache"
    for task in ("blimp", "ewok"):
        assert babylm.data_digest(uri, task, cache) == babylm.data_digest(local, task)
    assert reference_digest(uri, cache) == reference_digest(local) != "missing"
    assert babylm.missing_reason(uri, ["blimp", "ewok"]) is None
    assert "has no files for wug" in babylm.missing_reason(uri, ["wug"])

    def planned(where):
        cfg = C.from_dict(micro_cfg_dict | {"eval": {"babylm_dir": where, "tasks": ["blimp", "ewok"], "max_items": 2}})
        return cfg, build_graph(cfg)

    (cfg, graph), (_, here) = planned(uri), planned(str(local))
    assert sorted((n.stage, n.key) for n in graph.nodes()) == sorted((n.stage, n.key) for n in here.nodes())
    assert graph.contamination and graph.cells[0].babylm
    node = graph.cells[0].babylm[0]
    mirrored = babylm_task_dir(execution_of(cfg), node.config, tmp_path / "node-cache")
    assert babylm.item_files(mirrored, node.config["task"]) and mirrored.startswith(str(tmp_path / "node-cache"))
    RemoteRoot(uri).write_bytes("blimp_filtered/anaphor.jsonl", b'{"sentence_good": "The cat saw itself."}\n')
    with pytest.raises(ValueError, match="its blimp files changed since the sweep was planned"):
        babylm_task_dir(execution_of(cfg), next(n for n in graph.cells[0].babylm if n.config["task"] == "blimp").config,
                        tmp_path / "node-cache")


@needs_data
def test_babylm_keys_follow_tasks_items_steps_and_data(micro_cfg_dict):
    from cdray.dag.graph import build_graph

    base = micro_cfg_dict | {"eval": {"babylm_dir": str(BABYLM_SAMPLE), "max_items": 5}}
    g = build_graph(C.from_dict(base))
    nodes = g.cells[0].babylm
    assert len(nodes) == 6 * 3  # six tasks (reading gives two scores) x three milestones
    keys = {n.key for n in nodes}
    ppl_key = g.cells[0].evaluate.key
    for change in ({"max_items": 6}, {"tasks": ["blimp"]}, {"steps": [4]}):
        g2 = build_graph(C.from_dict(base | {"eval": base["eval"] | change}))
        assert {n.key for n in g2.cells[0].babylm} - keys or len(g2.cells[0].babylm) < len(nodes)
        assert g2.cells[0].evaluate.key == ppl_key  # BabyLM settings never touch perplexity
    with pytest.raises(C.ConfigError, match="eval.steps"):
        C.from_dict(base | {"eval": base["eval"] | {"steps": [5]}})
    with pytest.raises(C.ConfigError, match="eval.tasks"):
        C.from_dict(base | {"eval": base["eval"] | {"tasks": ["glue"]}})


@pytest.mark.slow
@needs_data
def test_micro_sweep_scores_seven_tasks_item_for_item(micro_cfg_dict, ray_session, tmp_path, capsys):
    from transformers import AutoTokenizer

    from cdray.dag.graph import build_graph
    from cdray.dag.store import Store
    from cdray.models.llama import load_model
    from cdray.shell.driver import run_sweep
    from cdray.sweep.report import write_report

    d = micro_cfg_dict | {"eval": {"max_blocks": 8, "babylm_dir": str(BABYLM_SAMPLE), "max_items": 30,
                                   "steps": [8, 12]},
                          "grid": {"k": [4], "strategy": ["no_contrast"], "q": [0.0, 0.5], "seed": [42]}}
    cfg = C.from_dict(d)
    run_sweep(cfg, use_tune=False, echo=print)
    store = Store.at(cfg.store.root)
    graph = build_graph(cfg)
    cell = next(c for c in graph.cells if c.arm == "BASELINE")
    assert all(store.is_done(n.stage, n.key) for c in graph.cells for n in c.babylm)

    scores = {}
    for node in cell.babylm:
        if node.config["step"] == 12:
            scores.update(store.manifest(node.stage, node.key)["stats"]["scores"])
    assert set(babylm.SCORES) <= set(scores)
    assert all(math.isfinite(scores[s]) for s in babylm.SCORES), scores

    # BLiMP and EWoK, item for item, against sums of token log-probs with plain transformers
    train_dir = store.dir("train", cell.train.key)
    model = load_model(train_dir / "step_000012" / "model").eval()
    tok = AutoTokenizer.from_pretrained(str(store.dir("tokenizer", cell.train.input("real").input("tokenizer").key)))
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    for task in ("blimp", "ewok"):
        node = next(n for n in cell.babylm if n.config["task"] == task and n.config["step"] == 12)
        files = babylm.item_files(BABYLM_SAMPLE, task)
        checked = 0
        for path in (files[:3] if task == "blimp" else files[:2]):
            items = babylm.read_items(store.dir(node.stage, node.key) / "items" / f"{babylm.file_stem(path)}.jsonl")
            for row, rec in zip(babylm.read_rows(path, 30), items):
                if task == "blimp":
                    s = [independent_score(model, [], enc(row["sentence_good"])),
                         independent_score(model, [], enc(row["sentence_bad"]))]
                else:
                    ctx = enc(row["Context1"])
                    s = [independent_score(model, ctx, enc(row["Context1"] + " " + t)[len(ctx):])
                         for t in (row["Target1"], row["Target2"])]
                assert rec["lls"] == pytest.approx(s, abs=1e-3)
                assert rec["correct"] == float(int(np.argmax(s)) == 0)
                checked += 1
        assert checked >= 60

    capsys.readouterr()
    report = write_report([cfg], B=50)
    text = report.read_text()
    out = capsys.readouterr().out
    assert "| NO-CONTRAST |" in text and "BLiMP" in text and "Eye tracking" in text and "μΔREL" in out
    # a 128-token context cuts entity-tracking items (100-400 tokens): the report says how many
    assert "Items longer than the model's context" in text and "ET " in text and "WUG ρ" in text
    # one panel per measured score; no q curve (one q) and no truncation sweep (one setting)
    assert (report.parent / "arms.png").is_file()
    assert not (report.parent / "mixing.png").exists() and not (report.parent / "truncation.png").exists()


def test_builtin_lm_eval_tasks_are_nodes_without_babylm_data(micro_cfg_dict):
    from cdray.dag.graph import build_graph

    d = micro_cfg_dict | {"eval": {"lm_eval_tasks": ["blimp", "hellaswag"], "steps": [12]}}
    nodes = build_graph(C.from_dict(d)).cells[0].babylm
    assert [n.config["task"] for n in nodes] == ["lm_eval:blimp", "lm_eval:hellaswag"]
    assert all(n.config["step"] == 12 and n.has_input("tokenizer") for n in nodes)
