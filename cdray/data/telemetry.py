"""Telemetry of generated corpora (diversity, repetition, lengths) and n-gram decontamination."""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from cdray.common.redaction import mask_uri
from cdray.data import folders

DIVERSITY_WORDS = 100_000  # the paper's diversity score reads the first 100K words
REPETITION_N = 4
_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits, inner apostrophes kept): the unit of every n-gram here."""
    return _WORD.findall(text.lower())


def _ngrams(ws: list, n: int) -> list[tuple]:
    return list(zip(*(ws[j:] for j in range(n))))


def distinct_n(docs: list[list[str]], n: int) -> float:
    """Unique / total word n-grams pooled over docs (n-grams never cross a document)."""
    total, uniq = 0, set()
    for ws in docs:
        grams = _ngrams(ws, n)
        total += len(grams)
        uniq.update(grams)
    return len(uniq) / total if total else 0.0


def first_words(docs: Iterable[list[str]], limit: int = DIVERSITY_WORDS) -> list[list[str]]:
    """Leading documents up to `limit` words in all (the last one cut)."""
    out, left = [], limit
    for ws in docs:
        if left <= 0:
            break
        out.append(ws[:left])
        left -= len(out[-1])
    return out


def repetition_rate(sequences: Iterable[list[int]], n: int = REPETITION_N) -> float:
    """Share of token n-grams that repeat an earlier n-gram of the same sequence (pooled): each
    n-gram past its sequence's first occurrence is a repeat, so a sequence's repeats are its
    n-grams minus its distinct ones."""
    total = repeated = 0
    for seq in sequences:
        grams = _ngrams(list(seq), n)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


def length_histogram(lengths: np.ndarray, max_len: int, bins: int = 10) -> dict:
    counts, edges = np.histogram(np.asarray(lengths), bins=bins, range=(0, max(1, max_len)))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def text_stats(continuations: list[str]) -> dict:
    """distinct-2/3/4 and the paper's diversity (product of the three) over the first 100K words."""
    docs = first_words((words(t) for t in continuations), DIVERSITY_WORDS)
    out = {f"distinct_{n}": distinct_n(docs, n) for n in (2, 3, 4)}
    out["diversity"] = out["distinct_2"] * out["distinct_3"] * out["distinct_4"]
    out["stats_words"] = sum(len(d) for d in docs)
    return out


def row_stats(new_tokens: np.ndarray, eos: np.ndarray, head: np.ndarray, nll_expert: np.ndarray,
              nll_amateur: np.ndarray, continuations: list[list[int]], max_new_tokens: int) -> dict:
    """Token-weighted means of per-row telemetry, EOS rate, repetition rate, length histogram."""
    w = np.asarray(new_tokens, dtype=np.float64)
    n = float(w.sum())

    def wmean(x):
        x = np.asarray(x, dtype=np.float64)
        ok = np.isfinite(x)
        return float((x[ok] * w[ok]).sum() / w[ok].sum()) if n and ok.any() else float("nan")

    rows = len(w)
    return {
        "eos_rate": float(np.mean(eos)) if rows else 0.0,
        "head_size_mean": wmean(head),
        "expert_nll_mean": wmean(nll_expert),
        "amateur_nll_mean": wmean(nll_amateur),
        "repetition_rate": repetition_rate(continuations),
        "length_hist": length_histogram(w, max_new_tokens),
    }


# ---------------------------------------------------------------- decontamination


_P1, _P2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)


class NgramIndex:
    """Hashes of every word n-gram of a reference text collection (eval split, eval items).

    Stored as one sorted uint64 array (8 bytes per n-gram), so a 5M-word eval split costs ~40 MB.
    Hash collisions (about n_grams / 2^64) are ignored.
    """

    def __init__(self, n: int):
        self.n = n
        self._vocab: dict[str, int] = {}
        self._chunks: list[np.ndarray] = []
        self._hashes: Optional[np.ndarray] = None

    def _ids(self, ws: list[str]) -> np.ndarray:
        v = self._vocab
        return np.fromiter((v.setdefault(w, len(v) + 1) for w in ws), dtype=np.uint64, count=len(ws))

    def _hash(self, ids: np.ndarray) -> np.ndarray:
        m = len(ids) - self.n + 1
        if m <= 0:
            return np.zeros(0, dtype=np.uint64)
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(self.n):
                h = h * _P1 + (ids[j:j + m] ^ _P2)
        return h

    def add(self, text: str) -> None:
        self._chunks.append(self._hash(self._ids(words(text))))
        self._hashes = None

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def hashes(self) -> np.ndarray:
        if self._hashes is None:
            allh = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.uint64)
            self._hashes = np.unique(allh)
            self._chunks = [self._hashes]
        return self._hashes

    def overlaps(self, text: str) -> bool:
        """Whether any word n-gram of `text` occurs in the reference collection."""
        ws = words(text)
        if len(ws) < self.n or len(self.hashes) == 0:
            return False
        # unknown words cannot be part of a reference n-gram: map them to 0 (never a reference id)
        ids = np.fromiter((self._vocab.get(w, 0) for w in ws), dtype=np.uint64, count=len(ws))
        h = self._hash(ids)
        pos = np.searchsorted(self.hashes, h)
        pos = np.minimum(pos, len(self.hashes) - 1)
        return bool((self.hashes[pos] == h).any())


def _item_strings(obj) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _item_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _item_strings(v)


_REFERENCE_SUFFIXES = (".jsonl", ".json", ".txt", ".tsv")


def reference_file(rel: str) -> bool:
    """Whether the file at this relative name is an evaluation item file (*.jsonl, *.json,
    *.txt, *.tsv, optionally .gz)."""
    name = rel.rsplit("/", 1)[-1]
    return (name[:-3] if name.endswith(".gz") else name).endswith(_REFERENCE_SUFFIXES)


def reference_files(items_dir: Path) -> list[Path]:
    """The evaluation item files under items_dir (reference_file), sorted."""
    items_dir = Path(items_dir)
    return [path for path in sorted(items_dir.rglob("*"))
            if path.is_file() and reference_file(path.relative_to(items_dir).as_posix())]


def reference_folder(items_dir: str | Path, cache: Optional[Path] = None) -> Path:
    """items_dir as a local folder: itself, or the mirror of a URI in cache."""
    return folders.mirror(str(items_dir), reference_file, cache)


def reference_digest(items_dir: str | Path, cache: Optional[Path] = None) -> str:
    """sha256 over the relative names and contents of items_dir's reference files: what a
    decontaminated corpus depends on, wherever the folder lives, a URI included ("missing" if
    it is absent); with a cache, remembered by the files' stats."""
    if not folders.exists(str(items_dir)):
        return "missing"
    local = reference_folder(items_dir, cache)
    return folders.digest(local, reference_file, kind="references", compute=_reference_digest, cache=cache)


def _reference_digest(items_dir: Path) -> str:
    h = hashlib.sha256()
    for path in reference_files(items_dir):
        h.update(path.relative_to(items_dir).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def reference_texts(eval_parquet: Optional[Path], items_dir: Optional[str | Path],
                    cache: Optional[Path] = None) -> Iterable[str]:
    """Texts of the eval split (parquet `text` column) and every string of the evaluation item
    files under items_dir (reference_files; a URI is mirrored into cache first)."""
    if eval_parquet is not None and Path(eval_parquet).is_file():
        import pyarrow.parquet as pq

        yield from pq.read_table(eval_parquet, columns=["text"]).column("text").to_pylist()
    if items_dir is None:
        return
    if not folders.exists(str(items_dir)):
        raise ValueError(f"{mask_uri(str(items_dir))}: evaluation items directory not found")
    items_dir = reference_folder(items_dir, cache)
    for path in reference_files(items_dir):
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            if name.endswith(".jsonl"):
                for line in f:
                    line = line.strip()
                    if line:
                        yield from _item_strings(json.loads(line))
            elif name.endswith(".json"):
                yield from _item_strings(json.load(f))
            else:
                yield from f


def contamination_stats(corpus_parquet: Path, tokenizer_dir: Path, items_dir: str, n: int) -> dict:
    """The share of a generated corpus's rows whose continuation shares a word n-gram with the
    evaluation items under items_dir (what generation flags against the eval split, for the
    BabyLM items)."""
    import pyarrow.parquet as pq

    from cdray.data.tokenizer import decode_texts, load_decoder

    index = NgramIndex(n)
    for text in reference_texts(None, items_dir):
        index.add(text)
    table = pq.read_table(corpus_parquet, columns=["tokens", "new_tokens"])
    tokens, new = table.column("tokens").to_pylist(), table.column("new_tokens").to_pylist()
    texts = decode_texts(load_decoder(Path(tokenizer_dir)), [t[len(t) - k:] for t, k in zip(tokens, new)])
    flagged = sum(index.overlaps(t) for t in texts)
    return {"rows": len(texts), "rows_sharing_ngram": int(flagged), "n": n,
            "eval_items_contamination_rate": flagged / len(texts) if texts else 0.0}
