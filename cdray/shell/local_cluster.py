"""Whether a run starts its own Ray cluster, and keeping that cluster's servers on loopback."""
from __future__ import annotations

import ipaddress
import os
import sys

from cdray.config import RayConfig

# Ray binds the GCS, raylet, worker and agent servers to the node's IP. On a host that Ray takes
# for a single-node one (macOS and Windows, unless this variable is set) that IP is loopback;
# "0" makes Ray take Linux for one too. Ray reads it once, when it is imported.
SINGLE_HOST_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# set by `ray job submit` in the job's driver
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_job() -> bool:
    return bool(os.environ.get(JOB_ENV))


def cluster_address(rcfg: RayConfig) -> str | None:
    """The cluster a run attaches to: ray.address, else $RAY_ADDRESS; None starts a local one
    (unless the run is a `ray job submit` job, which runs on its cluster)."""
    return rcfg.address or os.environ.get("RAY_ADDRESS") or None


def starts_local_cluster(rcfg: RayConfig) -> bool:
    return cluster_address(rcfg) is None and not in_job()


def keep_on_loopback(rcfg: RayConfig) -> bool:
    """Before ray is imported: make the local cluster a run will start listen on loopback only.

    Returns whether the setting takes effect (False when the run attaches to a cluster, which is
    left as it is, or when ray was imported already)."""
    if not starts_local_cluster(rcfg) or "ray" in sys.modules:
        return False
    os.environ[SINGLE_HOST_ENV] = "0"
    return True


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1 and their IPv4-mapped form (::ffff:127.0.0.1, how a dual-stack socket
    bound to 127.0.0.1 is listed), or "localhost"."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip == "localhost"
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
