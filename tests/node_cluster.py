"""A multi-node Ray cluster on this host that behaves like one: every node has a disk of its own,
nodes die as a spot preemption kills them, and what they share goes through the store (an S3 server).

Each node is `ray start` run inside a mount namespace of its own (`unshare --mount`) in which the
node's private folder is bind-mounted over /tmp: every node, and the driver, sees its own /tmp (its
own Ray session dir, its own `$CDRAY_CACHE=/tmp/cdray-cache`, its own copy of anything a stage
writes there), at the same path on every node, as machines of a real cluster do. A file one node
writes under /tmp is invisible to the others and to the driver; a test (in the host's namespace)
reads each node's disk at `node_dir(name)`. A test's own tmp_path (under the host's /tmp) does not
exist on any node, so inputs must reach them through the store.

Why not `ray.cluster_utils.Cluster`: it starts every raylet from the test's own process, so its
nodes share that process's filesystem view (no node can have a disk of its own), and
`remove_node` stops a raylet gracefully; here a node is its own process tree, killed with SIGKILL.

Killing a node SIGKILLs every process of its session (the raylet, its workers, their children),
which is what a reclaimed spot instance does. Nothing here runs `ray stop` (it would stop every
Ray instance on the host, the test session's own included).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
LOCAL = "/tmp"  # every node's own disk, at the same path on every node
NODE_CACHE = f"{LOCAL}/cdray-cache"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def namespaces_work() -> Optional[str]:
    """None when a private mount namespace can be made here, else why not."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "util-linux's unshare/nsenter are not installed"
    prefix = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    probe = subprocess.run(["unshare", *prefix, "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --mount fails here: {probe.stderr.strip()}"


def session_pids(sid: int) -> list[int]:
    """Every live process of one session (a node: its `ray start`, raylet, workers and children)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after the command: state ppid pgrp session
            pids.append(int(d.name))
    return pids


def kill_session(sid: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    while session_pids(sid) and time.time() < deadline:
        time.sleep(0.2)


class NodeCluster:
    """A Ray head (no CPUs: it runs the driver, as a cloud head does) and worker nodes, each in a
    mount namespace with a private /tmp; `env` goes to every node and to drivers."""

    def __init__(self, base: Path, env: Optional[dict] = None):
        import ray._private.services as services

        self.base = Path(base)
        self.ip = services.node_ip_address_from_perspective()  # not loopback: a cluster's nodes meet there
        self.port = free_port()
        self.address = f"{self.ip}:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # nodes join it: not a single-host cluster
        self.env.update({"RAY_AUTH_MODE": "token", "CDRAY_CACHE": NODE_CACHE, "HF_HOME": f"{LOCAL}/hf",
                         "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                         "RAY_USAGE_STATS_ENABLED": "0", **(env or {})})
        self.nodes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self._unshare = ["unshare"] + ([] if os.geteuid() == 0 else ["--user", "--map-root-user"])

    # ------------------------------------------------------------ nodes

    def node_dir(self, name: str) -> Path:
        """What node `name` holds at /tmp, as seen from the test (the host's namespace)."""
        return self.base / "nodes" / name

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        disk = self.node_dir(name)
        disk.mkdir(parents=True, exist_ok=True)
        common = ["--disable-usage-stats", f"--node-ip-address={self.ip}", "--object-store-memory=150000000",
                  f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                  f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                  f"--min-worker-port={20000 + 1000 * len(self.nodes)}",
                  f"--max-worker-port={20999 + 1000 * len(self.nodes)}", "--block"]
        script = f"mount --bind {shlex.quote(str(disk))} {LOCAL} && exec {shlex.join([RAY, 'start', *args, *common])}"
        self.logs[name] = self.base / f"{name}-{sum(1 for _ in self.base.glob(f'{name}-*.log'))}.log"
        log = open(self.logs[name], "wb")
        return subprocess.Popen([*self._unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 120.0) -> "NodeCluster":
        self.nodes["head"] = self._start("head", [
            "--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
            f"--temp-dir={LOCAL}/ray", f"--ray-client-server-port={free_port()}"])
        self._wait(lambda: self._started("head"), timeout, "the head")
        return self

    def add_node(self, name: str, cpus: int = 1, resources: Optional[dict] = None,
                 wait: bool = True, timeout: float = 120.0) -> None:
        """A worker node with `cpus` CPUs and a custom resource `node:<name>` (to pin work to it)."""
        assert name not in self.nodes or self.nodes[name].poll() is not None, f"node {name} is running"
        res = {f"node:{name}": 1, **(resources or {})}
        self.nodes[name] = self._start(name, [f"--address={self.address}", f"--num-cpus={cpus}",
                                              f"--resources={json.dumps(res)}"])
        if wait:
            self._wait(lambda: self._started(name), timeout, f"node {name}")

    def kill(self, name: str) -> None:
        """SIGKILL every process of node `name` at once, as a reclaimed spot instance dies."""
        kill_session(self.nodes[name].pid)
        self.nodes[name].wait(30)

    def _started(self, name: str) -> bool:
        """`ray start --block` says so once its node has registered with the cluster."""
        if self.nodes[name].poll() is not None:
            self._fail(name)
        return b"Ray runtime started" in self.logs[name].read_bytes()

    def alive(self) -> set[str]:
        """Names of the worker nodes the cluster sees alive (asked by a short driver on the head)."""
        out = self.run_python("import json, ray; ray.init(address='auto', log_to_driver=False); "
                              "print(json.dumps([sorted(n['Resources']) for n in ray.nodes() if n['Alive']]))",
                              timeout=120)
        if out.returncode != 0:
            return set()
        lines = out.stdout.strip().splitlines()
        names = set()
        for resources in json.loads(lines[-1]):
            names |= {r.split(":", 1)[1] for r in resources
                      if r.startswith("node:") and not r.startswith("node:__") and r[5:6].isalpha()}
        return names

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not come up in {timeout:.0f} s; logs in {self.base}")

    def _fail(self, name: str) -> bool:
        raise RuntimeError(f"node {name} exited: {self.logs[name].read_text(errors='replace')[-3000:]}")

    # ------------------------------------------------------------ drivers

    def driver(self, argv: list[str], env: Optional[dict] = None, log: Optional[Path] = None,
               cwd: Optional[Path] = None) -> subprocess.Popen:
        """A driver process on the head (in its namespace: the head's /tmp), attached to the cluster;
        `cwd`: the checkout it runs from (`python -m` imports from there first)."""
        head = self.nodes["head"].pid
        out = open(log, "ab") if log else subprocess.PIPE
        return subprocess.Popen(["nsenter", f"--mount=/proc/{head}/ns/mnt", "--", *argv],
                                env={**self.env, "RAY_ADDRESS": self.address, **(env or {})}, cwd=str(cwd or ROOT),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                text=log is None)

    def run_python(self, code: str, *args: str, env: Optional[dict] = None,
                   timeout: float = 600) -> subprocess.CompletedProcess:
        proc = self.driver([sys.executable, "-c", code, *args], env=env)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            out, _ = proc.communicate()
            return subprocess.CompletedProcess(proc.args, -9, out, "")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")

    def stop(self) -> None:
        for proc in self.nodes.values():
            kill_session(proc.pid)
        self.nodes.clear()
        shutil.rmtree(self.base, ignore_errors=True)


def make_cluster(tmp_root: Optional[Path] = None, env: Optional[dict] = None) -> NodeCluster:
    # Ray's socket paths must stay under 107 bytes: a short folder
    base = Path(tempfile.mkdtemp(prefix="cdray-nodes-", dir=str(tmp_root) if tmp_root else "/tmp"))
    return NodeCluster(base, env)
