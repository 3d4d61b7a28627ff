"""Where each corpus source's files are (paths under data_root, or URIs), which of them its reader
reads, and what the corpus stage's key holds of a source: its files' digest, never their path."""
from __future__ import annotations

import os
import posixpath
from dataclasses import replace
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from cdray.common.redaction import mask_uri
from cdray.common.uris import is_remote
from cdray.config import ConfigError, CorpusConfig, SourceConfig
from cdray.dag.keys import key_slice
from cdray.data import folders
from cdray.data.sources import babylm_file, local_file

FOLDER_KINDS = ("local", "babylm")


def resolve(location: str, data_root: Optional[str] = None) -> str:
    """A data location as every node reads it: a URI as written, `~` expanded, an absolute path
    as is, a relative one under data_root (a path or a URI; None: the current directory)."""
    if is_remote(location):
        return location
    path = Path(location).expanduser()
    if path.is_absolute():
        return os.path.normpath(path)
    if data_root is None:
        return os.path.abspath(path)
    if is_remote(data_root):
        parts = urlsplit(data_root)
        joined = posixpath.normpath(f"{parts.path.rstrip('/')}/{path.as_posix()}")
        return urlunsplit(parts._replace(path=joined))
    return os.path.abspath(Path(data_root).expanduser() / path)


def anchor_root(data_root: Optional[str]) -> str:
    """data_root as an absolute path (None: the current directory) or its URI: what a run hands
    its nodes, so a relative path means the same on every one of them."""
    if data_root is not None and is_remote(data_root):
        return data_root
    return os.path.abspath(Path(data_root or ".").expanduser())


def source_field(src: SourceConfig) -> str:
    """The field that says where a source is."""
    return "dataset" if src.kind == "hf" else "path"


def _path_like(text: str) -> bool:
    return text.startswith(("/", "~", "./", "../")) or text in (".", "..")


def source_location(src: SourceConfig, data_root: Optional[str] = None) -> Optional[str]:
    """Where the files of a `local`, `babylm` or folder `hf` source are; None for the packaged texts
    and a hub dataset. An hf `dataset` is a folder when it is a URI, a path (/, ~, ./, ../), or
    names a folder under data_root; else a hub name."""
    if src.kind in FOLDER_KINDS:
        return resolve(src.path, data_root)
    if src.kind != "hf":
        return None
    if is_remote(src.dataset) or _path_like(src.dataset):
        return resolve(src.dataset, data_root)
    candidate = resolve(src.dataset, data_root)
    return candidate if folders.exists(candidate) else None


def source_select(src: SourceConfig) -> folders.Select:
    """The files a source's reader reads (a saved or data-files hf folder: every visible file)."""
    return {"local": local_file, "babylm": babylm_file}.get(src.kind, folders.visible)


def unpinned_notes(sources, data_root: Optional[str] = None) -> list[str]:
    """One line per hub dataset without a revision: its key cannot follow what the hub serves."""
    notes = []
    for i, src in enumerate(sources):
        if src.kind == "hf" and src.revision is None and source_location(src, data_root) is None:
            notes.append(f"corpus.sources[{i}] ({src.label}): the hub dataset {src.dataset!r} is not pinned, so "
                         f"its key follows only its name; pin corpus.sources[{i}].revision to key what it serves")
    return notes


def corpus_key(corpus: CorpusConfig, data_root: Optional[str], cache: Optional[Path]) -> dict:
    """The corpus stage's config slice: every field, but a folder source's location replaced by
    `content`, the digest of the files its reader reads (folders.files_digest). An edited file
    re-keys the corpus; the same files elsewhere (another path, a bucket) keep its key."""
    out = key_slice(corpus)
    for i, src in enumerate(corpus.sources):
        location = source_location(src, data_root)
        if location is None:
            continue
        name = source_field(src)
        if not folders.exists(location):
            raise ConfigError(f"corpus.sources[{i}].{name}", f"{mask_uri(location)!r}: no such folder")
        entry = out["sources"][i]
        entry.pop(name)
        entry["content"] = folders.location_digest(location, source_select(src), kind=f"source-{src.kind}",
                                                   cache=cache)
    return out


def local_corpus(corpus: CorpusConfig, data_root: Optional[str], planned: dict, cache: Path) -> CorpusConfig:
    """The corpus config with every folder source pointing at local files with the planned
    content (a remote one mirrored into cache); a source whose files changed since the sweep was
    planned is a ValueError naming it."""
    sources = []
    for i, src in enumerate(corpus.sources):
        location = source_location(src, data_root)
        if location is None:
            sources.append(src)
            continue
        name = source_field(src)
        where = f"corpus.sources[{i}].{name} {mask_uri(location)!r}"
        if not folders.exists(location):
            raise ValueError(f"{where}: no such folder (it was there when the sweep was planned)")
        select = source_select(src)
        local = folders.mirror(location, select, cache)
        content = folders.digest(local, select, kind=f"source-{src.kind}", cache=cache)
        if content != planned["sources"][i].get("content"):
            raise ValueError(f"{where}: its files changed since the sweep was planned; plan it again")
        sources.append(replace(src, **{name: str(local)}))
    return replace(corpus, sources=tuple(sources))
