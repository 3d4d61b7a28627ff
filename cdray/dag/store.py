"""Content-addressed artifact store: stage keys, manifests written last, get-or-build under a lock.

A root is a local path or any pyarrow.fs URI. A remote store builds into a per-node local cache
(same layout), uploads the files and writes manifest.json last; inputs are downloaded into the
cache and checked against the manifest's checksums before a stage reads them.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from filelock import FileLock

from cdray.common.files import (
    TEMPORARY_PREFIX,
    file_sha256,
    fsync_dir,
    fsync_file,
    json_bytes,
    remove_temporaries,
    write_json_atomic,
)
from cdray.common.uris import is_remote
from cdray.dag.artifacts import (
    ATTEMPTS,
    MANIFEST,
    StoreError,
    artifact_files,
    git_sha,
    member,
    package_version,
    remote_prefix,
)
from cdray.dag.remote import RemoteRoot, default_cache

__all__ = ["MANIFEST", "Store", "StoreError", "member"]


@dataclass(frozen=True)
class Store:
    """Artifacts live at {root}/{stage}/{key}/; an artifact exists iff its manifest exists.

    `root` is always local: the store itself, or the cache of `remote` when the store is remote.
    """

    root: Path
    remote: Optional[RemoteRoot] = None

    @classmethod
    def at(cls, root: str | os.PathLike, cache: Optional[str | os.PathLike] = None) -> "Store":
        text = str(root)
        if is_remote(text):
            local = Path(cache).expanduser().resolve() if cache else default_cache(text)
            return cls(local, RemoteRoot(text))
        path = Path(root).expanduser().resolve()
        if path.exists() and not path.is_dir():
            from cdray.config import ConfigError

            raise ConfigError("store.root", f"{path} is a file, not a folder")
        return cls(path)

    def check_writable(self) -> None:
        """Fail now, naming the folder, if artifacts cannot be written here (a read-only disk or
        folder), rather than after the first stage's work."""
        try:
            (self.root / ".locks").mkdir(parents=True, exist_ok=True)
            probe = self.root / ".locks" / f"{TEMPORARY_PREFIX}probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            from cdray.config import ConfigError

            raise ConfigError("store.cache" if self.remote else "store.root",
                              f"{self.root} is not writable ({e.strerror or e})") from None

    @property
    def location(self) -> str:
        """What `Store.at` needs to open this store again (in another process or node)."""
        return self.remote.uri if self.remote else str(self.root)

    def dir(self, stage: str, key: str) -> Path:
        """The local directory of an artifact (for a remote store: its cache / build directory)."""
        return self.root / stage / key

    def url(self, stage: str, key: str) -> str:
        """Where an artifact really lives, as a URI (for MLflow dataset sources and messages)."""
        return self.remote.url(f"{stage}/{key}") if self.remote else self.dir(stage, key).as_uri()

    def _cached(self, stage: str, key: str) -> bool:
        out = self.dir(stage, key)
        return (out / MANIFEST).is_file() and self._intact(stage, key, {
            rel: p.stat().st_size for rel, p in artifact_files(out)}, json.loads((out / MANIFEST).read_bytes()))

    def is_done(self, stage: str, key: str) -> bool:
        """Whether (stage, key) is committed: its manifest exists and every file it names has
        the size it records (a power cut can leave a manifest beside a truncated file; such an
        artifact is named on stderr and treated as not built, so it is rebuilt)."""
        try:
            if self._cached(stage, key):
                return True
        except (OSError, ValueError):
            return False  # an unreadable manifest is no commit
        if self.remote is None or not self.remote.exists(f"{stage}/{key}/{MANIFEST}"):
            return False
        manifest = json.loads(self.remote.read_bytes(f"{stage}/{key}/{MANIFEST}"))
        return self._intact(stage, key, self.remote.files(remote_prefix(stage, key, manifest.get("attempt"))),
                            manifest)

    def _intact(self, stage: str, key: str, sizes: dict[str, int], manifest: dict) -> bool:
        for rel, meta in manifest.get("files", {}).items():
            if sizes.get(rel) != meta["bytes"]:
                print(f"[cdray] store: {stage}/{key} is treated as not built: its file {rel} is "
                      f"{sizes.get(rel, 'missing')} bytes, its manifest says {meta['bytes']}",
                      file=sys.stderr, flush=True)
                return False
        return True

    def manifest(self, stage: str, key: str) -> dict:
        path = self.dir(stage, key) / MANIFEST
        where = str(path)
        try:
            if self.remote is not None and not path.is_file():
                where = self.remote.url(f"{stage}/{key}/{MANIFEST}")
                if not self.remote.exists(f"{stage}/{key}/{MANIFEST}"):
                    raise FileNotFoundError
                return json.loads(self.remote.read_bytes(f"{stage}/{key}/{MANIFEST}"))
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{where}: artifact not built (no manifest)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"{where}: corrupt manifest") from None

    def lock(self, stage: str, key: str) -> FileLock:
        """Serialises builders and downloads of one key on this host. Across hosts a remote store
        has no lock (object stores lack an atomic create); the sweep driver plans each key once,
        and two hosts building one key anyway write the same content with the manifest last."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{stage}-{key}.lock"))

    def fetch(self, stage: str, key: str, only: Optional[Callable[[str], bool]] = None) -> Path:
        """The local directory of a built artifact, downloaded (and checksum-verified) if remote.

        With `only`, just the files whose relative names it accepts (a reader of one milestone of a
        training run fetches that milestone's weights, not the run)."""
        out = self.dir(stage, key)
        if self.remote is None or self._cached(stage, key):
            return out
        with self.lock(stage, key):
            if self._cached(stage, key):
                return out
            manifest = self.manifest(stage, key)
            remove_temporaries(out)  # of a download killed midway
            wanted = {rel: meta for rel, meta in manifest.get("files", {}).items() if only is None or only(rel)}
            for rel, meta in wanted.items():
                p = member(out, rel, self.url(stage, key))
                if p.is_file() and p.stat().st_size == meta["bytes"] and file_sha256(p) == meta["sha256"]:
                    continue  # left by an earlier build or download
                self.remote.download(f"{remote_prefix(stage, key, manifest.get('attempt'))}/{rel}", p, meta["sha256"])
            if len(wanted) == len(manifest.get("files", {})):
                write_json_atomic(out / MANIFEST, manifest)
        return out

    def attempt(self, stage: str, key: str) -> Optional[str]:
        """The id of this host's build of (stage, key) in progress, for workers that upload
        into it (None for a local store)."""
        marker = self._attempt_file(stage, key)
        return marker.read_text().strip() if self.remote is not None and marker.is_file() else None

    def _attempt_file(self, stage: str, key: str) -> Path:
        return self.root / ".locks" / f"{stage}-{key}.attempt"

    def _begin_attempt(self, stage: str, key: str) -> str:
        attempt = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._attempt_file(stage, key).parent.mkdir(parents=True, exist_ok=True)
        self._attempt_file(stage, key).write_text(attempt + "\n")
        return attempt

    def push(self, stage: str, key: str, attempt: Optional[str] = None) -> int:
        """Upload the local files of an unfinished artifact (never the manifest) into its build
        attempt's prefix (`attempt`, else this host's: Store.attempt); returns how many.

        Objects already there with the same size are skipped: an object store makes a write
        visible only once complete, so a same-sized object is a finished upload of this file."""
        if self.remote is None:
            return 0
        attempt = attempt or self.attempt(stage, key)
        if attempt is None:
            raise StoreError(f"{self.url(stage, key)}: no build attempt to upload into")
        prefix = remote_prefix(stage, key, attempt)
        out = self.dir(stage, key)
        there = self.remote.files(prefix)
        sent = 0
        # in write order: a stage's own per-part manifests (written after their part) stay last
        for rel, p in sorted(artifact_files(out), key=lambda item: item[1].stat().st_mtime_ns):
            if there.get(rel) != p.stat().st_size:
                self.remote.upload(p, f"{prefix}/{rel}")
                sent += 1
        return sent

    def pull(self, stage: str, key: str, attempt: Optional[str] = None) -> int:
        """Download files of an unfinished remote artifact missing locally; returns how many.
        With `attempt`, only that build's (outputs its workers wrote on other nodes); without,
        every earlier attempt's (a build resumed on another host: parts already uploaded)."""
        if self.remote is None:
            return 0
        out = self.dir(stage, key)
        got = 0
        for rel, (source, size) in self._uploaded(stage, key, attempt).items():
            p = member(out, rel, self.url(stage, key))
            if not p.is_file() or p.stat().st_size != size:
                self.remote.download(source, p)
                got += 1
        return got

    def _uploaded(self, stage: str, key: str, attempt: Optional[str]) -> dict[str, tuple[str, int]]:
        """{relative name: (remote path, size)} of the uploaded parts of an unfinished artifact."""
        found: dict[str, tuple[str, int]] = {}
        prefixes = [attempt] if attempt else [None, *self.remote.children(f"{stage}/{key}/{ATTEMPTS}")]
        for att in prefixes:
            base = remote_prefix(stage, key, att)
            for rel, size in self.remote.files(base).items():
                if att is None and (rel.startswith(f"{ATTEMPTS}/") or rel == MANIFEST):
                    continue  # the flat listing of a key holds the attempts and its manifest
                if rel.startswith(".") or "/.tmp" in rel or rel.rsplit("/", 1)[-1].startswith(TEMPORARY_PREFIX):
                    continue
                found.setdefault(rel, (f"{base}/{rel}", size))
        return found

    def get_or_build(self, stage: str, key: str, builder: Callable[[Path], dict], *,
                     config: Any, inputs: dict[str, str], extra: Optional[dict] = None,
                     in_place: bool = False) -> dict:
        """Return the manifest of (stage, key), building it first if needed.

        The lock makes concurrent builders of one key wait and then reuse; the builder may find
        partial output of an interrupted earlier attempt in its directory and resume from it
        (for a remote store, partial files already uploaded are pulled back first).

        `in_place`: the builder writes the artifact's files where they finally live (a remote
        store's key folder, as Ray Train's checkpoints are uploaded) and returns (stats, files),
        files being {relative name: {"bytes", "sha256"}}; nothing is pulled or uploaded here.
        """
        if self.is_done(stage, key):
            return self.manifest(stage, key)
        with self.lock(stage, key):
            if self.is_done(stage, key):
                return self.manifest(stage, key)
            out = self.dir(stage, key)
            out.mkdir(parents=True, exist_ok=True)
            (out / MANIFEST).unlink(missing_ok=True)  # of a commit whose files did not survive
            # under the lock no other builder of this key runs here: what an interrupted one
            # left is partial output to resume from, and temporaries that nothing will finish
            remove_temporaries(out)
            started = time.time()
            if in_place:
                stats, files = builder(out)
                return self.commit_in_place(stage, key, files, config=config, inputs=inputs, stats=stats,
                                            seconds=time.time() - started, extra=extra)
            if self.remote is not None:
                self.pull(stage, key)  # parts any earlier attempt uploaded
                self._begin_attempt(stage, key)
            stats = builder(out) or {}
            remove_temporaries(out)  # of writers stopped midway (a pool stopped at the budget)
            return self.commit(stage, key, config=config, inputs=inputs, stats=stats,
                               seconds=time.time() - started, extra=extra)

    def commit_in_place(self, stage: str, key: str, files: dict[str, dict], *, config: Any,
                        inputs: dict[str, str], stats: dict, seconds: float = 0.0,
                        extra: Optional[dict] = None) -> dict:
        """Write the manifest of an artifact whose files are already where they live (the key's own
        folder, local or remote), with the sizes and checksums its builder recorded."""
        manifest = self._manifest(stage, key, config, inputs, stats, files, seconds, extra)
        if self.remote is not None:
            there = self.remote.files(remote_prefix(stage, key, None))
            missing = [rel for rel, meta in files.items() if there.get(rel) != meta["bytes"]]
            if missing:
                raise StoreError(f"{self.url(stage, key)}: {missing[0]} is not in the store as its builder "
                                 f"recorded it (missing or another size)")
            self.remote.write_bytes(f"{stage}/{key}/{MANIFEST}", json_bytes(manifest))
        else:  # a remote store's cache holds only what this host wrote or read: not the artifact
            write_json_atomic(self.dir(stage, key) / MANIFEST, manifest)
        return manifest

    def _manifest(self, stage: str, key: str, config: Any, inputs: dict[str, str], stats: dict,
                  files: dict[str, dict], seconds: float, extra: Optional[dict]) -> dict:
        return {
            "stage": stage,
            "key": key,
            "config": config,
            "inputs": inputs,
            "stats": stats,
            "files": files,
            "bytes": sum(f["bytes"] for f in files.values()),
            "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cdray_version": package_version(),
            "git_sha": git_sha(),
            **(extra or {}),
        }

    def commit(self, stage: str, key: str, *, config: Any, inputs: dict[str, str], stats: dict,
               seconds: float = 0.0, extra: Optional[dict] = None) -> dict:
        """Write the manifest (file sizes and checksums included) last, atomically.

        Remote: files written on other nodes are pulled, every file is uploaded, and only then
        the manifest goes up; the local copy of the manifest marks the cache complete."""
        out = self.dir(stage, key)
        attempt = self.attempt(stage, key)
        if self.remote is not None:
            attempt = attempt or self._begin_attempt(stage, key)
            self.pull(stage, key, attempt)  # what this build's workers wrote on other nodes
        files = {}
        for rel, p in artifact_files(out):
            fsync_file(p)  # on the disk before the manifest that marks them committed
            files[rel] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for folder in {p.parent for _, p in artifact_files(out)}:
            fsync_dir(folder)
        manifest = self._manifest(stage, key, config, inputs, stats, files, seconds, extra)
        if self.remote is not None:
            manifest["attempt"] = attempt
            self.push(stage, key, attempt)
            self.remote.write_bytes(f"{stage}/{key}/{MANIFEST}", json_bytes(manifest))
        write_json_atomic(out / MANIFEST, manifest)
        return manifest

    def verify(self, stage: str, key: str) -> list[str]:
        """Names of files of a built artifact that are missing or whose checksum changed
        (remote: the objects are downloaded and checked, nothing is taken from the cache)."""
        manifest = self.manifest(stage, key)
        bad = []
        for rel, meta in manifest.get("files", {}).items():
            if self.remote is not None:
                name = f"{remote_prefix(stage, key, manifest.get('attempt'))}/{rel}"
                try:
                    ok = hashlib.sha256(self.remote.read_bytes(name)).hexdigest() == meta["sha256"]
                except OSError:
                    ok = False
                if not ok:
                    bad.append(self.remote.url(name))
                continue
            p = member(self.dir(stage, key), rel, self.url(stage, key))
            if not p.is_file() or p.stat().st_size != meta["bytes"] or file_sha256(p) != meta["sha256"]:
                bad.append(str(p))
        return bad

    def list(self, stage: Optional[str] = None) -> list[tuple[str, str]]:
        """(stage, key) of every built artifact."""
        if self.remote is not None:
            stages = [stage] if stage else [s for s in self.remote.children() if not s.startswith((".", "_"))]
            return [(s, k) for s in stages for k in self.remote.children(s)
                    if self.remote.exists(f"{s}/{k}/{MANIFEST}")]
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
