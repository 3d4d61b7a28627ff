"""BPE tokenizer training, HF-compatible save/load, and flat BOS/EOS-wrapped token streams."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from cdray.common.files import replacing
from cdray.common.special_tokens import BOS, BOS_ID, EOS, EOS_ID, PAD, SPECIALS, UNK
from cdray.config import TokenizerConfig

VERSION = 1

_MAX_LENGTH = 1 << 30  # documents are streamed and cut into blocks later, never truncated here
_READ_BATCH = 1000


def _iter_texts(parquet: Path, *, keep_empty: bool, batch: int = _READ_BATCH) -> Iterator[list[str]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(parquet)
    for rb in pf.iter_batches(columns=["text"], batch_size=batch):
        texts = [t or "" for t in rb.column(0).to_pylist()]
        yield texts if keep_empty else [t for t in texts if t]


def train_tokenizer(cfg: TokenizerConfig, train_parquet: Path, out_dir: Path) -> dict:
    """Train a SentencePiece-style BPE (NFKC, Metaspace) on train texts; save it for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # the SentencePieceBPETokenizer recipe, built from public parts
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.normalizer = normalizers.NFKC()
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # the alphabet counts towards the vocabulary; cap it so tiny vocabularies stay within budget
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=list(SPECIALS),
        limit_alphabet=max(1, min(1000, cfg.vocab_size - len(SPECIALS))), show_progress=False)
    bpe.train_from_iterator(_iter_texts(Path(train_parquet), keep_empty=False), trainer=trainer)
    for i, tok in enumerate(SPECIALS):
        if bpe.token_to_id(tok) != i:
            raise RuntimeError(f"special token {tok!r} got id {bpe.token_to_id(tok)}, expected {i}")
    # encode as training saw every document: after <s>. Whoever loads the saved tokenizer (lm-eval,
    # the official BabyLM pipeline, a plain AutoTokenizer) then scores text as the model read it;
    # cdray's own streams encode without special tokens and wrap documents themselves
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, BOS_ID)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        pad_token=PAD, model_max_length=_MAX_LENGTH, clean_up_tokenization_spaces=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    _write_portable_config(out_dir)
    return {"vocab_size": bpe.get_vocab_size(with_added_tokens=True)}


def _write_portable_config(out_dir: Path) -> None:
    """Name the generic fast class and write special_tokens_map.json so older loaders agree."""
    cfg_path = out_dir / "tokenizer_config.json"
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5 writes its own alias
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    specials = {"unk_token": UNK, "bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n",
                                                     encoding="utf-8")


def load_tokenizer(path: Path):
    """The saved tokenizer as a PreTrainedTokenizerFast (no remote code is ever run)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    tok = PreTrainedTokenizerFast.from_pretrained(str(path), trust_remote_code=False)
    for attr, value in (("unk_token", UNK), ("bos_token", BOS), ("eos_token", EOS), ("pad_token", PAD)):
        if getattr(tok, attr) is None:
            setattr(tok, attr, value)
    return tok


def load_decoder(path: Path):
    """The saved tokenizer for decode_texts: the tokenizers library's own Tokenizer where that
    decodes as load_tokenizer's would (its config turns transformers' space clean-up off), which
    spares a generation actor importing transformers; else load_tokenizer's."""
    from tokenizers import Tokenizer

    path = Path(path)
    config = path / "tokenizer_config.json"
    if not (path / "tokenizer.json").is_file() or not config.is_file():
        return load_tokenizer(path)
    if json.loads(config.read_text(encoding="utf-8")).get("clean_up_tokenization_spaces") is not False:
        return load_tokenizer(path)
    return Tokenizer.from_file(str(path / "tokenizer.json"))


def encode_texts(tokenizer, texts: list[str], batch: int = 1000) -> list[list[int]]:
    """Token ids of each text, without special tokens, via the Rust backend's batch encoder."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(e.ids for e in backend.encode_batch(list(texts[i:i + batch]), add_special_tokens=False))
    return out


def decode_texts(tokenizer, sequences: list[list[int]]) -> list[str]:
    """Texts of token id lists, special tokens skipped: the tokenizer's batch_decode, through the
    Rust backend's batch decoder when that is the same (9x faster on a generated shard: no
    per-row Python call, no space clean-up to apply)."""
    if not hasattr(tokenizer, "batch_decode"):  # the tokenizers library's own (load_decoder)
        return tokenizer.decode_batch([list(s) for s in sequences], skip_special_tokens=True)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return tokenizer.batch_decode(sequences, skip_special_tokens=True)
    return backend.decode_batch([list(s) for s in sequences], skip_special_tokens=True)


def stream_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < (1 << 16) else np.uint32)


def write_token_stream(token_lists: Iterable[list[int]], path: Path, *, bos: int = BOS_ID, eos: int = EOS_ID,
                       vocab_size: int | None = None) -> dict:
    """Write one flat 1-D .npy where every document is `bos ... eos`; dtype from the vocabulary.

    Without `vocab_size` the dtype follows the largest id seen. Tokens are spooled to a temporary
    file first so memory stays flat however large the stream is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    docs, tokens, top = 0, 0, max(bos, eos)
    fd, spool = tempfile.mkstemp(dir=path.parent, suffix=".spool")
    try:
        with os.fdopen(fd, "wb") as f:
            for ids in token_lists:
                arr = np.asarray([bos, *ids, eos], dtype=np.int64)
                if arr.min() < 0:
                    raise ValueError(f"negative token id in document {docs}")
                top = max(top, int(arr.max()))
                f.write(arr.astype(np.uint32).tobytes())
                docs += 1
                tokens += arr.size
        dtype = stream_dtype(vocab_size if vocab_size is not None else top + 1)
        if top >= (1 << 16) and dtype == np.uint16:
            raise ValueError(f"token id {top} does not fit uint16 (vocab_size={vocab_size})")
        _spool_to_npy(Path(spool), path, tokens, dtype)
    finally:
        Path(spool).unlink(missing_ok=True)
    return {"documents": docs, "tokens": tokens}


def _spool_to_npy(spool: Path, path: Path, n: int, dtype: np.dtype) -> None:
    with replacing(path) as tmp:  # readers never see a half-written stream
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n,))
        if n:
            src = np.memmap(spool, dtype=np.uint32, mode="r", shape=(n,))
            step = 1 << 24
            for i in range(0, n, step):
                out[i:i + step] = src[i:i + step]
            del src
        out.flush()
        del out


def tokenize_parquet(tokenizer_dir: Path, parquet: Path, out_path: Path) -> dict:
    """Encode the `text` column of a parquet file into a wrapped token stream at out_path."""
    tok = load_tokenizer(tokenizer_dir)

    def lists() -> Iterator[list[int]]:
        for texts in _iter_texts(Path(parquet), keep_empty=True):
            yield from encode_texts(tok, texts)

    return write_token_stream(lists(), out_path, bos=tok.bos_token_id, eos=tok.eos_token_id,
                              vocab_size=len(tok))


def read_token_stream(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


__all__ = ["VERSION", "SPECIALS", "train_tokenizer", "load_tokenizer", "encode_texts",
           "write_token_stream", "tokenize_parquet", "read_token_stream", "stream_dtype"]
