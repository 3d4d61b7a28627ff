"""Torch process groups of Ray Train workers on a loopback-only node: the rendezvous store and
the gloo / NCCL sockets listen on loopback too."""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

import ray
from ray.exceptions import GetTimeoutError
from ray.train.backend import Backend
from ray.train.torch import TorchConfig

from cdray.shell.local_cluster import is_loopback

LOOPBACK = "127.0.0.1"
SHUTDOWN_TIMEOUT_S = 30
logger = logging.getLogger(__name__)

# rank 0's rendezvous server, held by its worker process for as long as its process group lives
_server: object | None = None


def loopback_interface() -> str:
    """The name of the interface that holds 127.0.0.1 (`lo` on Linux, `lo0` on macOS)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addresses):
            return name
    raise OSError(f"no network interface holds {LOOPBACK}")


def _serve_rendezvous(world_size: int, timeout_s: int) -> int:
    """Start rank 0's TCPStore on a socket bound to loopback and return its port. torch's own
    server listens on every interface; given a listening socket it serves on that one instead."""
    import torch.distributed as dist

    global _server
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen()
    port = listener.getsockname()[1]
    _server = dist.TCPStore(LOOPBACK, port, world_size, is_master=True, timeout=timedelta(seconds=timeout_s),
                            wait_for_workers=False, master_listen_fd=listener.detach())  # the store owns it
    return port


def _join(backend: str, port: int, rank: int, world_size: int, timeout_s: int) -> None:
    import torch.distributed as dist

    ctx = ray.train.get_context()
    interface = loopback_interface()
    os.environ.update({"MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(ctx.get_local_rank()),
                       "LOCAL_WORLD_SIZE": str(ctx.get_local_world_size()), "NODE_RANK": "0",
                       "GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface})
    timeout = timedelta(seconds=timeout_s)
    store = _server if rank == 0 else dist.TCPStore(LOOPBACK, port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def _leave(destroy: bool) -> None:
    import torch.distributed as dist

    global _server
    if destroy and dist.is_initialized():
        dist.destroy_process_group()
    _server = None


class _LoopbackTorchBackend(Backend):
    share_cuda_visible_devices = True

    def on_start(self, worker_group, backend_config: LoopbackTorchConfig) -> None:
        # worker i is rank i (as in Ray's own torch setup): worker 0 serves the rendezvous
        port = worker_group.execute_single(0, _serve_rendezvous, len(worker_group), backend_config.timeout_s)
        world_size = len(worker_group)
        ray.get([worker_group.execute_single_async(i, _join, backend_config.backend, port, i, world_size,
                                                   backend_config.timeout_s) for i in range(world_size)])

    def on_shutdown(self, worker_group, backend_config: LoopbackTorchConfig) -> None:
        # as Ray's own torch setup: a one-worker group's is left to its process's exit, and a
        # worker stuck in shutdown does not hold up the run
        try:
            ray.get(worker_group.execute_async(_leave, len(worker_group) > 1), timeout=SHUTDOWN_TIMEOUT_S)
        except GetTimeoutError:
            logger.warning("the torch process group did not shut down within %d s", SHUTDOWN_TIMEOUT_S)


class LoopbackTorchConfig(TorchConfig):
    """TorchConfig whose process group listens on loopback only (every worker on this node)."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


def torch_config(backend: str) -> TorchConfig:
    """Ray Train's torch setup for a training run started from this node: on a node that listens
    on loopback only (a local run's cluster) the process group does too; elsewhere Ray's own."""
    local = is_loopback(ray.util.get_node_ip_address())
    return (LoopbackTorchConfig if local else TorchConfig)(backend=backend)
