"""Helpers shared by the benchmarks: a patient Ray start on loopback and the host-load line."""
from __future__ import annotations

import os
import time

from cdray.config import RayConfig
from cdray.shell.local_cluster import keep_on_loopback

# a benchmark's local Ray cluster listens on loopback only, as `cdray sweep`'s does (Ray reads the
# setting when it is imported, so before any benchmark imports it)
keep_on_loopback(RayConfig())


def start_ray(num_cpus: int = 2, attempts: int = 3) -> None:
    """Start cdray's local Ray cluster, retrying: on an overloaded host the raylet can miss Ray's 30 s
    start-up deadline (a fixed constant), which says nothing about the benchmark itself."""
    import ray

    from cdray.shell.ray_exec import init_ray

    for attempt in range(1, attempts + 1):
        try:
            init_ray(RayConfig(num_cpus=num_cpus))
            return
        except Exception as e:  # ray raises a bare Exception on the start-up timeout
            if attempt == attempts:
                raise
            print(f"  (Ray start-up failed: {e}; retrying)")
            ray.shutdown()
            time.sleep(10)


def load_line() -> str:
    a, b, c = os.getloadavg()
    return (f"host: {os.cpu_count()} CPUs, load average {a:.1f} {b:.1f} {c:.1f} "
            f"(a shared machine: compare only numbers measured side by side in one run)")
