"""`cdray data fetch-eval`: download the BabyLM 2025 evaluation data and install it at eval.babylm_dir."""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

from cdray.babylm import FOLDERS, missing_reason
from cdray.store import file_sha256

# where the BabyLM 2025 pipeline documents its data: the `evaluation_data` folder on OSF,
# whose `full_eval/` subfolder is the layout cdray reads
DOCS_HINT = "the BabyLM 2025 evaluation_data archive (see github.com/babylm/evaluation-pipeline-2025)"


def _find_root(tree: Path) -> Optional[Path]:
    """The folder of an unpacked archive that holds the task folders (full_eval/ preferred)."""
    marker = FOLDERS["blimp"]
    hits = sorted(p.parent for p in tree.rglob(marker) if p.is_dir())
    hits.sort(key=lambda p: (p.name != "full_eval", len(p.parts)))
    return hits[0] if hits else None


def _unpack(archive: Path, into: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ValueError(f"{archive}: unsafe path {name!r} in archive")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    else:
        raise ValueError(f"{archive}: not a zip or tar archive")


def fetch_eval(url: str, dest: str | Path, sha256: Optional[str] = None, timeout: float = 60.0) -> dict:
    """Download `url` (http(s):// or file://), unpack, and install its task folders at `dest`.

    Nothing is written at `dest` unless the archive holds a complete BabyLM layout; an existing
    complete `dest` is left alone.
    """
    dest = Path(dest).expanduser().resolve()
    if missing_reason(str(dest), FOLDERS) is None:
        return {"dest": str(dest), "downloaded": False}
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"eval.babylm_dir {str(dest)!r} exists but is incomplete; remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-eval-") as tmp:
        tmp = Path(tmp)
        archive = tmp / "download"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
        except (OSError, ValueError) as e:
            raise OSError(f"eval.fetch_url {url!r}: download failed ({e})") from None
        digest = file_sha256(archive)
        if sha256 and digest != sha256:
            raise ValueError(f"eval.fetch_url {url!r}: sha256 {digest} != eval.fetch_sha256 {sha256}")
        _unpack(archive, tmp / "unpacked")
        root = _find_root(tmp / "unpacked")
        if root is None:
            raise ValueError(f"eval.fetch_url {url!r}: the archive has no {FOLDERS['blimp']}/ folder")
        reason = missing_reason(str(root), FOLDERS)
        if reason is not None:
            raise ValueError(f"eval.fetch_url {url!r}: incomplete archive: {reason.split(': ', 1)[-1]}")
        if dest.exists():
            dest.rmdir()
        shutil.move(str(root), str(dest))
    return {"dest": str(dest), "downloaded": True, "sha256": digest}
