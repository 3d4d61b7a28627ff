"""Words seen by a run (cdray.models.words): counted from the tokens exactly as `len(text.split())`
counts the text, step by step from the blocks each step reads, and the word-count checkpoints the
training loop saves from them."""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cdray.common.special_tokens import BOS_ID
from cdray.config import ModelConfig, TokenizerConfig, TrainConfig
from cdray.data.tokenizer import tokenize_parquet, train_tokenizer
from cdray.models.train_data import SYNTHETIC, MixedBatches, TrainJob
from cdray.models.training import train
from cdray.models.words import BABYLM_WORDS, WordStarts, checkpoint_steps, folder_name, schedule, words_by_step

torch.set_num_threads(1)

TEXTS = [
    "The cat sat on the mat.",
    "  Two  spaces,\tthen a tab; and\na newline\n\nand a blank line.  ",
    "Unicode: naïve café, Zürich — 'quoted' words (in brackets) and don't-split-hyphens!",
    "word",
    "Numbers 12 345 and 6.78 count; so do e-mail@addresses.org and URLs like http://x.y/z?q=1.",
    "Mixed\nlines\nof\none\nword\neach",
] * 6 + ["The quick brown fox jumps over the lazy dog " * 7]


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """A tokenizer trained on TEXTS and TEXTS tokenized by the path the sweep's tokens stage takes."""
    d = tmp_path_factory.mktemp("words")
    pq.write_table(pa.table({"text": TEXTS}), d / "train.parquet")
    train_tokenizer(TokenizerConfig(vocab_size=200), d / "train.parquet", d / "tok")
    tokenize_parquet(d / "tok", d / "train.parquet", d / "tokens.npy")
    return d


def test_the_words_of_every_document_are_counted_as_text_split_counts_them(streams):
    tokens = np.load(streams / "tokens.npy")
    per_token = WordStarts(streams / "tok").per_block(tokens, 1)
    docs = np.split(np.arange(len(tokens)), np.flatnonzero(tokens == BOS_ID)[1:])
    assert len(docs) == len(TEXTS)
    assert [int(per_token[d].sum()) for d in docs] == [len(t.split()) for t in TEXTS]


def test_blocks_split_words_where_their_first_token_is(streams):
    tokens = np.load(streams / "tokens.npy")
    counter = WordStarts(streams / "tok")
    for seq_len in (1, 2, 7, 16):
        blocks = counter.per_block(tokens, seq_len)
        assert len(blocks) == len(tokens) // seq_len
        whole = counter.per_block(tokens[: len(blocks) * seq_len], 1).sum()
        assert blocks.sum() == whole


def test_words_by_step_sums_the_blocks_each_step_reads(streams):
    recipe = TrainConfig(steps=9, batch_size=4, seq_len=8, precision="fp32", checkpoint_every=3, eval_blocks=1)
    job = TrainJob(model=ModelConfig(layers=1, hidden=16, heads=1, ffn=32, context=16), vocab_size=200,
                   recipe=recipe, seed=3, q=0.5, milestones=(3, 6, 9), real_tokens=str(streams / "tokens.npy"),
                   eval_tokens=str(streams / "tokens.npy"), synthetic_tokens=str(streams / "tokens.npy"))
    data = MixedBatches(job)
    seen = words_by_step(data, streams / "tok")
    blocks = {s: WordStarts(streams / "tok").per_block(st.tokens, 8) for s, st in ((0, data.real), (SYNTHETIC, data.syn))}
    by_hand = np.cumsum([0] + [sum(int(blocks[s][b]) for s, b in data.global_layout(t)) for t in range(9)])
    assert seen.tolist() == by_hand.tolist() and seen[-1] > 0


def test_checkpoint_steps_are_the_first_steps_that_reach_each_count():
    seen = np.array([0, 5, 9, 9, 20, 31])
    assert checkpoint_steps((1, 9, 10, 31, 32), seen) == {1: 1, 9: 2, 10: 4, 31: 5}
    assert schedule("babylm") == BABYLM_WORDS and BABYLM_WORDS[:3] == (10**6, 2 * 10**6, 3 * 10**6)
    assert BABYLM_WORDS[8:11] == (9 * 10**6, 10 * 10**6, 20 * 10**6) and BABYLM_WORDS[-1] == 10**9
    assert len(BABYLM_WORDS) == len(set(BABYLM_WORDS)) == 9 + 9 + 10
    assert [folder_name(w) for w in (10**6, 20 * 10**6, 10**9, 1500)] == ["chck_1M", "chck_20M", "chck_1000M",
                                                                          "chck_0.0015M"]


def test_the_loop_saves_a_milestone_at_each_word_count_it_reaches(streams, tmp_path):
    recipe = TrainConfig(steps=8, batch_size=2, seq_len=8, lr=3e-3, warmup_steps=1, precision="fp32",
                         checkpoint_every=8, eval_blocks=1)
    base = dict(model=ModelConfig(layers=1, hidden=16, heads=1, ffn=32, context=16), vocab_size=200, seed=3, q=0.0,
                milestones=(8,), real_tokens=str(streams / "tokens.npy"), eval_tokens=str(streams / "tokens.npy"))
    seen = words_by_step(MixedBatches(TrainJob(recipe=recipe, **base)), streams / "tok")
    targets = (int(seen[2]), int(seen[5]) + 1, int(seen[-1]) + 10**6)  # step 2, step 6 or so, never
    words = TrainJob(recipe=TrainConfig(**{**recipe.__dict__, "checkpoint_words": targets}),
                     tokenizer_dir=str(streams / "tok"), **base)
    summary = train(words, tmp_path / "run")
    want = checkpoint_steps(targets, seen)
    assert set(want) == set(targets[:2]) and want[targets[0]] == 2
    assert summary["word_checkpoints"] == {str(w): s for w, s in want.items()}
    assert [m["step"] for m in summary["milestones"]] == sorted({*want.values(), 8})
    assert all(m["words"] == seen[m["step"]] for m in summary["milestones"]) and summary["words"] == seen[-1]
    records = [json.loads(x) for x in (tmp_path / "run" / "milestones.jsonl").read_text().splitlines()]
    assert [r["words"] for r in records] == [int(seen[s]) for s in sorted({*want.values(), 8})]

    # the same run without word-count checkpoints: the same weights at the final step
    plain = train(TrainJob(recipe=recipe, **base), tmp_path / "plain")
    assert "words" not in plain and plain["final_eval_loss"] == summary["final_eval_loss"]


def test_word_checkpoints_re_key_the_students_runs_only(micro_cfg_dict):
    from cdray import config as C
    from cdray.dag.graph import build_graph

    plain = build_graph(C.from_dict(micro_cfg_dict))
    words = build_graph(C.from_dict(micro_cfg_dict | {"train": {**micro_cfg_dict["train"], "checkpoint_words": "babylm"}}))
    assert plain.good.key == words.good.key
    assert {n: g.key for n, g in plain.generations.items()} == {n: g.key for n, g in words.generations.items()}
    assert all(a.train.key != b.train.key for a, b in zip(plain.cells, words.cells))
    assert all(c.train.has_input("tokenizer") for c in words.cells)
    assert not any(c.train.has_input("tokenizer") for c in plain.cells)


@pytest.mark.parametrize("value, says", [([600, 300], "must increase"), ([0], "must be >= 1"),
                                         ("every", "is not one of ['babylm']")])
def test_bad_word_counts_are_refused_naming_the_field(micro_cfg_dict, value, says):
    from cdray import config as C

    with pytest.raises(C.ConfigError, match=re.escape(says)) as e:
        C.from_dict(micro_cfg_dict | {"train": {**micro_cfg_dict["train"], "checkpoint_words": value}})
    assert e.value.field == "train.checkpoint_words"


def test_an_id_past_the_tokenizers_vocabulary_is_empty_text(streams):
    """A model's vocabulary may be larger than its tokenizer's, and a sampler may draw those ids (a
    synthetic corpus keeps the drawn ids): they decode to nothing, so they start no word and do not
    separate the tokens around them."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(streams / "tok" / "tokenizer.json"))
    counter = WordStarts(streams / "tok")
    past = tok.get_vocab_size() + 5
    a, b, space_b = tok.token_to_id("a"), tok.token_to_id("b"), tok.token_to_id("\u2581b")
    assert None not in (a, b, space_b)
    assert counter.per_block(np.array([BOS_ID, a, past, b]), 1).sum() == 1  # "ab": one word
    assert counter.per_block(np.array([BOS_ID, a, past, space_b]), 1).sum() == 2  # "a b"
    assert counter.per_block(np.array([past, past, b, past]), 1).tolist() == [0, 0, 1, 0]
