"""cdray's BabyLM per-item log-likelihoods, pinned against a plain transformers forward pass of the
stored checkpoint and the stored tokenizer as anyone would load them (AutoModelForCausalLM,
AutoTokenizer: the tokenizer adds <s> itself), with no cdray evaluation code in between."""
from __future__ import annotations

import gzip
import math
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BABYLM_SAMPLE, synthetic_document

from cdray.eval import babylm

pytestmark = pytest.mark.skipif(not BABYLM_SAMPLE.is_dir(), reason=f"no BabyLM sample at {BABYLM_SAMPLE}")
ITEMS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved micro checkpoint , its
    tokenizer, and two item files per task of the shared sample."""
    from cdray.config import ModelConfig, TokenizerConfig
    from cdray.data.tokenizer import train_tokenizer
    from cdray.models.llama import build_model, save_model

    tmp = tmp_path_factory.mktemp("conformance")
    rng = random.Random(0)
    texts = [synthetic_document(rng, 20) for _ in range(100)]
    # the items' own words too, so scores do not all go through <unk>
    for task in ("blimp", "ewok", "entity_tracking", "wug"):
        for path in babylm.item_files(BABYLM_SAMPLE, task)[:2]:
            texts += [" ".join(str(v) for v in row.values()) for row in babylm.read_rows(path, ITEMS)]
    pq.write_table(pa.table({"text": texts}), tmp / "train.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=400), tmp / "train.parquet", tmp / "tokenizer")
    save_model(build_model(ModelConfig(layers=2, hidden=32, heads=2, ffn=64, context=512), 400, 0), tmp / "model")
    data = tmp / "babylm"
    for task, folder in babylm.FOLDERS.items():
        (data / folder).mkdir(parents=True)
        for path in babylm.item_files(BABYLM_SAMPLE, task)[:2]:
            shutil.copy(path, data / folder / path.name)
    return tmp


@pytest.fixture(scope="module")
def plain(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(world / "model")).eval()
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))

    def score(context: str, continuation: str) -> float:
        """sum log p(continuation | context) over whole-string tokens: tok adds <s> itself."""
        ctx = tok(context).input_ids
        whole = tok(context + continuation).input_ids
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0, :-1].float(), dim=-1)
        return float(sum(logp[i - 1, whole[i]] for i in range(len(ctx), len(whole))))

    def sentence(text: str) -> float:
        ids = tok(text).input_ids  # <s> sentence
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
        return float(sum(logp[i - 1, ids[i]] for i in range(1, len(ids))))

    return {"score": score, "sentence": sentence, "tok": tok, "model": model}


def _evaluate(world, task, **kw):
    from cdray.eval.tasks import evaluate_task

    out = world / f"out_{task}_{kw.get('reading_mode', 'exact')}"
    summary = evaluate_task(world / "model", world / "tokenizer", world / "babylm", task, out,
                            max_items=ITEMS if task != "reading" else 40, batch_size=4, **kw)
    return summary, out / "items"


@pytest.mark.parametrize("task", ["blimp", "supplement", "ewok", "entity_tracking", "wug"])
def test_multiple_choice_log_likelihoods_equal_a_plain_forward(world, plain, task):
    summary, items = _evaluate(world, task)
    checked = 0
    for path in babylm.item_files(world / "babylm", task):
        recs = babylm.read_items(items / f"{babylm.file_stem(path)}.jsonl")
        for row, rec in zip(babylm.read_rows(path, ITEMS), recs):
            if task in ("blimp", "supplement"):
                want = [plain["sentence"](row["sentence_good"]), plain["sentence"](row["sentence_bad"])]
            elif task == "wug":
                want = [plain["sentence"](s) for s in row["sentences"].split("\t")]
            elif task == "ewok":
                want = [plain["score"](row["Context1"], " " + t) for t in (row["Target1"], row["Target2"])]
            else:
                ctx = row["input_prefix"]
                want = [plain["score"](ctx.rstrip(), ctx[len(ctx.rstrip()):] + o) for o in row["options"]]
            assert rec["lls"] == pytest.approx(want, abs=2e-4), (task, row)
            checked += 1
    assert checked >= 4
    assert set(summary["truncated"].values()) == {0.0}


def test_items_longer_than_the_context_are_counted(world):
    """lm-eval cuts a request longer than the model's context from the left (the official
    pipeline feeds it whole): the share of such items is reported per file."""
    from cdray.eval.prefix_lm import PrefixSharingHFLM
    from cdray.eval.tasks import evaluate_task, hf_lm

    full = hf_lm(world / "model", world / "tokenizer", batch_size=4)
    short = PrefixSharingHFLM(pretrained=full.model, tokenizer=full.tokenizer, batch_size=4,
                              add_bos_token=True, max_length=64)
    summary = evaluate_task(world / "model", world / "tokenizer", world / "babylm", "entity_tracking",
                            world / "out_cut", max_items=ITEMS, batch_size=4, lm=short)
    assert set(summary["truncated"].values()) == {1.0}  # every item is 100-400 tokens
    recs = babylm.read_items(next((world / "out_cut" / "items").glob("*.jsonl")))
    assert all(r["truncated"] for r in recs)


def test_reading_log_probabilities_equal_a_plain_forward(world, plain):
    _, items = _evaluate(world, "reading")
    path = babylm.item_files(world / "babylm", "reading")[0]
    docs = babylm.reading_docs(path, 40)
    recs = babylm.read_items(items / f"{babylm.file_stem(path)}.jsonl")
    for d, rec in zip(docs, recs):
        assert rec["pred"] == pytest.approx(plain["score"](d["item"], " " + d["word"]), abs=2e-4)
        if d["prev_item"]:
            assert rec["prev_pred"] == pytest.approx(plain["score"](d["prev_item"], " " + d["prev_word"]), abs=2e-4)
        else:
            assert rec["prev_pred"] is None


def test_babylm2025_reading_mode_is_the_official_surprisal(world, plain):
    """One-token words: the word's log-probability. Longer words: the official pipeline's product
    of each later piece's first token re-encoded as a word start after the decoded earlier ones."""
    tok, model = plain["tok"], plain["model"]

    def p(sentence, word):
        with torch.inference_mode():
            logits = model(**tok(sentence, return_tensors="pt")).logits[:, -1, :]
        return torch.softmax(logits[0], dim=-1)[tok(word, add_special_tokens=False).input_ids[0]].item()

    _, items = _evaluate(world, "reading", reading_mode="babylm2025")
    path = babylm.item_files(world / "babylm", "reading")[0]
    recs = babylm.read_items(items / f"{babylm.file_stem(path)}.jsonl")
    multi = 0
    for d, rec in zip(babylm.reading_docs(path, 40), recs):
        target = tok(d["word"], add_special_tokens=False).input_ids
        probs, sentence = [p(d["item"], d["word"])], d["item"]
        if len(target) > 1:
            multi += 1
            sentence += tok.decode(target[0])
            for t in target[1:]:
                probs.append(p(sentence, tok.decode(t)))
                sentence += tok.decode(t)
        assert rec["pred"] == pytest.approx(sum(math.log(x) for x in probs), abs=1e-4)
    assert multi > 0


def test_an_empty_reading_item_is_the_context_none(tmp_path):
    """The official pipeline reads an empty item cell as the context "None" (pandas' NaN filled)."""
    head = "item,word,prev_item,prev_word,RTfirstfix\n"
    with gzip.open(tmp_path / "r.csv.gz", "wt") as f:
        f.write(head + ",of,,,100\nThe cat,sat,The,cat,120\n")
    docs = babylm.reading_docs(tmp_path / "r.csv.gz")
    assert [d["item"] for d in docs] == ["None", "The cat"]
    assert [d["prev_item"] for d in docs] == ["", "The"]


def test_every_task_of_a_checkpoint_is_scored_with_one_model_load(world, micro_cfg_dict, tmp_path, monkeypatch):
    """build_babylm_group: one process, one load of the checkpoint for all its tasks, the same
    records as scoring each task on its own."""
    from cdray import config as C
    from cdray.dag.builders import build_babylm_group
    from cdray.dag.graph import build_graph
    from cdray.dag.store import Store
    from cdray.eval import tasks as lmeval_tasks

    cfg = C.from_dict(micro_cfg_dict | {"store": {"root": str(tmp_path / "store")},
                                        "eval": {"babylm_dir": str(world / "babylm"), "max_items": ITEMS,
                                                 "tasks": ["blimp", "wug", "reading"], "steps": [12]}})
    store = Store.at(cfg.store.root)
    cell = build_graph(cfg).cells[0]
    copy = lambda src, dst: (shutil.copytree(src, dst, dirs_exist_ok=True), {})[1]  # noqa: E731
    for node, fill in ((cell.train, lambda out: copy(world / "model", out / "step_000012" / "model")),
                       (cell.babylm[0].input("tokenizer"), lambda out: copy(world / "tokenizer", out))):
        store.get_or_build(node.stage, node.key, fill, config=node.config, inputs=node.input_keys)
    alone, _ = _evaluate(world, "wug")
    loads = []
    real = lmeval_tasks.hf_lm
    monkeypatch.setattr(lmeval_tasks, "hf_lm", lambda *a, **k: loads.append(a) or real(*a, **k))
    manifests = build_babylm_group(list(cell.babylm), cfg, store)
    assert len(loads) == 1 and [m["stats"]["task"] for m in manifests] == ["blimp", "wug", "reading"]
    assert manifests[1]["stats"]["scores"] == pytest.approx(alone["scores"], nan_ok=True)
    again = build_babylm_group(list(cell.babylm), cfg, store)  # all built: nothing is loaded
    assert [m["key"] for m in again] == [m["key"] for m in manifests] and len(loads) == 1
