"""A document of the real corpus and the cleaning every source shares: whitespace, Project
Gutenberg boilerplate, decoding, de-duplication."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional


class CorpusError(ValueError):
    """Bad corpus input; the message is one line naming the file, field or source."""


@dataclass(frozen=True)
class Document:
    source: str  # source label, refined by sub-source for packaged/babylm ("babylm/bnc_spoken")
    doc_id: str  # unique within its source config
    text: str
    split: Optional[str]  # "eval" when the source itself assigns the doc to eval, else None


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
