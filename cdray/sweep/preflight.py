"""Before a sweep is planned or run: every data folder it reads exists, and on a multi-node cluster
none of them, nor the store or the tracking database, is a path on one machine's disk (a
ConfigError naming the field)."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit
from typing import Callable, Optional

from cdray.common.redaction import mask_uri
from cdray.common.uris import is_remote
from cdray.config import ConfigError, SweepConfig
from cdray.data import folders
from cdray.data.source_files import resolve, source_field, source_location, unpinned_notes
from cdray.shell.local_cluster import cluster_address, in_job

Echo = Callable[[str], None]

SHARED_HINT = ("put it in a bucket (an s3:// or gs:// URI; docs/cluster.md), or set ray.shared_disk: true "
               "if every node sees the same files at the same path (an NFS mount, a one-node cluster)")


def multi_node(cfg: SweepConfig) -> Optional[str]:
    """Why this run's stages may land on other machines (None: a local cluster it starts)."""
    if cfg.ray.address:
        return f"ray.address is {mask_uri(cfg.ray.address)!r}"
    if cluster_address(cfg.ray):
        return "$RAY_ADDRESS is set"
    if in_job():
        return "it runs as a `ray job submit` job"
    return None


def check_data(cfg: SweepConfig, echo: Optional[Echo] = None) -> None:
    """Refuse, naming the field, a data folder (corpus source, eval.babylm_dir) that does not
    exist, and a local one or a local store.root when the run targets a multi-node cluster
    (unless ray.shared_disk); echo a note per hub dataset whose key cannot follow its data."""
    cluster = None if cfg.ray.shared_disk else multi_node(cfg)

    def reachable(field: str, location: str, missing: Optional[str]) -> None:
        """missing: what the error adds when the folder does not exist (None: not checked)."""
        if cluster is not None and not is_remote(location):
            raise ConfigError(field, f"{location!r} is a path on this machine, but {cluster} (a multi-node "
                                     f"cluster whose nodes have disks of their own): {SHARED_HINT}")
        if missing is not None and not folders.exists(location):
            raise ConfigError(field, f"{mask_uri(location)!r}: no such folder{missing}")

    def under(written: str) -> str:
        if is_remote(written) or Path(written).expanduser().is_absolute() or not cfg.data_root:
            return ""
        return f" (a relative path is under data_root {mask_uri(cfg.data_root)!r})"

    reachable("store.root", cfg.store.root, None)
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    if cluster is not None and cfg.tracking.enabled:
        where = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
        server = tracking.startswith(("http://", "https://", "databricks"))
        if not server:
            raise ConfigError(where, f"{mask_uri(tracking)!r} is a file on one machine, but {cluster}: cells on "
                                     f"other nodes would each log to a database of their own; use an MLflow "
                                     f"server (`cdray mlflow` on the head; docs/cluster.md), or set ray.shared_disk: true")
        host = urlsplit(tracking).hostname or ""
        if server and (host == "localhost" or host.startswith("127.") or host == "::1"):
            raise ConfigError(where, f"{mask_uri(tracking)!r} is this machine's loopback, but {cluster}: cells on "
                                     f"other nodes would not reach it; give the server's address on the cluster "
                                     f"network (the job's $MLFLOW_TRACKING_URI wins over tracking.uri; docs/cluster.md)")
    for i, src in enumerate(cfg.corpus.sources):
        location = source_location(src, cfg.data_root)
        if location is not None:
            name = source_field(src)
            reachable(f"corpus.sources[{i}].{name}", location, under(getattr(src, name)))
    if cfg.eval.babylm_dir:
        reachable("eval.babylm_dir", resolve(cfg.eval.babylm_dir, cfg.data_root),
                  under(cfg.eval.babylm_dir) + " (cdray data fetch-eval downloads the BabyLM evaluation data there)")
    for note in unpinned_notes(cfg.corpus.sources, cfg.data_root):
        if echo is not None:
            echo(f"note: {note}")
