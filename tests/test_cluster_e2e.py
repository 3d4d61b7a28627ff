"""Laptop to cluster on one machine: `ray job submit` a sweep to a fake autoscaling cluster whose
store is on a local S3 server and whose runs go to an MLflow server; a resubmission builds nothing.

Everything it starts (MLflow server, Ray head with its autoscaler and fake worker nodes) is stopped
by PID at the end; it never runs `ray stop` (that would stop every Ray instance on the host).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from cdray.shell.local_cluster import SINGLE_HOST_ENV
from cdray.tracking import server as mlflow_server
from tests.conftest import S3_ENV, micro_sweep_dict, s3_uri

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.slow


def _session_pids(sid: int) -> list[int]:
    """Every process of one session: `ray start --block` and all it spawned (workers included)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the command: state ppid pgrp session ...
            pids.append(int(d.name))
    return pids


def _kill_session(sid: int, timeout: float = 30.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while _session_pids(sid) and time.time() < deadline:
            time.sleep(0.5)
        if not _session_pids(sid):
            return


class FakeCluster:
    """A Ray head from cluster/fake.yaml on private ports and its own temp dir."""

    def __init__(self, tmp: Path):
        import ray._private.services as services

        self.tmp = tmp
        self.ip = services.node_ip_address_from_perspective()  # this session's own nodes are on loopback
        self.gcs_port = mlflow_server.free_port()
        self.dashboard_port = mlflow_server.free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        cfg = yaml.safe_load((ROOT / "cluster" / "fake.yaml").read_text())
        cfg["provider"]["gcs_address"] = f"{self.ip}:{self.gcs_port}"  # not the default 6379
        self.config = tmp / "fake.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_FAKE_CLUSTER": "1",
                    "RAY_API_SERVER_ADDRESS": self.address, "RAY_ADDRESS": ""}
        self.env.pop("RAY_ADDRESS")
        self.env.pop(SINGLE_HOST_ENV, None)  # a cluster (nodes join it), not a single-host local run
        # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep
        self.temp_dir = Path(tempfile.mkdtemp(prefix="cdray-ray-", dir="/tmp"))
        self.proc = None

    def start(self, timeout: float = 240.0) -> None:
        # not --block: with it, any Ray subprocess exiting takes the whole head down; the processes
        # keep the session of this Popen (start_new_session), which is how stop() finds them
        cmd = [RAY, "start", "--head", "--num-cpus=0", f"--port={self.gcs_port}",
               f"--ray-client-server-port={mlflow_server.free_port()}",
               f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", f"--dashboard-agent-listen-port={mlflow_server.free_port()}",
               f"--temp-dir={self.temp_dir}", f"--autoscaling-config={self.config}",
               "--disable-usage-stats"]
        self.log = open(self.tmp / "ray-start.log", "wb")
        # a loaded machine can miss ray start's fixed 30 s raylet deadline: retry, after stopping
        # whatever the failed attempt left running
        for attempt in range(3):
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            if self.proc.wait(timeout) == 0:
                break
            _kill_session(self.proc.pid)
        else:
            raise RuntimeError(f"ray start failed: {(self.tmp / 'ray-start.log').read_text()[-3000:]}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:  # any HTTP answer (401 without a token) means the dashboard is serving
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2).close()
            except urllib.error.HTTPError:
                pass
            except OSError:
                time.sleep(2)
                continue
            if self.cli("job", "list").returncode == 0:
                return
            time.sleep(2)
        raise RuntimeError("fake cluster did not come up")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def worker_nodes(self) -> set[str]:
        """Ids of every non-head node the cluster has had (alive or already scaled down)."""
        out = self.cli("list", "nodes", "--address", self.address, "--format", "json", "--limit", "100")
        if out.returncode != 0:
            return set()
        try:
            nodes = json.loads(out.stdout)
        except json.JSONDecodeError:
            return set()
        return {n["node_id"] for n in nodes if not n.get("is_head_node")}

    def stop(self) -> None:
        if self.proc is not None:
            _kill_session(self.proc.pid)
            self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def mlflow_url(tmp_path):
    port = mlflow_server.free_port()
    proc = mlflow_server.start(tmp_path / "mlflow", port)
    url = f"http://127.0.0.1:{port}"
    try:
        mlflow_server.wait_ready(url, proc=proc)
        yield url
    finally:
        mlflow_server.stop(proc)


@pytest.fixture
def fake_cluster(tmp_path):
    cluster = FakeCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _rest(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _submit_and_wait(cluster: FakeCluster, sweep: Path, env_vars: dict, timeout: float = 1500) -> tuple[str, set]:
    """Submit the sweep as a Ray job, wait for a final state; returns (logs, worker nodes seen)."""
    sid = f"cdray-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": env_vars}
    out = cluster.cli("job", "submit", "--no-wait", f"--submission-id={sid}", "--working-dir", str(ROOT),
                      "--runtime-env-json", json.dumps(runtime_env), "--",
                      sys.executable, "-m", "cdray.cli", "sweep", str(sweep), "--profile", "cluster")
    assert out.returncode == 0, out.stdout + out.stderr
    seen: set[str] = set()
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        seen |= cluster.worker_nodes()
        st = cluster.cli("job", "status", sid)
        status = (st.stdout + st.stderr).lower()  # "Job 'X' succeeded" / "failed" / "stopped"
        if any(f"' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(10)
    logs = cluster.cli("job", "logs", sid).stdout
    assert "' succeeded" in status, f"job {sid} did not succeed:\n{status[-1500:]}\n{logs[-4000:]}"
    return logs, seen


def test_job_submit_sweep_on_fake_autoscaling_cluster(tmp_path, text_corpus_dir, s3_server, mlflow_url,
                                                     fake_cluster):
    endpoint, bucket = s3_server
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    store_uri = s3_uri(endpoint, bucket, prefix)
    sweep = micro_sweep_dict(text_corpus_dir, tmp_path / "laptop", strategy=["contrastive"], q=[0.0, 0.5])
    sweep["generation"]["min_actors"] = 1
    # the laptop settings stay in the file; the profile moves the sweep to the cluster
    sweep["profiles"] = {"cluster": {"store": {"root": store_uri},
                                     "tracking": {"uri": mlflow_url},
                                     # one host: every node sees the corpus at the laptop's path
                                     "ray": {"address": "auto", "max_concurrent_cells": 2, "shared_disk": True}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    env_vars = {**S3_ENV, "MLFLOW_TRACKING_URI": mlflow_url, "CDRAY_CACHE": str(tmp_path / "node-cache"),
                "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

    logs, seen = _submit_and_wait(fake_cluster, path, env_vars)
    assert seen, "the autoscaler added no worker node while the job ran"
    assert "to build" in logs

    # parent and child runs on the MLflow server, over its REST API
    exp = _rest(mlflow_url, "experiments/get-by-name?experiment_name=test")["experiment"]
    runs = _rest(mlflow_url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("cdray.kind") == "sweep"]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r, t in zip(runs, tags) if t.get("mlflow.parentRunId") == parent_id]
    assert len(children) == 2  # BASELINE and CD-EARLY-4 at q=0.5
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        assert "final_ppl" in {m["key"] for m in child["data"]["metrics"]}

    # the artifacts are in the bucket, each with its manifest
    from cdray.dag.store import MANIFEST, Store

    store = Store.at(store_uri, cache=tmp_path / "check-cache")
    built = store.list()
    stages = {s for s, _ in built}
    assert {"corpus", "tokenizer", "tokens", "prompts", "train", "generate", "evaluate"} <= stages
    assert len([k for s, k in built if s == "evaluate"]) == 2
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}")
    objects = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/evaluate/")["Contents"]
    assert sum(o["Key"].endswith(MANIFEST) for o in objects) == 2

    def manifest_times() -> dict:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        return {o["Key"]: o["LastModified"] for p in pages for o in p.get("Contents", [])
                if o["Key"].endswith(MANIFEST)}

    before = manifest_times()

    # the same submission again: everything is cached, nothing is rebuilt or rewritten
    logs2, _ = _submit_and_wait(fake_cluster, path, env_vars, timeout=600)
    assert " 0 to build" in logs2 and "building" not in logs2
    assert manifest_times() == before
