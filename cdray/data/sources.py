"""Reading each kind of text source (packaged, local, babylm, hf) into cleaned Documents."""
from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Iterator, Optional

from cdray.config import SourceConfig
from cdray.data.documents import CorpusError, Document, _dedup, _read_text_file, normalize_whitespace, strip_gutenberg
from cdray.data.packaged import PACKAGED_TEXTS, PackagedText, _iter_packaged, fetch_package

# ---------------------------------------------------------------- local directories


_LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _require_dir(path: Optional[str], what: str) -> Path:
    p = Path(path or "")
    if not path or not p.is_dir():
        raise CorpusError(f"{what} directory not found: {p}")
    return p


def _iter_txt(path: Path, rel: str, label: str) -> Iterator[Document]:
    text = normalize_whitespace(_read_text_file(path))
    yield Document(label, rel, text, None)


def _iter_jsonl(path: Path, rel: str, label: str, field: str) -> Iterator[Document]:
    text = _read_text_file(path)
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise CorpusError(f"{path}:{lineno}: malformed JSON line") from None
        if not isinstance(row, dict) or field not in row:
            raise CorpusError(f"{path}:{lineno}: missing text field {field!r}")
        value = row[field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise CorpusError(f"{path}:{lineno}: field {field!r} is not a string")
        yield Document(label, f"{rel}:{lineno}", normalize_whitespace(value), None)


def _iter_parquet(path: Path, rel: str, label: str, field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise CorpusError(f"{path}: not a readable parquet file ({type(e).__name__})") from None
    if field not in pf.schema_arrow.names:
        raise CorpusError(f"{path}: missing text field {field!r} (columns: {pf.schema_arrow.names})")
    if pf.metadata.num_rows == 0:
        raise CorpusError(f"{path}: empty file (no rows)")
    row = 0
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield Document(label, f"{rel}:{row}", normalize_whitespace(value), None)
            row += 1


def local_file(rel: str) -> bool:
    """Whether a `local` source reads the file at this relative name (its key digests exactly these)."""
    return rel.endswith(_LOCAL_SUFFIXES) and not any(part.startswith(".") for part in rel.split("/"))


def _iter_local(src: SourceConfig) -> Iterator[Document]:
    root = _require_dir(src.path, f"source {src.label!r}: local")
    files = sorted(p for p in root.rglob("*") if p.is_file() and local_file(p.relative_to(root).as_posix()))
    if not files:
        raise CorpusError(f"source {src.label!r}: no .txt/.jsonl/.parquet files in {root}")
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".txt":
            docs = _iter_txt(path, rel, src.label)
        elif path.suffix == ".jsonl":
            docs = _iter_jsonl(path, rel, src.label, src.text_field)
        else:
            docs = _iter_parquet(path, rel, src.label, src.text_field)
        yield from docs


# ---------------------------------------------------------------- BabyLM


_MAX_BLOCK_WORDS = 2000  # BabyLM files without blank lines would otherwise be one huge document
_PIECE_WORDS = 1000


def _split_long_block(block: str) -> list[str]:
    """Cut a block over _MAX_BLOCK_WORDS at line ends into pieces of about _PIECE_WORDS words."""
    if len(block.split()) <= _MAX_BLOCK_WORDS:
        return [block]
    pieces, current, words = [], [], 0
    for line in block.split("\n"):
        current.append(line)
        words += len(line.split())
        if words >= _PIECE_WORDS:
            pieces.append("\n".join(current))
            current, words = [], 0
    if current:
        pieces.append("\n".join(current))
    return pieces


def _blank_line_docs(text: str) -> list[str]:
    blocks = [p for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]
    return [piece for block in blocks for piece in _split_long_block(block)]


def babylm_file(rel: str) -> bool:
    """Whether a `babylm` source reads the file at this relative name: train_*/*.train, test/*.test."""
    parts = rel.split("/")
    return len(parts) == 2 and ((fnmatch.fnmatch(parts[0], "train_*") and fnmatch.fnmatch(parts[1], "*.train"))
                                or (parts[0] == "test" and fnmatch.fnmatch(parts[1], "*.test")))


def _iter_babylm(src: SourceConfig) -> Iterator[Document]:
    root = _require_dir(src.path, f"source {src.label!r}: babylm")
    files = sorted(p for p in root.glob("*/*") if p.is_file() and babylm_file(p.relative_to(root).as_posix()))
    train = [p for p in files if p.parent.name != "test"]
    test = [p for p in files if p.parent.name == "test"]
    if not train:
        raise CorpusError(f"source {src.label!r}: no train_*/*.train files in {root}")
    for path, split in [(p, None) for p in train] + [(p, "eval") for p in test]:
        text = _read_text_file(path)
        rel = path.relative_to(root).as_posix()
        for i, para in enumerate(_blank_line_docs(text)):
            yield Document(f"{src.label}/{path.stem}", f"{rel}:{i}", normalize_whitespace(para), split)


# ---------------------------------------------------------------- Hugging Face datasets


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file()
                                 for m in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _load_hf_split(src: SourceConfig, split: str):
    import datasets

    path = Path(src.dataset)
    if _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise CorpusError(f"{path}: no split {split!r} (splits: {sorted(loaded)})")
            return loaded[split]
        if src.eval_split is not None:
            raise CorpusError(f"{path}: a single saved Dataset has no split {split!r}; "
                              "save a DatasetDict to use eval_split")
        return loaded
    try:
        # a hub dataset at its pinned revision (its key holds name and revision); a local folder
        # of data files ignores it
        return datasets.load_dataset(src.dataset, split=split, revision=src.revision)
    except Exception as e:  # datasets raises many types (missing, offline, bad split)
        first = (str(e).splitlines() or [""])[0]
        at = f" revision {src.revision!r}" if src.revision else ""
        raise CorpusError(f"hf dataset {src.dataset!r}{at} split {split!r}: {type(e).__name__}: {first}") from None


def _iter_hf(src: SourceConfig) -> Iterator[Document]:
    splits = [(src.split, None)] + ([(src.eval_split, "eval")] if src.eval_split else [])
    for split_name, split in splits:
        ds = _load_hf_split(src, split_name)
        if src.text_field not in ds.column_names:
            raise CorpusError(f"hf dataset {src.dataset!r} split {split_name!r}: missing text field "
                              f"{src.text_field!r} (columns: {ds.column_names})")
        column = ds.select_columns([src.text_field])
        for i, row in enumerate(column.iter(batch_size=4096)):
            for j, value in enumerate(row[src.text_field]):
                if isinstance(value, str):
                    yield Document(src.label, f"{split_name}:{i * 4096 + j}", normalize_whitespace(value), split)


# ---------------------------------------------------------------- entry point


def iter_documents(src: SourceConfig, download_dir: Path) -> Iterator[Document]:
    """Every cleaned, non-empty, de-duplicated document of one source, in a deterministic order."""
    if src.kind == "packaged":
        return _iter_packaged(src, Path(download_dir))
    readers = {"local": _iter_local, "babylm": _iter_babylm, "hf": _iter_hf}
    if src.kind not in readers:
        raise CorpusError(f"source {src.label!r}: unknown kind {src.kind!r}")
    return _dedup(readers[src.kind](src))


def packages_of(src: SourceConfig) -> list[PackagedText]:
    """The distinct pinned files a packaged source reads (for provenance records)."""
    if src.kind != "packaged":
        return []
    seen: dict[str, PackagedText] = {}
    for name in src.packages:
        pkg = PACKAGED_TEXTS[name]
        seen.setdefault(pkg.filename, pkg)
    return list(seen.values())


__all__ = ["CorpusError", "Document", "PackagedText", "PACKAGED_TEXTS", "fetch_package",
           "iter_documents", "local_file", "babylm_file", "packages_of", "normalize_whitespace", "strip_gutenberg"]
