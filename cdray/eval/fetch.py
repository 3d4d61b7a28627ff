"""`cdray data fetch-eval`: download the BabyLM 2025 evaluation data and install it at eval.babylm_dir."""
from __future__ import annotations

import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from cdray.common.files import file_sha256
from cdray.eval.babylm import FOLDERS, missing_reason

# where the BabyLM 2025 pipeline documents its data: the `evaluation_data` folder on OSF,
# whose `full_eval/` subfolder is the layout cdray reads
DOCS_HINT = "the BabyLM 2025 evaluation_data archive (see github.com/babylm/evaluation-pipeline-2025)"


def _find_root(tree: Path) -> Optional[Path]:
    """The folder of an unpacked archive that holds the task folders (full_eval/ preferred)."""
    marker = FOLDERS["blimp"]
    hits = sorted(p.parent for p in tree.rglob(marker) if p.is_dir())
    hits.sort(key=lambda p: (p.name != "full_eval", len(p.parts)))
    return hits[0] if hits else None


# an archive must not fill the disk or hang the command: the official archive is a few hundred MB
MAX_DOWNLOAD_BYTES = 4 << 30
MAX_UNPACKED_BYTES = 16 << 30
MAX_MEMBERS = 200_000
DOWNLOAD_SECONDS = 3600.0
CHUNK = 1 << 20


class _Budget:
    """Counts bytes written out of an archive against MAX_UNPACKED_BYTES."""

    def __init__(self, archive: Path, limit: int):
        self.archive, self.limit, self.used = archive, limit, 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise ValueError(f"{self.archive}: unpacks to more than {self.limit} bytes (an archive bomb?)")


def _safe_name(archive: Path, name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ValueError(f"{archive}: unsafe path {name!r} in archive")
    return "/".join(p for p in parts if p not in ("", "."))


def _unpack_zip(archive: Path, into: Path, budget: _Budget) -> None:
    import stat

    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ValueError(f"{archive}: more than {MAX_MEMBERS} members")
        for info in infos:
            name = _safe_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"{archive}: {info.filename!r} is a symbolic link (links are refused)")
            target = into / name
            if info.is_dir() or not name:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # the declared size can lie: count what is really written
            with z.open(info) as src, open(target, "wb") as dst:
                while block := src.read(CHUNK):
                    budget.take(len(block))
                    dst.write(block)


def _unpack_tar(archive: Path, into: Path, budget: _Budget) -> None:
    with tarfile.open(archive) as t:
        members = []
        for m in t:
            if len(members) >= MAX_MEMBERS:
                raise ValueError(f"{archive}: more than {MAX_MEMBERS} members")
            _safe_name(archive, m.name)
            if m.issym() or m.islnk():
                raise ValueError(f"{archive}: {m.name!r} is a {'symbolic' if m.issym() else 'hard'} "
                                 f"link (links are refused)")
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"{archive}: {m.name!r} is not a file or folder")
            budget.take(m.size)
            members.append(m)
        t.extractall(into, members=members, filter="data")


def _unpack(archive: Path, into: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Unpack a zip or tarball, refusing links, paths that leave `into`, special files and more
    than max_bytes of content: the tree then holds only plain files and folders under `into`."""
    budget = _Budget(archive, max_bytes)
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, into, budget)
    elif tarfile.is_tarfile(archive):
        _unpack_tar(archive, into, budget)
    else:
        raise ValueError(f"{archive}: not a zip or tar archive")


def _download(url: str, archive: Path, timeout: float, max_bytes: int, seconds: float) -> None:
    """Copy url to archive, at most max_bytes and `seconds` in all (timeout: per network wait)."""
    deadline = time.monotonic() + seconds
    with urllib.request.urlopen(url, timeout=timeout) as r, open(archive, "wb") as f:
        got = 0
        while block := r.read(CHUNK):
            got += len(block)
            if got > max_bytes:
                raise ValueError(f"download is larger than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"download took longer than {seconds:.0f} s")
            f.write(block)


def fetch_eval(url: str, dest: str | Path, sha256: Optional[str] = None, timeout: float = 60.0,
               max_bytes: int = MAX_DOWNLOAD_BYTES, max_unpacked: int = MAX_UNPACKED_BYTES,
               seconds: float = DOWNLOAD_SECONDS) -> dict:
    """Download `url` (http(s):// or file://), unpack, and install its task folders at `dest`.

    Nothing is written at `dest` unless the archive holds a complete BabyLM layout; an existing
    complete `dest` is left alone. Errors carry the URL with its credentials masked.
    """
    from cdray.common.redaction import mask_text, mask_uri

    shown = mask_uri(url)
    if url.lower().startswith("http://") and not sha256:
        print(f"[cdray] warning: eval.fetch_url {shown} is plain http and eval.fetch_sha256 is not set: "
              f"nothing checks what arrives", file=sys.stderr, flush=True)
    dest = Path(dest).expanduser().resolve()
    if missing_reason(str(dest), FOLDERS) is None:
        return {"dest": str(dest), "downloaded": False, "missing": []}
    if (dest / FOLDERS["blimp"]).is_dir():  # installed before, from an archive that lacked some tasks
        return {"dest": str(dest), "downloaded": False, "missing": lacking(dest)}
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"eval.babylm_dir {str(dest)!r} exists but is incomplete; remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-eval-") as tmp:
        tmp = Path(tmp)
        archive = tmp / "download"
        try:
            _download(url, archive, timeout, max_bytes, seconds)
        except (OSError, ValueError) as e:
            raise OSError(f"eval.fetch_url {shown}: download failed ({mask_text(str(e))})") from None
        digest = file_sha256(archive)
        if sha256 and digest != sha256.strip().lower():
            raise ValueError(f"eval.fetch_url {shown}: sha256 {digest} != eval.fetch_sha256 {sha256}")
        try:
            _unpack(archive, tmp / "unpacked", max_unpacked)
        except ValueError as e:
            raise ValueError(f"eval.fetch_url {shown}: {str(e).split(': ', 1)[-1]}") from None
        root = _find_root(tmp / "unpacked")
        if root is None:
            raise ValueError(f"eval.fetch_url {shown}: the archive has no {FOLDERS['blimp']}/ folder")
        if dest.exists():
            dest.rmdir()
        shutil.move(str(root), str(dest))
    return {"dest": str(dest), "downloaded": True, "sha256": digest, "missing": lacking(dest)}


# where a task's folder comes from when the release's archive lacks it
FROM_ELSEWHERE = {"ewok": "the official pipeline builds it from the EWoK hub dataset, whose terms you accept first: "
                          "`python -m evaluation_pipeline.ewok.dl_and_filter` in github.com/babylm/evaluation-pipeline-2025"}


def lacking(dest: str | Path) -> list[str]:
    """Lines naming each task folder an installed evaluation folder lacks, and where it comes from."""
    return [f"{FOLDERS[t]}/ is missing: " + FROM_ELSEWHERE.get(t, "drop the task from eval.tasks or add its folder")
            for t in FOLDERS if missing_reason(str(dest), [t]) is not None]
