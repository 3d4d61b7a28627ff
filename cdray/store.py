"""Content-addressed artifact store: stage keys, manifests written last, get-or-build under a lock."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from filelock import FileLock

MANIFEST = "manifest.json"
KEY_LENGTH = 16


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace; infinities spelled out) used for hashing."""

    def norm(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return {"__float__": repr(v)}
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v

    return json.dumps(norm(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def stage_key(stage: str, version: int, config: Any, input_keys: dict[str, str]) -> str:
    """sha256 over stage name, stage version, the whole config slice and the input keys."""
    payload = canonical_json({"stage": stage, "version": version, "config": config, "inputs": input_keys})
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _git_sha() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cdray")
    except PackageNotFoundError:
        return "0+unknown"


@contextmanager
def writing(path: Path):
    """Name the file in any OSError raised while writing it (a full disk says only errno 28)."""
    try:
        yield path
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None


class StoreError(RuntimeError):
    """A store artifact is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class Store:
    """Artifacts live at {root}/{stage}/{key}/; an artifact exists iff its manifest exists."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> "Store":
        return cls(Path(root).expanduser().resolve())

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def is_done(self, stage: str, key: str) -> bool:
        return (self.dir(stage, key) / MANIFEST).is_file()

    def manifest(self, stage: str, key: str) -> dict:
        path = self.dir(stage, key) / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{path}: artifact not built (no manifest)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"{path}: corrupt manifest") from None

    def lock(self, stage: str, key: str) -> FileLock:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{stage}-{key}.lock"))

    def get_or_build(self, stage: str, key: str, builder: Callable[[Path], dict], *,
                     config: Any, inputs: dict[str, str], extra: Optional[dict] = None) -> dict:
        """Return the manifest of (stage, key), building it first if needed.

        The lock makes concurrent builders of one key wait and then reuse; the builder may find
        partial output of an interrupted earlier attempt in its directory and resume from it.
        """
        if self.is_done(stage, key):
            return self.manifest(stage, key)
        with self.lock(stage, key):
            if self.is_done(stage, key):
                return self.manifest(stage, key)
            out = self.dir(stage, key)
            out.mkdir(parents=True, exist_ok=True)
            started = time.time()
            stats = builder(out) or {}
            return self.commit(stage, key, config=config, inputs=inputs, stats=stats,
                               seconds=time.time() - started, extra=extra)

    def commit(self, stage: str, key: str, *, config: Any, inputs: dict[str, str], stats: dict,
               seconds: float = 0.0, extra: Optional[dict] = None) -> dict:
        """Write the manifest (file sizes and checksums included) last, atomically."""
        out = self.dir(stage, key)
        files = {}
        for p in sorted(out.rglob("*")):
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".tmp"):
                rel = p.relative_to(out).as_posix()
                files[rel] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        manifest = {
            "stage": stage,
            "key": key,
            "config": config,
            "inputs": inputs,
            "stats": stats,
            "files": files,
            "bytes": sum(f["bytes"] for f in files.values()),
            "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cdray_version": _package_version(),
            "git_sha": _git_sha(),
            **(extra or {}),
        }
        tmp = out / f".tmp-{MANIFEST}-{os.getpid()}"
        with writing(out / MANIFEST):
            try:
                tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
                os.replace(tmp, out / MANIFEST)
            finally:
                tmp.unlink(missing_ok=True)
        return manifest

    def verify(self, stage: str, key: str) -> list[str]:
        """Names of files of a built artifact that are missing or whose checksum changed."""
        manifest = self.manifest(stage, key)
        bad = []
        for rel, meta in manifest.get("files", {}).items():
            p = self.dir(stage, key) / rel
            if not p.is_file() or p.stat().st_size != meta["bytes"] or file_sha256(p) != meta["sha256"]:
                bad.append(str(p))
        return bad

    def list(self, stage: Optional[str] = None) -> list[tuple[str, str]]:
        """(stage, key) of every built artifact."""
        found: list[tuple[str, str]] = []
        if not self.root.is_dir():
            return found
        stages = [stage] if stage else sorted(p.name for p in self.root.iterdir()
                                               if p.is_dir() and not p.name.startswith((".", "_")))
        for s in stages:
            d = self.root / s
            if d.is_dir():
                found += [(s, k.name) for k in sorted(d.iterdir()) if (k / MANIFEST).is_file()]
        return found
