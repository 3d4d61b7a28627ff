"""Evaluation in bf16 (eval.precision) through the very code path a GPU runs, here on CPU: its
perplexity and BabyLM item scores stay within a measured tolerance of fp32's, and fp32 is untouched."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BABYLM_SAMPLE, synthetic_document

needs_data = pytest.mark.skipif(not BABYLM_SAMPLE.is_dir(), reason=f"BabyLM 2025 sample data not found at {BABYLM_SAMPLE}")

# Tolerances, measured here (docs/evaluation.md): over three runs of these tests (briefly trained
# 2 x 64 models, 64 to 637 BabyLM items of all six tasks, both reading modes) bf16 moved the mean
# perplexity loss by at most 2.6e-4 nats and a candidate's log-likelihood by at most 0.33 nats
# (median 0.03-0.04; at most 1.4% of its size), and flipped no item's choice. The bounds keep a
# margin over those.
PPL_LOSS_TOL = 5e-3  # nats of mean next-token loss
LL_ABS_TOL = 0.5  # nats of a candidate's summed log-likelihood (or a reading word's log-prob)
LL_REL_TOL = 0.025  # of its size
FLIPPED_TOL = 0.02  # share of multiple-choice items whose choice flips


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2 x 64 model trained for 50 steps on synthetic English (peaked, as real checkpoints are,
    where a random one is near-uniform and hides rounding), its tokenizer and eval tokens."""
    from cdray.config import ModelConfig, TokenizerConfig
    from cdray.data.tokenizer import load_tokenizer, train_tokenizer
    from cdray.models.llama import build_model, save_model

    tmp = tmp_path_factory.mktemp("precision")
    rng = random.Random(0)
    docs = [synthetic_document(rng, 12) for _ in range(300)]
    pq.write_table(pa.table({"text": docs}), tmp / "train.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=400), tmp / "train.parquet", tmp / "tokenizer")
    tok = load_tokenizer(tmp / "tokenizer")
    stream = np.concatenate([np.asarray(tok(d).input_ids + [tok.eos_token_id]) for d in docs])
    torch.manual_seed(0)
    model = build_model(ModelConfig(layers=2, hidden=64, heads=2, ffn=128, context=128), 400, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train, held = stream[: int(len(stream) * 0.9)], stream[int(len(stream) * 0.9):]
    gen = np.random.default_rng(0)
    for _ in range(50):
        starts = gen.integers(0, len(train) - 65, 16)
        x = torch.from_numpy(np.stack([train[s:s + 65] for s in starts]).astype(np.int64))
        loss = torch.nn.functional.cross_entropy(model(input_ids=x[:, :-1]).logits.reshape(-1, 400),
                                                 x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(model, tmp / "model")
    np.save(tmp / "eval.npy", held.astype(np.uint16))
    return tmp


def test_bf16_perplexity_is_fp32_within_tolerance(trained):
    from cdray.eval.perplexity import eval_blocks, perplexity
    from cdray.models.llama import load_model

    model = load_model(trained / "model")
    blocks = eval_blocks(np.load(trained / "eval.npy"), 64, None)
    fp32 = perplexity(model, blocks, 8, "cpu")
    bf16 = perplexity(model, blocks, 8, "cpu", precision="bf16")
    assert fp32["tokens"] == bf16["tokens"] and fp32["loss"] != bf16["loss"]  # it did run in bf16
    assert abs(bf16["loss"] - fp32["loss"]) < PPL_LOSS_TOL
    assert math.isclose(bf16["ppl"], fp32["ppl"], rel_tol=PPL_LOSS_TOL * 1.01)
    # the default is fp32 and is the path every existing number was measured on
    assert perplexity(model, blocks, 8, "cpu") == fp32


def _items(out):
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted((out / "items").glob("*.jsonl"))}


@pytest.fixture(scope="module")
def items_dir(tmp_path_factory):
    """One item file of every task of the BabyLM sample (BLiMP's 67 set-ups would dominate)."""
    import shutil

    from cdray.eval import babylm

    out = tmp_path_factory.mktemp("babylm")
    for task, folder in babylm.FOLDERS.items():
        (out / folder).mkdir()
        for path in babylm.item_files(BABYLM_SAMPLE, task)[:1]:
            shutil.copy(path, out / folder / path.name)
    return out


@needs_data
def test_bf16_babylm_item_scores_are_fp32_within_tolerance(trained, items_dir, tmp_path):
    from cdray.eval.tasks import evaluate_task, hf_lm

    lms = {p: hf_lm(trained / "model", trained / "tokenizer", 16, precision=p) for p in ("fp32", "bf16")}
    assert lms["bf16"].mixed_precision_dtype is torch.bfloat16 and lms["fp32"].mixed_precision_dtype is None
    gaps, rel, flips, n = [], [], 0, 0
    # every way a request is scored: whole (blimp, ewok), from a shared prefix's cache (entity
    # tracking), a reading word; supplement and wug take blimp's path
    for task in ("blimp", "ewok", "entity_tracking", "reading"):
        recs = {}
        for p, lm in lms.items():
            evaluate_task(None, None, items_dir, task, tmp_path / p / task, max_items=16, batch_size=16, lm=lm)
            recs[p] = _items(tmp_path / p / task)
        for name in recs["fp32"]:
            for a, b in zip(recs["fp32"][name], recs["bf16"][name], strict=True):
                n += 1
                if task == "reading":
                    pairs = [(a["pred"], b["pred"])] + ([(a["prev_pred"], b["prev_pred"])] if a["prev_pred"] is not None else [])
                else:
                    pairs = list(zip(a["lls"], b["lls"], strict=True))
                    flips += a["correct"] != b["correct"]
                for x, y in pairs:
                    gaps.append(abs(x - y))
                    rel.append(abs(x - y) / max(abs(x), 1e-9))
    # the official reading mode, through its own scorer
    for p in ("fp32", "bf16"):
        evaluate_task(trained / "model", trained / "tokenizer", items_dir, "reading", tmp_path / p / "official",
                      max_items=24, batch_size=16, reading_mode="babylm2025", precision=p)
    off = {p: _items(tmp_path / p / "official") for p in ("fp32", "bf16")}
    for a, b in zip(*[next(iter(off[p].values())) for p in ("fp32", "bf16")], strict=True):
        gaps.append(abs(a["pred"] - b["pred"]))
        rel.append(abs(a["pred"] - b["pred"]) / abs(a["pred"]))
    assert max(gaps) > 0  # bf16 did run
    assert max(gaps) < LL_ABS_TOL and max(rel) < LL_REL_TOL and flips <= FLIPPED_TOL * n
