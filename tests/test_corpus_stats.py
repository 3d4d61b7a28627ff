"""Tests of cdray.data.telemetry: distinct-n, diversity, repetition, histograms, n-gram decontamination."""
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdray.data.telemetry import (
    NgramIndex,
    distinct_n,
    first_words,
    length_histogram,
    reference_texts,
    repetition_rate,
    row_stats,
    text_stats,
    words,
)


def test_words_and_distinct_n():
    assert words("The cat's hat, THE cat!") == ["the", "cat's", "hat", "the", "cat"]
    docs = [["a", "b", "a", "b"], ["a", "b"]]
    # bigrams: (a,b) (b,a) (a,b) | (a,b): 2 unique of 4
    assert distinct_n(docs, 2) == pytest.approx(2 / 4)
    # trigrams never cross documents: (a,b,a) (b,a,b)
    assert distinct_n(docs, 3) == pytest.approx(1.0)
    assert distinct_n([["a"]], 2) == 0.0


def test_text_stats_diversity_is_product_over_first_words():
    s = text_stats(["a b a b", "a b"])
    assert s["distinct_2"] == pytest.approx(0.5) and s["distinct_3"] == pytest.approx(1.0)
    assert s["distinct_4"] == pytest.approx(1.0)
    assert s["diversity"] == pytest.approx(0.5) and s["stats_words"] == 6
    assert first_words([["a"] * 3, ["b"] * 3, ["c"]], limit=4) == [["a"] * 3, ["b"]]


def test_repetition_rate_and_histogram():
    # 4-grams of [1,2,3,4,1,2,3,4]: 5, of which (1,2,3,4) repeats once
    assert repetition_rate([[1, 2, 3, 4, 1, 2, 3, 4]]) == pytest.approx(1 / 5)
    # repeats across rows do not count
    assert repetition_rate([[1, 2, 3, 4], [1, 2, 3, 4]]) == 0.0
    # against counting each n-gram in turn, on sequences short, empty and repetitive
    g = np.random.default_rng(1)
    rows = [g.integers(0, 4, size=int(k)).tolist() for k in g.integers(0, 40, size=30)]
    for n in (1, 2, 4):
        total = repeated = 0
        for seq in rows:
            seen = set()
            for i in range(len(seq) - n + 1):
                total += 1
                repeated += tuple(seq[i:i + n]) in seen
                seen.add(tuple(seq[i:i + n]))
        assert repetition_rate(rows, n) == repeated / total
    h = length_histogram(np.array([0, 5, 10, 10]), 10, bins=2)
    assert h == {"edges": [0.0, 5.0, 10.0], "counts": [1, 3]}


def test_row_stats_are_token_weighted():
    s = row_stats(np.array([1, 3]), np.array([True, False]), np.array([2.0, 6.0]),
                  np.array([1.0, 2.0]), np.array([np.nan, np.nan]), [[1], [1, 2, 3]], 4)
    assert s["eos_rate"] == 0.5
    assert s["head_size_mean"] == pytest.approx((2 + 18) / 4)
    assert s["expert_nll_mean"] == pytest.approx((1 + 6) / 4)
    assert np.isnan(s["amateur_nll_mean"])


def test_ngram_index_overlap(tmp_path):
    ref = " ".join(f"w{i}" for i in range(20))
    idx = NgramIndex(13)
    idx.add(ref)
    assert len(idx) == 8
    assert idx.overlaps("xx " + " ".join(f"W{i}" for i in range(3, 16)) + " yy")  # case-insensitive
    assert not idx.overlaps(" ".join(f"w{i}" for i in range(3, 15)))  # only 12 words
    assert not idx.overlaps(" ".join(f"w{i}" for i in range(3, 15)) + " zz")
    # reference texts: eval parquet + jsonl(.gz) items
    pq.write_table(pa.table({"text": ["one two"]}), tmp_path / "eval.parquet")
    items = tmp_path / "items"
    items.mkdir()
    with gzip.open(items / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"sentence_good": "good one", "meta": {"x": "nested"}}) + "\n")
    (items / "b.txt").write_text("plain line\n")
    (items / "skip.bin").write_text("ignored")
    got = list(reference_texts(tmp_path / "eval.parquet", items))
    assert got[0] == "one two" and "good one" in got and "nested" in got
    assert any("plain line" in t for t in got) and "ignored" not in got
    with pytest.raises(ValueError, match="nope"):
        list(reference_texts(None, tmp_path / "nope"))


def test_contamination_stats_reads_continuations_against_the_items(tmp_path):
    """The contamination stage: a row counts when its continuation (not its prompt) shares an
    n-gram with an evaluation item."""
    from test_generation import WORDS, save_tokenizer

    from cdray.data.telemetry import contamination_stats

    tok = save_tokenizer(tmp_path / "tok")
    ids = {w: i + 4 for i, w in enumerate(WORDS)}
    items = tmp_path / "items" / "blimp"
    items.mkdir(parents=True)
    seq = " ".join(WORDS[:4])
    with gzip.open(items / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"sentence_good": seq}) + "\n")
    prompt = [1, ids[WORDS[0]], ids[WORDS[1]], ids[WORDS[2]], ids[WORDS[3]]]
    clean = [ids[WORDS[5]], ids[WORDS[6]], ids[WORDS[7]], ids[WORDS[8]]]
    hit = [ids[w] for w in WORDS[:4]]
    rows = [prompt + clean, prompt[:1] + hit, prompt + hit[:3]]
    pq.write_table(pa.table({"tokens": rows, "new_tokens": [4, 4, 3]}), tmp_path / "corpus.parquet")
    stats = contamination_stats(tmp_path / "corpus.parquet", tok, str(tmp_path / "items"), 4)
    assert stats == {"rows": 3, "rows_sharing_ngram": 1, "n": 4,
                     "eval_items_contamination_rate": pytest.approx(1 / 3)}
