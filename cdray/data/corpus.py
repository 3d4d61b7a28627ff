"""The corpus stage: budgeted source mix, deterministic train/eval/seed splits, seed chunks, stats.

Word count everywhere is `len(text.split())`: maximal runs of non-whitespace characters.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cdray.common.files import temporary_path
from cdray.config import CorpusConfig, SourceConfig
from cdray.data.sources import CorpusError, Document, iter_documents, packages_of

VERSION = 1

SPLITS = ("train", "eval", "seed")
SCHEMA = pa.schema([("source", pa.string()), ("doc_id", pa.string()), ("text", pa.string()),
                    ("words", pa.int32())])


def word_count(text: str) -> int:
    """Words of a text: `len(text.split())`."""
    return len(text.split())


def source_rng(split_seed: int, label: str) -> np.random.Generator:
    """A generator fixed by (split_seed, source label); Python's hash() is salted per process."""
    label_key = int.from_bytes(hashlib.sha256(label.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([split_seed, label_key])


def source_targets(cfg: CorpusConfig) -> list[Optional[int]]:
    """Word budget of each source: its weight's share of total_words, capped by max_words."""
    total_weight = sum(s.weight for s in cfg.sources)
    targets = []
    for s in cfg.sources:
        target = None
        if cfg.total_words is not None:
            target = int(round(cfg.total_words * s.weight / total_weight))
        if s.max_words is not None:
            target = s.max_words if target is None else min(target, s.max_words)
        targets.append(target)
    return targets


def take_budget(docs: list[Document], words: list[int], order: np.ndarray,
                target: Optional[int]) -> list[int]:
    """Indices of docs in shuffled order until `target` words are reached (docs are never cut)."""
    if target is None:
        return [int(i) for i in order]
    chosen, total = [], 0
    for i in order:
        if total >= target:
            break
        chosen.append(int(i))
        total += words[i]
    return chosen


def _fraction_count(fraction: float, n: int) -> int:
    # at least one doc whenever a positive fraction is asked for and some doc stays behind
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, int(round(fraction * n))))


def split_source(cfg: CorpusConfig, docs: list[Document], chosen: list[int]) -> dict[str, list[int]]:
    """Assign chosen docs (already in shuffled order) to train / eval / seed."""
    own_eval = any(d.split == "eval" for d in docs)
    if own_eval:
        evals = [i for i in chosen if docs[i].split == "eval"]
        rest = [i for i in chosen if docs[i].split != "eval"]
    else:
        n_eval = _fraction_count(cfg.eval_fraction, len(chosen))
        evals, rest = chosen[:n_eval], chosen[n_eval:]
    n_seed = _fraction_count(cfg.seed_fraction, len(rest))
    return {"train": rest[n_seed:], "eval": evals, "seed": rest[:n_seed]}


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def chunk_words(text: str, lo: int, hi: int) -> list[str]:
    """Re-pack a text into chunks of lo..hi words, cut after a sentence end where one is in reach.

    Chunks keep the original spacing. A final remainder shorter than `lo` joins the previous chunk
    when that stays <= hi, else it is dropped.
    """
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    bounds: list[tuple[int, int]] = []  # [start word, end word) per chunk
    start = 0
    while start < len(spans):
        end = min(start + hi, len(spans))
        if end - start >= lo and end < len(spans):
            for j in range(start + lo, end + 1):  # first sentence end at or after lo words
                word = text[spans[j - 1][0]:spans[j - 1][1]]
                if _SENTENCE_END.search(word):
                    end = j
                    break
        bounds.append((start, end))
        start = end
    if bounds and bounds[-1][1] - bounds[-1][0] < lo:
        last = bounds.pop()
        if bounds and last[1] - bounds[-1][0] <= hi:
            bounds[-1] = (bounds[-1][0], last[1])
    return [text[spans[a][0]:spans[b - 1][1]] for a, b in bounds]


@dataclass
class _SplitWriter:
    """Streams rows of one split into a parquet file written under a temporary name."""

    path: Path
    writer: Optional[pq.ParquetWriter] = None
    rows: int = 0
    words: int = 0
    doc_ids: set = field(default_factory=set)

    @property
    def tmp(self) -> Path:
        return temporary_path(self.path)

    def write(self, rows: list[tuple[str, str, str, int]]) -> None:
        if not rows:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, SCHEMA, compression="zstd")
        cols = list(zip(*rows))
        table = pa.Table.from_arrays([pa.array(c, type=t) for c, t in zip(cols, SCHEMA.types)],
                                     schema=SCHEMA)
        self.writer.write_table(table)
        self.rows += len(rows)
        self.words += sum(cols[3])

    def close(self) -> None:
        if self.writer is None:  # an empty split still gets a valid file
            pq.write_table(SCHEMA.empty_table(), self.tmp, compression="zstd")
        else:
            self.writer.close()

    def discard(self) -> None:
        if self.writer is not None and self.writer.is_open:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)

    def publish(self) -> None:
        os.replace(self.tmp, self.path)


def _source_documents(src: SourceConfig, cfg: CorpusConfig, download_dir: Path):
    docs, words = [], []
    for doc in iter_documents(src, download_dir):
        n = word_count(doc.text)
        if n >= cfg.min_doc_words:
            docs.append(doc)
            words.append(n)
    if not docs:
        raise CorpusError(f"source {src.label!r}: no documents with >= {cfg.min_doc_words} words")
    return docs, words


def _build_source(src: SourceConfig, target: Optional[int], cfg: CorpusConfig, download_dir: Path,
                  writers: dict[str, _SplitWriter]) -> dict:
    docs, words = _source_documents(src, cfg, download_dir)
    order = source_rng(cfg.split_seed, src.label).permutation(len(docs))
    chosen = take_budget(docs, words, order, target)
    parts = split_source(cfg, docs, chosen)
    stats: dict = {}
    for split in ("train", "eval"):
        rows = [(docs[i].source, docs[i].doc_id, docs[i].text, words[i]) for i in parts[split]]
        writers[split].write(rows)
        stats[split] = {"docs": len(rows), "words": sum(r[3] for r in rows)}
    seed_rows, unchunked = [], 0
    for i in parts["seed"]:
        chunks = chunk_words(docs[i].text, cfg.chunk_min_words, cfg.chunk_max_words)
        unchunked += not chunks
        seed_rows += [(docs[i].source, f"{docs[i].doc_id}#{n}", c, word_count(c))
                      for n, c in enumerate(chunks)]
    writers["seed"].write(seed_rows)
    stats["seed"] = {"docs": len(parts["seed"]) - unchunked, "words": sum(r[3] for r in seed_rows),
                     "chunks": len(seed_rows), "unchunked_docs": unchunked}
    taken = sum(words[i] for i in chosen)
    stats["target_words"] = target
    stats["available_words"] = sum(words)
    stats["taken_words"] = taken
    stats["short"] = target is not None and taken < target
    return stats


def build_corpus(cfg: CorpusConfig, out_dir: Path, download_dir: Path) -> dict:
    """Write train/eval/seed parquet files (source, doc_id, text, words) into out_dir; return stats."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {s: _SplitWriter(out_dir / f"{s}.parquet") for s in SPLITS}
    sources: dict[str, dict] = {}
    try:
        for src, target in zip(cfg.sources, source_targets(cfg)):
            sources[src.label] = _build_source(src, target, cfg, Path(download_dir), writers)
        for w in writers.values():
            w.close()
        splits = _split_totals(sources)
        for split in SPLITS:
            if splits[split]["chunks" if split == "seed" else "docs"] == 0:
                raise CorpusError(f"corpus split {split!r} is empty ({_empty_hint(split, cfg)})")
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    for w in writers.values():
        w.publish()
    packages = {}
    for src in cfg.sources:
        for pkg in packages_of(src):
            packages[pkg.filename] = {"name": pkg.package, "version": pkg.version,
                                      "file": pkg.filename, "sha256": pkg.sha256}
    return {"sources": sources, "splits": splits, "packages": list(packages.values())}


def _split_totals(sources: dict[str, dict]) -> dict:
    splits = {s: {"docs": 0, "words": 0} for s in SPLITS}
    splits["seed"]["chunks"] = 0
    for st in sources.values():
        for s in SPLITS:
            for k in splits[s]:
                splits[s][k] += st[s][k]
    return splits


def _empty_hint(split: str, cfg: CorpusConfig) -> str:
    if split == "seed":
        return (f"no seed document reached corpus.chunk_min_words={cfg.chunk_min_words} words; "
                "raise corpus.seed_fraction or the word budget")
    if split == "eval":
        return "set corpus.eval_fraction > 0 or give a source its own eval set"
    return "too few documents; raise the word budget or lower corpus.eval_fraction/seed_fraction"


__all__ = ["VERSION", "build_corpus", "word_count", "chunk_words", "source_targets", "SCHEMA"]
