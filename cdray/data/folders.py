"""Data folders a stage reads, local or on any pyarrow.fs URI: the files a reader keeps, a digest
of their bytes (remembered by the files' stats), and a mirror of a remote folder in a node's cache."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

from filelock import FileLock

from cdray.common.files import file_sha256, remove_temporaries, write_json_atomic
from cdray.common.redaction import mask_uri
from cdray.common.uris import is_remote
from cdray.dag.remote import RemoteRoot
from cdray.dag.store import member

# a reader's filter: whether it reads the file at this relative name ('/' separators)
Select = Callable[[str], bool]


def visible(rel: str) -> bool:
    """No part of the name is hidden (.git, .cache, a writer's temporary)."""
    return not any(part.startswith(".") for part in rel.split("/"))


def default_cache() -> Path:
    """Where mirrors go when no store names a cache ($CDRAY_CACHE or ~/.cache/cdray)."""
    base = os.environ.get("CDRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cdray")
    return Path(base) / "downloads"


def _remote_listing(location: str) -> dict[str, tuple[int, int]]:
    try:
        return RemoteRoot(location).listing()
    except OSError as e:
        # the filesystem's own message names a store root: say which data folder failed instead
        text = str(e).replace(f"store.root {location}: ", "")
        raise OSError(f"{mask_uri(location)}: {text}") from None


def listing(location: str, select: Select = visible) -> dict[str, tuple[int, int]]:
    """{relative name: (size, mtime in ns)} of the files below location that select keeps
    (empty when the folder does not exist)."""
    if is_remote(location):
        return {rel: stat for rel, stat in _remote_listing(location).items() if select(rel)}
    root = Path(location)
    out = {}
    for path in root.rglob("*") if root.is_dir() else ():
        rel = path.relative_to(root).as_posix()
        if select(rel) and path.is_file():
            st = path.stat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def exists(location: str) -> bool:
    """A local folder, or a URI with at least one object below it (object stores have no folders)."""
    if is_remote(location):
        return bool(_remote_listing(location))
    return Path(location).is_dir()


def mirror(location: str, select: Select, cache: Optional[Path] = None) -> Path:
    """A local folder holding location's selected files: location itself when it is local; for a
    URI, its mirror in this node's cache (cache/remote/<id>/), brought up to date: objects new or
    changed since the last mirror (by listed size and mtime) are downloaded, selected files no
    longer listed are removed. Every listed name must stay inside the mirror: a tampered listing
    is refused before anything is written. What the files hold is checked by the caller's digest."""
    if not is_remote(location):
        return Path(location)
    base = Path(cache or default_cache()) / "remote"
    ident = hashlib.sha256(location.encode()).hexdigest()[:16]  # never the URI itself: it may hold keys
    out, index_path = base / ident, base / f"{ident}.json"
    where = mask_uri(location)
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / f"{ident}.lock")):  # several stages of one node may mirror it at once
        listed = _remote_listing(location)
        for rel in listed:
            member(out, rel, where)
        keep = {rel: stat for rel, stat in listed.items() if select(rel)}
        remove_temporaries(out)  # of a download killed midway
        index = _read_json(index_path)
        remote = RemoteRoot(location)
        try:
            for rel, (size, mtime) in sorted(keep.items()):
                path = out / rel
                if index.get(rel) == [size, mtime] and path.is_file() and path.stat().st_size == size:
                    continue
                index.pop(rel, None)
                remote.download(rel, path)
                if path.stat().st_size != size:
                    raise OSError(f"{where}/{rel}: changed while it was downloaded; run again")
                index[rel] = [size, mtime]
            for path in (sorted(out.rglob("*")) if out.is_dir() else []):
                rel = path.relative_to(out).as_posix()
                if path.is_file() and select(rel) and rel not in keep:
                    path.unlink()
                    index.pop(rel, None)
        finally:
            write_json_atomic(index_path, index)
    return out


def files_digest(folder: Path, select: Select = visible) -> str:
    """sha256 over the relative name, size and sha256 of every selected file, in name order:
    the same bytes under other names of folders (another disk, a bucket) give the same digest."""
    h = hashlib.sha256()
    for rel in sorted(listing(str(folder), select)):
        path = Path(folder) / rel
        h.update(f"{rel}\0{path.stat().st_size}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


def digest(folder: Path, select: Select = visible, *, kind: str = "files",
           compute: Optional[Callable[[Path], str]] = None, cache: Optional[Path] = None) -> str:
    """compute(folder) (default: files_digest), remembered under cache/digests/ with the selected
    files' stats (name, size, mtime, ctime, inode): a folder whose files were not touched is not
    read again. `kind` names the digest and its filter (one entry per folder and kind)."""
    folder = Path(folder)
    compute = compute or (lambda f: files_digest(f, select))
    if cache is None:
        return compute(folder)
    seen = _fingerprint(folder, select)  # before reading: a file changed meanwhile is read again next time
    name = hashlib.sha256(f"{kind}\0{folder.absolute()}".encode()).hexdigest()[:32]
    entry = Path(cache) / "digests" / f"{name}.json"
    saved = _read_json(entry)
    if saved.get("fingerprint") == seen and isinstance(saved.get("digest"), str):
        return saved["digest"]
    value = compute(folder)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(entry, {"fingerprint": seen, "digest": value})
    except OSError:
        pass  # a read-only cache only costs reading the folder again
    return value


def location_digest(location: str, select: Select, *, kind: str = "files",
                    compute: Optional[Callable[[Path], str]] = None, cache: Optional[Path] = None) -> str:
    """digest() of a folder wherever it is (a remote one is mirrored into cache first)."""
    return digest(mirror(location, select, cache), select, kind=kind, compute=compute, cache=cache)


def _fingerprint(folder: Path, select: Select) -> str:
    h = hashlib.sha256()
    for rel in sorted(listing(str(folder), select)):
        st = (folder / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
