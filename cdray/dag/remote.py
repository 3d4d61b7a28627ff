"""Remote store roots on any pyarrow.fs URI: parsing, listing, upload and verified download of files."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from cdray.common.files import temporary_path

CHUNK = 8 << 20


@lru_cache(maxsize=16)
def filesystem(root: str):
    """(pyarrow FileSystem, base path) of a root URI; query options such as
    ?endpoint_override=127.0.0.1:9000&scheme=http go to the filesystem, not the path."""
    from pyarrow import fs as pafs

    try:
        filesys, path = pafs.FileSystem.from_uri(root)
    except OSError as e:  # e.g. no network, or a bucket that does not resolve: say which root
        raise OSError(f"store.root {root}: {e}") from None
    return filesys, path.rstrip("/")


def default_cache(root: str) -> Path:
    """Per-node local cache of a remote root; the same path on every node of a cluster."""
    base = os.environ.get("CDRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cdray")
    digest = hashlib.sha256(root.encode()).hexdigest()[:12]
    return Path(base) / "stores" / digest


@dataclass(frozen=True)
class RemoteRoot:
    """One remote root: every path argument is relative to it, with '/' separators."""

    uri: str

    @property
    def fs(self):
        return filesystem(self.uri)[0]

    def path(self, rel: str = "") -> str:
        base = filesystem(self.uri)[1]
        return f"{base}/{rel}".rstrip("/") if rel else base

    def url(self, rel: str) -> str:
        """Human/MLflow-facing address of a relative path (query options dropped)."""
        parts = urlsplit(self.uri)
        return f"{parts.scheme}://{self.path(rel)}"

    def exists(self, rel: str) -> bool:
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel), compression=None) as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self.path(rel), compression=None) as f:
            f.write(data)

    def files(self, rel: str) -> dict[str, int]:
        """{relative path under rel: size} of every file below rel (recursive)."""
        return {name: size for name, (size, _) in self.listing(rel).items()}

    def listing(self, rel: str = "") -> dict[str, tuple[int, int]]:
        """{relative path under rel: (size, mtime in ns)} of every file below rel (recursive;
        mtime 0 where the backend gives none)."""
        from pyarrow import fs as pafs

        base = self.path(rel)
        sel = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        out = {}
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File:
                out[info.path[len(base) + 1:]] = (info.size, info.mtime_ns or 0)
        return out

    def children(self, rel: str = "") -> list[str]:
        """Names of the directories directly below rel."""
        from pyarrow import fs as pafs

        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    def upload(self, local: Path, rel: str) -> None:
        with open(local, "rb") as src, self.fs.open_output_stream(self.path(rel), compression=None) as dst:
            while block := src.read(CHUNK):
                dst.write(block)

    def download(self, rel: str, local: Path, sha256: Optional[str] = None) -> None:
        """Copy one object to `local` through a temporary file; checksum checked before the rename."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(local)
        h = hashlib.sha256()
        try:
            with self.fs.open_input_stream(self.path(rel), compression=None) as src, open(tmp, "wb") as dst:
                while block := src.read(CHUNK):
                    h.update(block)
                    dst.write(block)
            if sha256 is not None and h.hexdigest() != sha256:
                raise OSError(f"{self.url(rel)}: checksum mismatch (the remote copy is corrupt)")
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def delete_dir(self, rel: str) -> None:
        self.fs.delete_dir_contents(self.path(rel), missing_dir_ok=True)
