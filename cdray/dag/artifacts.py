"""What an artifact is made of: its files (manifest and temporaries aside), where a remote store
keeps them, the safe names a manifest may give, and the provenance a manifest records."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from cdray.common.files import TEMPORARY_PREFIX

MANIFEST = "manifest.json"
# a remote build uploads under {stage}/{key}/attempts/<id>/ and its manifest names <id>: two hosts
# building one key never mix files, whichever manifest lands last (the id is kept locally beside
# the key's lock, outside the artifact)
ATTEMPTS = "attempts"


def git_sha() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cdray")
    except PackageNotFoundError:
        return "0+unknown"


class StoreError(RuntimeError):
    """A store artifact is missing, incomplete or corrupt."""


def member(out: Path, rel: str, where: str) -> Path:
    """out / rel for a file name read from a manifest or listed from a remote folder, which must
    be a relative path that stays inside the artifact (a tampered manifest must not write or read
    anywhere else); anything else is a StoreError naming the artifact."""
    parts = rel.split("/")
    if (not rel or rel.startswith(("/", "\\")) or "\\" in rel or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise StoreError(f"{where}: unsafe file name {rel!r} in the artifact's listing")
    path = out / rel
    if not path.resolve().is_relative_to(out.resolve()):
        raise StoreError(f"{where}: file name {rel!r} leads outside the artifact")
    return path


def remote_prefix(stage: str, key: str, attempt: Optional[str]) -> str:
    """Where an artifact's files are in a remote store: its build attempt's prefix (None: the
    key's own folder, where artifacts committed before attempts existed keep them)."""
    return f"{stage}/{key}/{ATTEMPTS}/{attempt}" if attempt else f"{stage}/{key}"


def artifact_files(out: Path) -> list[tuple[str, Path]]:
    """(relative name, path) of the files of an artifact, manifest and temporaries excluded."""
    if not out.is_dir():
        return []
    return [(p.relative_to(out).as_posix(), p) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(TEMPORARY_PREFIX)]
