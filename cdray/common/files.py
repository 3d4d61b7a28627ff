"""Writing files so a crash or a power cut never leaves half of one: temporaries renamed into
place, fsync of data before what marks it complete, checksums, and the errors that name a file."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def writing(path: Path):
    """Name the file in any OSError raised while writing it (a full disk says only errno 28)."""
    try:
        yield path
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None


TEMPORARY_PREFIX = ".tmp-"  # names the store leaves out of an artifact's files


def temporary_path(path: Path) -> Path:
    """Where `path` is written before its atomic rename: a name the store never counts as part
    of an artifact, so a writer killed mid-write (or renaming after a commit) leaves nothing in
    a manifest; the pid keeps concurrent writers of one file apart."""
    return path.with_name(f"{TEMPORARY_PREFIX}{path.name}-{os.getpid()}")


def fsync_file(path: Path) -> None:
    """Force a file's bytes to the disk: after a power cut it is whole, not empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Force a folder's entries (a rename into it, a new file) to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform or file system without directory handles
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is all they offer
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path):
    """Yield a temporary path to write; on success it replaces `path` in one rename, so readers
    see the old file or the new one, never half of one, and the bytes are on the disk before
    the rename is (a power cut leaves the old file or the whole new one). A failed write leaves
    `path` as it was and its temporary gone, and an OSError names `path`."""
    tmp = temporary_path(path)
    with writing(path):
        try:
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)


def remove_temporaries(out: Path) -> int:
    """Delete the temporaries under an artifact directory, returning how many: a writer killed
    mid-write leaves its own (its pid in the name), which no later writer reuses."""
    stray = [p for p in out.rglob(f"{TEMPORARY_PREFIX}*") if p.is_file()] if out.is_dir() else []
    for p in stray:
        p.unlink(missing_ok=True)
    return len(stray)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write obj as indented, key-sorted JSON through `replacing`."""
    data = json_bytes(obj)
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
