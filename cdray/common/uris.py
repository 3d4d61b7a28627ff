"""Store roots as URIs: which are remote (a pyarrow.fs scheme) and whether one is usable, asked
without touching the network."""
from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit

# schemes pyarrow.fs.FileSystem.from_uri understands (plus aliases); anything else is a local path
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "mock")


def is_remote(root: str) -> bool:
    """True for `scheme://...` roots other than file://; a bare path (or file://) is local."""
    scheme = urlsplit(str(root)).scheme
    return "://" in str(root) and scheme not in ("", "file")


def check_uri(root: str) -> Optional[str]:
    """None if `root` is a usable store root, else why not (no network access)."""
    if not is_remote(root):
        return None
    parts = urlsplit(root)
    if parts.scheme not in REMOTE_SCHEMES:
        return f"scheme {parts.scheme!r} is not a pyarrow.fs scheme ({', '.join(REMOTE_SCHEMES)})"
    if not parts.netloc and parts.scheme not in ("mock", "hdfs", "viewfs"):
        return "a bucket (or host) is required, e.g. s3://bucket/prefix"
    return None
