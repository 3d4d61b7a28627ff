"""Tests of tokenizer training, HF loading, encoding and flat token streams."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdray.config import CorpusConfig, SourceConfig, TokenizerConfig
from cdray.data.corpus import build_corpus
from cdray.data.tokenizer import (
    SPECIALS,
    decode_texts,
    encode_texts,
    load_decoder,
    load_tokenizer,
    read_token_stream,
    tokenize_parquet,
    train_tokenizer,
    write_token_stream,
)

ASSETS = Path(__file__).parent / "assets"
VOCAB = 300
PUNCTUATION = ('Wait, what? "Yes!" she said; (it was 1984): the dog\'s bowl - empty.')


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    sources = (SourceConfig(kind="local", path=str(ASSETS / "local")),
               SourceConfig(kind="babylm", path=str(ASSETS / "babylm")))
    build_corpus(CorpusConfig(sources=sources, eval_fraction=0.2, seed_fraction=0.2,
                              chunk_min_words=10, chunk_max_words=30), out, out)
    return out


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    # the fixture stories lack most punctuation; one extra row brings it into the alphabet
    table = pq.read_table(corpus / "train.parquet")
    extra = pa.table({"text": [PUNCTUATION]})
    pq.write_table(pa.concat_tables([table.select(["text"]), extra]), out.parent / "tok_train.parquet")
    info = train_tokenizer(TokenizerConfig(vocab_size=VOCAB, min_frequency=2),
                           out.parent / "tok_train.parquet", out)
    assert 4 < info["vocab_size"] <= VOCAB
    return out


def test_autotokenizer_loads_with_specials(tok_dir):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tok_dir))
    assert [auto.convert_tokens_to_ids(t) for t in SPECIALS] == [0, 1, 2, 3]
    assert (auto.unk_token_id, auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (0, 1, 2, 3)
    assert len(auto) <= VOCAB
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tok_dir / "special_tokens_map.json").is_file()

    ours = load_tokenizer(tok_dir)
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == SPECIALS[1:] + SPECIALS[:1]
    assert ours.model_max_length > 10**6


def test_the_saved_tokenizer_encodes_as_training_read_documents(tok_dir, corpus, tmp_path):
    """Any loader (AutoTokenizer, AutoProcessor: the official BabyLM pipeline's) puts <s> first,
    once; cdray's own streams wrap each document in <s> ... </s> exactly once."""
    from transformers import AutoProcessor, AutoTokenizer

    text = "The dog ran."
    plain = encode_texts(load_tokenizer(tok_dir), [text])[0]
    assert 1 not in plain
    for loader in (AutoTokenizer, AutoProcessor):
        tok = loader.from_pretrained(str(tok_dir))
        assert tok(text).input_ids == [1, *plain]
        assert tok(text, add_special_tokens=False).input_ids == plain
    tokenize_parquet(tok_dir, corpus / "train.parquet", tmp_path / "t.npy")
    arr = read_token_stream(tmp_path / "t.npy")
    docs = pq.read_metadata(corpus / "train.parquet").num_rows
    assert int((arr == 1).sum()) == int((arr == 2).sum()) == docs
    assert arr[0] == 1 and arr[1] != 1


def test_round_trip_english(tok_dir):
    tok = load_tokenizer(tok_dir)
    texts = ["The old sailor walked to the river before dinner.",
             "A small child dreamed of a letter from home.\nHer brother visited the station!",
             "The farmer, the baker and the queen met near the bridge in the rain.",
             "Wait; is it 1984? \"Yes,\" said the (tired) dog's owner: it's late!"]
    ids = encode_texts(tok, texts, batch=2)
    assert [tok.decode(x) for x in ids] == texts
    assert all(SPECIALS.index("<s>") not in x and 2 not in x for x in ids)  # no specials added
    assert ids == [tok.encode(t, add_special_tokens=False) for t in texts]


def test_decode_texts_is_batch_decode(tok_dir):
    tok = load_tokenizer(tok_dir)
    g = np.random.default_rng(0)
    # arbitrary ids, as a sampler emits them: specials anywhere, bytes split across tokens
    rows = [g.integers(0, len(tok), size=int(n)).tolist() for n in g.integers(0, 60, size=50)]
    rows.append([1, 2, 3, 0])
    assert decode_texts(tok, rows) == tok.batch_decode(rows, skip_special_tokens=True)
    # a generation actor's tokenizer: the tokenizers library's own, decoding the same strings
    light = load_decoder(tok_dir)
    assert not hasattr(light, "batch_decode")
    assert decode_texts(light, rows) == tok.batch_decode(rows, skip_special_tokens=True)


def test_load_decoder_keeps_transformers_where_it_cleans_up_spaces(tok_dir, tmp_path):
    import shutil

    other = tmp_path / "tok"
    shutil.copytree(tok_dir, other)
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**cfg, "clean_up_tokenization_spaces": True}))
    tok = load_decoder(other)
    assert hasattr(tok, "batch_decode") and tok.clean_up_tokenization_spaces
    assert decode_texts(tok, [[5, 6, 7]]) == tok.batch_decode([[5, 6, 7]], skip_special_tokens=True)


def test_token_stream_wraps_documents(tmp_path):
    lists = [[5, 6, 7], [], [8]]
    info = write_token_stream(lists, tmp_path / "s.npy")
    arr = read_token_stream(tmp_path / "s.npy")
    assert info == {"documents": 3, "tokens": 10}
    assert arr.dtype == np.uint16 and arr.ndim == 1
    assert arr.tolist() == [1, 5, 6, 7, 2, 1, 2, 1, 8, 2]
    big = write_token_stream([[70000]], tmp_path / "b.npy", vocab_size=70001)
    assert big["tokens"] == 3 and read_token_stream(tmp_path / "b.npy").dtype == np.uint32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy", "s.npy"]  # no spool, no temporary


def test_tokenize_parquet_matches_encode(tok_dir, corpus, tmp_path):
    info = tokenize_parquet(tok_dir, corpus / "train.parquet", tmp_path / "train.npy")
    arr = read_token_stream(tmp_path / "train.npy")
    texts = pq.read_table(corpus / "train.parquet").column("text").to_pylist()
    expected = []
    for ids in encode_texts(load_tokenizer(tok_dir), texts):
        expected += [1, *ids, 2]
    assert info == {"documents": len(texts), "tokens": len(expected)}
    assert arr.tolist() == expected
    assert int(arr.max()) < VOCAB


def test_tokenize_keeps_empty_documents(tok_dir, tmp_path):
    pq.write_table(pa.table({"text": ["hello there", ""]}), tmp_path / "x.parquet")
    info = tokenize_parquet(tok_dir, tmp_path / "x.parquet", tmp_path / "x.npy")
    assert info["documents"] == 2
    assert read_token_stream(tmp_path / "x.npy").tolist()[-2:] == [1, 2]


def test_training_is_deterministic(corpus, tok_dir, tmp_path):
    train_tokenizer(TokenizerConfig(vocab_size=VOCAB), tok_dir.parent / "tok_train.parquet", tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
