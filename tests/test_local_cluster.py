"""A local run exposes nothing to the network: every socket its Ray cluster and its training
process groups listen on is a loopback one; runs that attach to a cluster are left as they are."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cdray.config import RayConfig
from cdray.shell.local_cluster import JOB_ENV, SINGLE_HOST_ENV, is_loopback, keep_on_loopback

ROOT = Path(__file__).resolve().parent.parent


def _listening(pids: set[int]) -> dict[tuple[str, int], int]:
    """Every TCP socket listening now, owned by one of `pids`: (address, port) -> pid."""
    import psutil

    return {(c.laddr.ip, c.laddr.port): c.pid for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _tree(pid: int) -> dict[int, str]:
    """A process and all its descendants: pid -> command line (Ray names its workers there)."""
    import psutil

    out = {}
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            out[p.pid] = " ".join(p.cmdline())
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("where", ["ray.address", "RAY_ADDRESS", "job"])
def test_a_run_that_attaches_to_a_cluster_is_left_as_it_is(where, monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # as in a fresh `cdray run`
    monkeypatch.delenv(SINGLE_HOST_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rcfg = RayConfig(address="10.0.0.5:6379" if where == "ray.address" else None)
    if where == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    if where == "job":
        monkeypatch.setenv(JOB_ENV, "{}")
    assert not keep_on_loopback(rcfg)
    assert SINGLE_HOST_ENV not in os.environ


def test_a_run_that_starts_its_own_cluster_keeps_it_on_loopback(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    for name in (SINGLE_HOST_ENV, "RAY_ADDRESS", JOB_ENV):
        monkeypatch.delenv(name, raising=False)
    assert keep_on_loopback(RayConfig())
    assert os.environ[SINGLE_HOST_ENV] == "0"


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "10.0.0.5", "", "lo"]))


@pytest.mark.slow
def test_a_local_run_listens_on_loopback_only(micro_cfg_dict, tmp_path):
    """`cdray sweep` on a local cluster (Ray Tune, Train, Data, MLflow): every listening socket
    of the driver and everything it started, sampled through the whole run, is on loopback."""
    # every kind of process a sweep starts (Tune, Train, Data's actors, MLflow), in the fewest
    # stages: the GOOD, one corpus, a BASELINE and a mixed cell
    d = micro_cfg_dict | {"grid": {"k": [], "strategy": ["no_contrast"], "q": [0.0, 0.5], "seed": [42]}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(d))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop(SINGLE_HOST_ENV, None)  # the CLI must set it itself
    proc = subprocess.Popen([sys.executable, "-m", "cdray.cli", "sweep", "sweep.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[tuple[str, int], str] = {}
    deadline = time.time() + 600
    while proc.poll() is None:
        assert time.time() < deadline, "the micro sweep did not finish"
        try:
            tree = _tree(proc.pid)
            for address, pid in _listening(set(tree)).items():
                seen.setdefault(address, tree.get(pid, "?"))
        except Exception:  # noqa: BLE001, S110 - a process that ended while it was read: sample again
            pass
        time.sleep(0.25)
    out = proc.stdout.read()
    assert proc.returncode == 0, out[-3000:]
    exposed = {f"{ip}:{port}": cmd[:80] for (ip, port), cmd in seen.items() if not is_loopback(ip)}
    assert not exposed, exposed
    commands = " ".join(seen.values())
    for server in ("gcs_server", "raylet", "RayTrainWorker"):  # the sampling saw what it must check
        assert server in commands, sorted(seen.values())


@pytest.mark.slow
def test_the_process_group_of_two_local_train_workers_is_on_loopback(ray_session, tmp_path):
    """Two Ray Train workers on the session's loopback node: rendezvous, gloo all-reduce and
    barrier work, and neither worker listens anywhere but loopback."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cdray.shell.process_group import LoopbackTorchConfig, torch_config

    assert isinstance(torch_config("gloo"), LoopbackTorchConfig)

    def loop(config):
        import psutil
        import torch
        import torch.distributed as dist

        from cdray.shell.local_cluster import is_loopback

        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        dist.barrier()
        listening = [c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN]
        return {"sum": value.item(), "listening": len(listening),
                "exposed": [ip for ip in listening if not is_loopback(ip)]}

    trainer = TorchTrainer(loop, torch_config=torch_config("gloo"),
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(name="loopback-pg", storage_path=str(tmp_path)))
    result = trainer.fit()
    assert result.error is None, result.error
    rank0 = result.return_value
    assert rank0["sum"] == 3.0  # 1 + 2: both ranks took part
    assert rank0["listening"] >= 2 and not rank0["exposed"], rank0  # the store's and gloo's, on loopback


@pytest.mark.slow
def test_a_cluster_started_after_ray_was_imported_is_named_as_exposed():
    """Ray reads the setting once, on import: a Python caller that imported ray first gets a
    local cluster on every interface, and a warning that says so and how to avoid it."""
    code = ("import ray\n"
            "from cdray.config import RayConfig\n"
            "from cdray.shell.ray_exec import init_ray\n"
            "init_ray(RayConfig(num_cpus=1))\n"
            "ray.shutdown()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(SINGLE_HOST_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[cdray] warning: this local Ray cluster listens on" in out.stdout, out.stdout
    assert f"set {SINGLE_HOST_ENV}=0 before importing ray" in out.stdout
