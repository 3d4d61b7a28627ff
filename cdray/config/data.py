"""Config of the real corpus (sources, splits) and of the tokenizer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from cdray.common.uris import check_uri
from cdray.config.errors import ADDED, check, in_range

# texts of the offline `packaged` source (cdray.data.sources pins where each comes from)
PACKAGED_TEXT_NAMES = ("shakespeare", "milton", "wiki", "chatterbot")


@dataclass(frozen=True)
class SourceConfig:
    """One text source of the real corpus."""

    kind: Literal["packaged", "local", "babylm", "hf"]
    name: str = ""  # label used in manifests; defaults to kind
    weight: float = 1.0  # share of corpus.total_words when that is set
    max_words: Optional[int] = None  # cap on words taken from this source (all splits)
    # local: folder of .txt/.jsonl/.parquet; babylm: data folder. A path (relative: under
    # data_root) or a URI (s3://bucket/prefix, any pyarrow.fs scheme); keyed by its files' bytes
    path: Optional[str] = None
    # hf: a hub dataset name, or a folder (a path or URI; saved with save_to_disk, or data files
    # load_dataset reads), keyed by its files' bytes
    dataset: Optional[str] = None
    # hf hub dataset: the revision (commit sha, tag or branch) load_dataset reads; a hub
    # dataset's key holds its name and this, so pin it (None: the hub's newest, keyed by name only)
    revision: Optional[str] = field(default=None, metadata=ADDED)
    split: str = "train"  # hf: split used for train/seed
    eval_split: Optional[str] = None  # hf: split used as eval (else eval_fraction of split)
    text_field: str = "text"  # hf/local jsonl/parquet: column holding the text
    packages: tuple[str, ...] = PACKAGED_TEXT_NAMES  # packaged: which texts

    def validate(self, at: str) -> None:
        check(self.weight > 0, f"{at}.weight", f"{self.weight!r} must be > 0")
        if self.max_words is not None:
            check(self.max_words > 0, f"{at}.max_words", f"{self.max_words!r} must be > 0")
        if self.kind in ("local", "babylm"):
            check(bool(self.path), f"{at}.path", f"required for a {self.kind!r} source")
        if self.kind == "hf":
            check(bool(self.dataset), f"{at}.dataset", "required for an 'hf' source")
        if self.revision is not None:
            check(self.kind == "hf", f"{at}.revision", f"only an 'hf' source has a revision (this is {self.kind!r})")
            check(bool(self.revision), f"{at}.revision", "must not be empty")
        for name in ("path", "dataset"):
            value = getattr(self, name)
            if value:
                problem = check_uri(value)
                check(problem is None, f"{at}.{name}", f"{value!r}: {problem}")
        if self.kind == "packaged":
            for i, p in enumerate(self.packages):
                check(p in PACKAGED_TEXT_NAMES, f"{at}.packages[{i}]",
                       f"{p!r} is not one of {list(PACKAGED_TEXT_NAMES)}")

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class CorpusConfig:
    """Real corpus: a weighted mix of sources split per source into train / eval / seed."""

    sources: tuple[SourceConfig, ...] = (SourceConfig(kind="packaged"),)
    total_words: Optional[int] = None  # if set, each source contributes total*weight/sum(weights)
    eval_fraction: float = 0.05  # of documents, for sources without their own eval set
    seed_fraction: float = 0.05  # of the non-eval documents: held-out prompt source
    split_seed: int = 0
    chunk_min_words: int = 100
    chunk_max_words: int = 200
    min_doc_words: int = 3

    def validate(self, at: str) -> None:
        check(len(self.sources) > 0, f"{at}.sources", "at least one source is required")
        labels = [s.label for s in self.sources]
        check(len(set(labels)) == len(labels), f"{at}.sources", f"duplicate source names {labels}")
        for i, s in enumerate(self.sources):
            s.validate(f"{at}.sources[{i}]")
        if self.total_words is not None:
            check(self.total_words > 0, f"{at}.total_words", "must be > 0")
        in_range(self.eval_fraction, 0, 1, f"{at}.eval_fraction", hi_open=True)
        in_range(self.seed_fraction, 0, 1, f"{at}.seed_fraction", lo_open=True, hi_open=True)
        check(self.split_seed >= 0, f"{at}.split_seed", f"{self.split_seed!r} must be >= 0")
        check(self.min_doc_words >= 0, f"{at}.min_doc_words", f"{self.min_doc_words!r} must be >= 0")
        check(self.chunk_min_words > 0, f"{at}.chunk_min_words", "must be > 0")
        check(self.chunk_max_words >= self.chunk_min_words, f"{at}.chunk_max_words",
               "must be >= chunk_min_words")


@dataclass(frozen=True)
class TokenizerConfig:
    """BPE tokenizer (NFKC, Metaspace) trained on the train split."""

    vocab_size: int = 32000
    min_frequency: int = 2

    def validate(self, at: str) -> None:
        in_range(self.vocab_size, 64, 1 << 20, f"{at}.vocab_size")
        check(self.min_frequency >= 1, f"{at}.min_frequency", "must be >= 1")
