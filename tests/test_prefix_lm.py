"""The prefix-sharing HFLM gives the stock HFLM's log-likelihoods and greedy flags, request by request."""
from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BABYLM_SAMPLE, synthetic_document


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer model with a 64-token window, its tokenizer, and both HFLMs over them."""
    from lm_eval.models.huggingface import HFLM

    from cdray.config import ModelConfig, TokenizerConfig
    from cdray.data.tokenizer import train_tokenizer
    from cdray.eval.prefix_lm import PrefixSharingHFLM
    from cdray.eval.tasks import eval_tokenizer, hf_lm
    from cdray.models.llama import build_model, save_model

    tmp = tmp_path_factory.mktemp("prefix_lm")
    rng = random.Random(0)
    pq.write_table(pa.table({"text": [synthetic_document(rng, 20) for _ in range(100)]}), tmp / "train.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=300), tmp / "train.parquet", tmp / "tokenizer")
    shape = ModelConfig(layers=2, hidden=32, heads=2, ffn=64, context=64)
    save_model(build_model(shape, 300, 0), tmp / "model")
    ours = hf_lm(tmp / "model", tmp / "tokenizer", batch_size=4)
    assert isinstance(ours, PrefixSharingHFLM)
    stock = HFLM(pretrained=ours.model, tokenizer=eval_tokenizer(tmp / "tokenizer"), batch_size=4,
                 add_bos_token=True, max_length=64)
    return {"ours": ours, "stock": stock, "dir": tmp}


def greedy_continuation(model, ctx: list[int], n: int) -> list[int]:
    ids = list(ctx)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(ctx):]


def test_prefix_sharing_equals_stock_hflm_request_by_request(tiny, monkeypatch):
    from cdray.eval.prefix_lm import split_request

    rng = random.Random(1)
    tok = lambda n: [rng.randrange(4, 300) for _ in range(n)]  # noqa: E731
    ctx_a, ctx_b, ctx_long = [1] + tok(9), [1] + tok(4), [1] + tok(70)
    reqs = []
    # shared contexts of different lengths, options of different lengths (one-token ones too)
    reqs += [(ctx_a, tok(n)) for n in (1, 3, 2, 5, 1)]
    reqs += [(ctx_b, tok(n)) for n in (2, 4, 1)]
    # BOS-only context (BLiMP), a context used once, a duplicate request
    reqs += [([1], tok(n)) for n in (6, 3, 1)] + [([1] + tok(7), tok(3)), (ctx_b, reqs[5][1])]
    # longer than the 64-token window: the stock HFLM cuts from the left, per continuation length
    reqs += [(ctx_long, tok(n)) for n in (2, 2, 5)] + [(ctx_a, tok(60))]
    # continuations the model itself would pick: is_greedy must come out True
    reqs += [(ctx_a, greedy_continuation(tiny["ours"].model, ctx_a, 3)),
             (ctx_long[:12], greedy_continuation(tiny["ours"].model, ctx_long[:12], 1))]
    requests = [((None, None), c, k) for c, k in reqs]
    stock = tiny["stock"]._loglikelihood_tokens(requests, disable_tqdm=True)
    assert [g for _, g in stock[-2:]] == [True, True]
    lm = tiny["ours"]
    # the default rule, and every shared prefix through the cache, in small and large batches
    for rule in (lm.worth_sharing, lambda prefix_len, n, longest: n > 1):
        for bs in (4, 64):
            monkeypatch.setattr(lm, "batch_size_per_gpu", bs)
            monkeypatch.setattr(lm, "worth_sharing", rule)
            ours = lm._loglikelihood_tokens(requests, disable_tqdm=True)
            assert len(ours) == len(stock) == len(reqs)
            for (ll, greedy), (ll0, greedy0) in zip(ours, stock):
                assert ll == pytest.approx(ll0, abs=1e-4) and greedy == greedy0
    # the truncated requests really were cut, and differently per continuation length
    assert len(split_request(ctx_long, [5, 6], 64)[0]) != len(split_request(ctx_long, [5] * 5, 64)[0])


def test_split_request_is_the_stock_input():
    from cdray.eval.prefix_lm import split_request

    for ctx, cont, window in (([1, 2, 3], [4, 5], 10), ([1], [7], 10), ([1, 2, 3, 4, 5, 6], [7, 8, 9], 5)):
        prefix, query = split_request(ctx, cont, window)
        assert list(prefix) + query == (ctx + cont)[-(window + 1):][:-1]
        assert len(query) == len(cont) and query[1:] == cont[:-1]


@pytest.mark.skipif(not BABYLM_SAMPLE.is_dir(), reason=f"BabyLM 2025 sample data not found at {BABYLM_SAMPLE}")
@pytest.mark.parametrize("task", ["entity_tracking", "ewok"])
def test_babylm_task_records_equal_stock_hflm(tiny, task, tmp_path):
    from cdray.eval.tasks import evaluate_task

    recs = {}
    for which in ("ours", "stock"):
        evaluate_task(None, None, BABYLM_SAMPLE, task, tmp_path / which, max_items=4, batch_size=4,
                      lm=tiny[which])
        recs[which] = sorted((tmp_path / which / "items").glob("*.jsonl"))
    import json

    n = 0
    for a, b in zip(recs["ours"], recs["stock"], strict=True):
        for ra, rb in zip(a.read_text().splitlines(), b.read_text().splitlines(), strict=True):
            ra, rb = json.loads(ra), json.loads(rb)
            assert ra["lls"] == pytest.approx(rb["lls"], abs=1e-4) and ra["correct"] == rb["correct"]
            n += 1
    assert n >= 4


def test_encodings_are_hflms_made_once(tiny):
    ours, stock = tiny["ours"], tiny["stock"]
    texts = ["the cat saw a dog", " the red ball", "Box 0 contains the hat and", ""]
    for text in texts:
        for special in (None, False, True):
            assert ours.tok_encode(text, add_special_tokens=special) == stock.tok_encode(text, add_special_tokens=special)
        assert ours.tok_encode(text, left_truncate_len=2) == stock.tok_encode(text, left_truncate_len=2)
    ids = ours.tok_encode(texts[0])
    ids.append(-1)  # a caller's list is its own: the memo keeps the tokenizer's ids
    assert ours.tok_encode(texts[0]) == stock.tok_encode(texts[0])
    assert ours._encode_pair("the cat saw", " a dog") == stock._encode_pair("the cat saw", " a dog")
    ours.forget_encodings()
    assert "_encodings" not in ours.__dict__ and ours.tok_encode(texts[0]) == stock.tok_encode(texts[0])


def test_a_request_without_context_is_cut_only_past_the_window(tiny):
    """lm-eval runs `<s>` + a context-free continuation of n tokens whole while 1 + n <= window + 1:
    cut_to_context counts it so (it counted a second `<s>` and flagged n = window as cut)."""
    from cdray.eval.tasks import cut_to_context

    lm, rng = tiny["ours"], random.Random(3)
    found = {}
    while len(found) < 2:
        words = synthetic_document(rng, 12).split()
        for k in range(1, len(words) + 1):
            n = len(lm.tok_encode(" ".join(words[:k]), add_special_tokens=False))
            if n in (lm.max_length, lm.max_length + 1):
                found.setdefault(n, " ".join(words[:k]))
    for n, text in found.items():
        assert cut_to_context(lm, [{"doc_id": 0, "arguments": [("", text)]}]) == {0: n > lm.max_length}
