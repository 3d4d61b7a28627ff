"""Nodes lost mid-stage on a cluster that behaves like one (tests/node_cluster.py: every node with a
disk of its own, the store on an S3 server): a training run, a synthetic corpus and a cell's
evaluation complete on the nodes left, from what the store holds, to the bytes of a run that lost
nothing."""
from __future__ import annotations

import hashlib
import json
import pickle
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from cdray import config as C
from cdray.common import faults
from cdray.dag import builders
from cdray.dag.graph import build_graph
from cdray.dag.store import Store
from tests.conftest import BABYLM_SAMPLE, S3_ENV, micro_sweep_dict, s3_uri
from tests.node_cluster import NODE_CACHE, make_cluster, namespaces_work

pytestmark = pytest.mark.slow

# a node's death is seen in seconds, not Ray's default half a minute
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                      "RAY_health_check_failure_threshold": "3"}
WORKERS = 3  # worker nodes kept alive for each test (one CPU each)
needs_eval_data = pytest.mark.skipif(not BABYLM_SAMPLE.is_dir(), reason="no BabyLM evaluation sample")


@pytest.fixture(scope="module")
def nodes(s3_server):
    why = namespaces_work()
    if why is not None:
        pytest.skip(f"a cluster of nodes with disks of their own needs mount namespaces: {why}")
    cluster = make_cluster(env={**S3_ENV, **FAST_HEALTH_CHECKS})
    try:
        cluster.start()
        for name in ("a", "b", "c"):
            cluster.add_node(name, cpus=1)
        yield cluster
    finally:
        cluster.stop()


def _replace_lost(cluster) -> None:
    """Bring the cluster back to WORKERS live worker nodes (a replacement, as an autoscaler would)."""
    live = [n for n, p in cluster.nodes.items() if n != "head" and p.poll() is None]
    for i in range(WORKERS - len(live)):
        cluster.add_node(f"r{uuid.uuid4().hex[:6]}", cpus=1)


def _node_cache(cluster, node: str, root: str) -> Path:
    """A node's local cache of the store at `root`, as the test sees that node's disk."""
    local = Path(NODE_CACHE).relative_to("/tmp")
    return cluster.node_dir(node) / local / "stores" / hashlib.sha256(root.encode()).hexdigest()[:12]


def _workers(cluster) -> list[str]:
    return [n for n, p in cluster.nodes.items() if n != "head" and p.poll() is None]


def _wait_for(what: str, ready, timeout: float = 300, proc=None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = ready()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver ended before {what}:\n{log.read_text()[-4000:] if log else ''}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:] if log else ''}")


def _held_on(cluster, rel_dir: str, root: str, where: str, at: int) -> str | None:
    """The node whose process is held at (where, at), if one is."""
    for name in _workers(cluster):
        if faults.held_path(_node_cache(cluster, name, root) / rel_dir, where, at).exists():
            return name
    return None


def _release_everywhere(cluster, rel_dir: str, root: str, where: str, at: int) -> None:
    for name in _workers(cluster):
        faults.pause_path(_node_cache(cluster, name, root) / rel_dir, where, at).unlink(missing_ok=True)


def _build_inputs(node, cfg, store: Store, including: bool = False) -> None:
    """Build a node's inputs here (in this process, no Ray) into the store: the nodes read them there."""
    for n in node.walk():
        if including or n is not node:
            builders.build(n, cfg, store)


def _s3_text(endpoint: str, bucket: str, key: str) -> str | None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}")
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except s3.exceptions.NoSuchKey:
        return None


# ---------------------------------------------------------------- training

TRAIN_DRIVER = """
import json, pickle, sys, ray
from cdray.dag import builders
from cdray.dag.store import Store
from cdray.shell.train_run import fit_training
node, cfg = pickle.loads(open(sys.argv[1], "rb").read())
ray.init(address="auto", log_to_driver=False)
store = Store.at(cfg.store.root, cfg.store.cache)
m = builders.build(node, cfg, store, builder=fit_training, in_place=True)
print("RESULT " + json.dumps({"steps": m["stats"]["steps"], "timed": m["stats"]["throughput"]["timed_steps"]}))
"""


def _ddp_rank(rank: int, init_file: str, job, out: Path) -> None:
    from cdray.models.training import train

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        train(job, out, rank=rank, world_size=2)
    finally:
        torch.distributed.destroy_process_group()


def test_preempt_rank_0s_node_and_the_run_resumes_from_its_milestone_on_the_nodes_left(
        nodes, s3_server, text_corpus_dir, tmp_path):
    """A 2-worker run (gloo) across two of three nodes; the node of rank 0 is killed after its
    second milestone is committed: Ray Train restarts the worker group on the two nodes left, every
    rank resumes from that milestone (downloaded from the store by each node), and the final
    weights equal an uninterrupted run's bit for bit."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    endpoint, bucket = s3_server
    prefix = f"preempt-train-{uuid.uuid4().hex[:8]}"
    root = s3_uri(endpoint, bucket, prefix)
    d = micro_sweep_dict(text_corpus_dir, tmp_path)
    d["train"] |= {"steps": 16, "checkpoint_every": 4, "num_workers": 2}
    d["store"] = {"root": root, "cache": str(tmp_path / "here")}
    cfg = C.from_dict(d)
    store = Store.at(cfg.store.root, cfg.store.cache)
    node = build_graph(cfg).good
    _build_inputs(node, cfg, store)

    mp.spawn(_ddp_rank, args=(str(tmp_path / "init"), builders.train_job(node, cfg, store), tmp_path / "ref"),
             nprocs=2)

    on_nodes = C.from_dict({**d, "store": {"root": root}})  # each node's own cache
    job_file = nodes.node_dir("head") / f"job-{uuid.uuid4().hex[:8]}.pkl"
    job_file.write_bytes(pickle.dumps((node, on_nodes)))
    rel = f"train/{node.key}"
    for name in _workers(nodes):
        faults.hold(_node_cache(nodes, name, root) / rel, "train-step-rank0", 9)
    log = tmp_path / "driver.log"
    proc = nodes.driver([sys.executable, "-c", TRAIN_DRIVER, f"/tmp/{job_file.name}"], log=log)
    try:
        victim = _wait_for("rank 0 to reach step 9", lambda: _held_on(nodes, rel, root, "train-step-rank0", 9),
                           proc=proc, log=log)
        snapshot = f"{prefix}/train/{node.key}/checkpoint_manager_snapshot.json"
        _wait_for("the second milestone to be committed",
                  lambda: "step_000008" in (_s3_text(endpoint, bucket, snapshot) or ""), proc=proc, log=log)
        nodes.kill(victim)
        _release_everywhere(nodes, rel, root, "train-step-rank0", 9)
        assert proc.wait(600) == 0, log.read_text()[-6000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        _replace_lost(nodes)
    result = json.loads(log.read_text().split("RESULT ", 1)[1].splitlines()[0])
    # the last attempt trained steps 9..16: its first step is timed apart, so 7 timed steps (from 0: 15)
    assert result == {"steps": 16, "timed": 7}

    check = Store.at(root, tmp_path / "check")
    assert check.is_done("train", node.key)
    run = check.fetch("train", node.key, builders.milestone_weights(16))
    got, want = (load_file(str(r / "step_000016" / "model" / "model.safetensors")) for r in (run, tmp_path / "ref"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert not (run / "step_000004").exists()  # a reader of one milestone fetches only that one
    logs = check.fetch("train", node.key, lambda rel: rel == "metrics.jsonl") / "metrics.jsonl"
    assert [json.loads(x)["step"] for x in logs.read_text().splitlines()] == list(range(1, 17))
    files = check.manifest("train", node.key)["files"]
    assert [r for r in files if "/resume/" in r and not r.startswith("step_000016/")] == []


# ---------------------------------------------------------------- generation

BUILD_DRIVER = """
import pickle, sys, ray
from cdray.shell.ray_exec import build_node
from cdray.dag.store import Store
node, cfg = pickle.loads(open(sys.argv[1], "rb").read())
ray.init(address="auto", log_to_driver=False)
build_node(node, cfg, Store.at(cfg.store.root, cfg.store.cache))
print("BUILT")
"""


def _s3_objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{endpoint}")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for p in pages for o in p.get("Contents", [])}


def test_preempt_a_generation_actors_node_and_the_corpus_completes_unchanged(
        nodes, s3_server, text_corpus_dir, tmp_path):
    """The node of an actor held in the middle of a shard is killed: Ray Data restarts the actor
    on a node left and runs the shard again there; the shards committed before the loss are not
    generated again, and the corpus equals one generated without a loss, byte for byte."""
    import pyarrow.parquet as pq

    from cdray.dag.builders import _execute_in_process, generator_kwargs
    from cdray.decode.shards import finalize_corpus
    from cdray.decode.synthetic import shard_plan

    endpoint, bucket = s3_server
    prefix = f"preempt-gen-{uuid.uuid4().hex[:8]}"
    root = s3_uri(endpoint, bucket, prefix)
    d = micro_sweep_dict(text_corpus_dir, tmp_path, strategy=["contrastive"], q=[0.5])
    d["store"] = {"root": root, "cache": str(tmp_path / "here")}
    d["generation"] |= {"shard_prompts": 2, "stop_at_eos": False, "actors": 2, "min_actors": 1}
    cfg = C.from_dict(d)
    store = Store.at(cfg.store.root, cfg.store.cache)
    graph = build_graph(cfg)
    _build_inputs(graph.prompts, cfg, store, including=True)
    n_prompts = pq.read_metadata(store.fetch("prompts", graph.prompts.key) / "prompts.parquet").num_rows
    # every shard is needed: rows never stop early, and the budget is all of them
    d["generation"]["token_budget"] = n_prompts * cfg.generation.continuations * cfg.generation.max_new_tokens
    cfg = C.from_dict(d)
    node = next(iter(build_graph(cfg).generations.values()))
    _build_inputs(node, cfg, store)
    shards = shard_plan(n_prompts, cfg.generation.shard_prompts)
    assert len(shards) >= 6
    ref = tmp_path / "reference"
    _execute_in_process(generator_kwargs(node, cfg, store, ref), shards)
    finalize_corpus(ref, len(shards), cfg.generation.token_budget)

    held = 3
    job_file = nodes.node_dir("head") / f"job-{uuid.uuid4().hex[:8]}.pkl"
    job_file.write_bytes(pickle.dumps((node, C.from_dict({**d, "store": {"root": root}}))))
    rel = f"generate/{node.key}"
    for name in _workers(nodes):
        faults.hold(_node_cache(nodes, name, root) / rel, "shard", held)
    log = tmp_path / "driver.log"
    proc = nodes.driver([sys.executable, "-c", BUILD_DRIVER, f"/tmp/{job_file.name}"], log=log)
    try:
        victim = _wait_for(f"an actor to hold shard {held}", lambda: _held_on(nodes, rel, root, "shard", held),
                           proc=proc, log=log)
        time.sleep(2)  # shards beside it go on committing
        before = {k: v for k, v in _s3_objects(endpoint, bucket, f"{prefix}/{rel}/").items()
                  if k.endswith(".json") and "/shards/shard_" in k}
        nodes.kill(victim)
        _release_everywhere(nodes, rel, root, "shard", held)
        assert proc.wait(600) == 0, log.read_text()[-6000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        _replace_lost(nodes)
    assert "BUILT" in log.read_text()

    check = Store.at(root, tmp_path / "check")
    out = check.fetch("generate", node.key)
    assert (out / "corpus.parquet").read_bytes() == (ref / "corpus.parquet").read_bytes()
    assert f"shard_{held:05d}.json" not in {Path(k).name for k in before}  # it was the one held
    # what was committed before the loss is the same object in the corpus: not generated again
    after = {Path(k).name: v for k, v in _s3_objects(endpoint, bucket, f"{prefix}/{rel}/").items()}
    committed_before = {Path(k).name: v for k, v in before.items()}
    assert committed_before, "no shard was committed before the node was lost"
    final = {name: (out / "shards" / name).read_bytes() for name in committed_before}
    assert final == committed_before
    assert set(after) >= set(committed_before)


# ---------------------------------------------------------------- a whole sweep


@pytest.fixture
def mlflow_url(tmp_path, nodes):
    """An MLflow server on the cluster's network (the head's address, as on a cloud's private network)."""
    from cdray.tracking import server

    port = server.free_port()
    proc = server.start(tmp_path / "mlflow", port, host=nodes.ip)
    url = f"http://{nodes.ip}:{port}"
    try:
        server.wait_ready(url, proc=proc)
        yield url
    finally:
        server.stop(proc)


def _cells(store: Store, graph) -> dict:
    """What each cell measured: its perplexities and BabyLM scores, from the store."""
    out = {}
    for cell in graph.cells:
        ev = store.manifest(cell.evaluate.stage, cell.evaluate.key)["stats"]
        scores = {n.config["task"]: store.manifest(n.stage, n.key)["stats"]["scores"] for n in cell.babylm}
        out[cell.id] = {"milestones": ev["milestones"], "babylm": scores}
    return out


def _table(log: str) -> list[str]:
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("arm "))
    return lines[start:start + 4]


@needs_eval_data
def _builds_on_the_head(cluster) -> bool:
    """Whether every live build registry (cdray.shell.dispatch) runs on the head, where the driver is."""
    out = cluster.run_python(
        "import json, ray; from ray._private import state; ray.init(address='auto', log_to_driver=False); "
        "print(json.dumps([[a['Address']['NodeID'] for a in state.actors().values() if a['State'] == 'ALIVE' "
        "and (a.get('Name') or '').startswith('cdray-builds-')], ray.get_runtime_context().get_node_id()]))",
        timeout=120)
    placed, head = json.loads(out.stdout.strip().splitlines()[-1])
    return bool(placed) and set(placed) == {head}


def test_preempt_a_node_mid_sweep_and_the_sweep_equals_one_nodes(nodes, s3_server, text_corpus_dir, tmp_path,
                                                                  mlflow_url):
    """`cdray sweep` on the cluster, its corpus and BabyLM data read from the S3 server; the node of
    a cell's evaluation is killed while it scores a milestone. The sweep completes (Ray runs the
    evaluation again elsewhere), a re-run of the same command builds nothing (the cell was not
    retrained), and every number equals the same sweep's on one node with a local store."""
    import subprocess

    from tests.conftest import upload_folder

    endpoint, bucket = s3_server
    run = f"sweep-{uuid.uuid4().hex[:8]}"
    d = micro_sweep_dict(text_corpus_dir, tmp_path, strategy=["contrastive"], q=[0.0, 0.5])
    d["corpus"]["sources"][0]["path"] = upload_folder(text_corpus_dir, s3_uri(endpoint, bucket, f"{run}/data/corpus"))
    d["eval"] = {"max_blocks": 8, "tasks": ["blimp", "ewok"], "max_items": 10, "steps": [12],
                 "babylm_dir": upload_folder(BABYLM_SAMPLE, s3_uri(endpoint, bucket, f"{run}/data/babylm"))}
    d["store"] = {"root": s3_uri(endpoint, bucket, f"{run}/store")}
    d["tracking"] = {"uri": mlflow_url, "experiment": "harness"}
    sweep = nodes.node_dir("head") / f"{run}.yaml"
    sweep.write_text(__import__("yaml").safe_dump(d))
    cfg = C.from_dict({**d, "store": {"root": d["store"]["root"], "cache": str(tmp_path / "here")}})
    graph = build_graph(cfg)
    baseline = next(c for c in graph.cells if c.arm == "BASELINE")
    rel = f"evaluate/{baseline.evaluate.key}"
    for name in _workers(nodes):
        faults.hold(_node_cache(nodes, name, d["store"]["root"]) / rel, "evaluate-step", 8)
    command = [sys.executable, "-m", "cdray.cli", "sweep", f"/tmp/{sweep.name}"]
    log = tmp_path / "cluster.log"
    proc = nodes.driver(command, log=log)
    try:
        victim = _wait_for("the BASELINE's evaluation to reach step 8",
                           lambda: _held_on(nodes, rel, d["store"]["root"], "evaluate-step", 8),
                           timeout=900, proc=proc, log=log)
        assert _builds_on_the_head(nodes), "the build registry owns every build: it must share the driver's node"
        lost_at = time.time()
        nodes.kill(victim)
        _release_everywhere(nodes, rel, d["store"]["root"], "evaluate-step", 8)
        assert proc.wait(900) == 0, log.read_text()[-6000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        _replace_lost(nodes)
    store = Store.at(cfg.store.root, cfg.store.cache)
    created = store.manifest("train", baseline.train.key)["created"]
    assert time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone < lost_at
    again = tmp_path / "again.log"
    assert nodes.driver(command, log=again).wait(600) == 0, again.read_text()[-4000:]
    assert " 0 to build" in again.read_text() and "building" not in again.read_text()

    # the same sweep on one node: a local Ray cluster and a local store
    local = tmp_path / "one-node.yaml"
    local.write_text(__import__("yaml").safe_dump({**d, "store": {"root": str(tmp_path / "local-store")},
                                                   "tracking": {"uri": f"sqlite:///{tmp_path / 'one.db'}"}}))
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    one = subprocess.run([sys.executable, "-m", "cdray.cli", "sweep", str(local)], capture_output=True, text=True,
                         env={**env, **S3_ENV, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                         timeout=900)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert _cells(store, graph) == _cells(Store.at(tmp_path / "local-store"), graph)
    assert _table(again.read_text()) == _table(one.stdout)
