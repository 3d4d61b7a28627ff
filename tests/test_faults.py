"""Nothing lost: killed builders, Ray Train workers, generation actors and drivers resume to the same bytes.

Kill points are drawn from seeded RNGs; `cdray.common.faults` triggers kill a process with SIGKILL at an
exact step or shard (a kill from outside would race with steps that take milliseconds), and the
driver kills come from outside, as a preempted machine would.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cdray.common import faults
from cdray.dag.store import MANIFEST, Store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _spawn(code: str, *args: str) -> subprocess.Popen:
    # its own session, so a kill takes the driver and everything it started
    return subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL proc's process group once ready() holds; False if proc ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return True
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the kill point was never reached")


def _alive(pid: int) -> bool:
    """Whether process pid still runs (a zombie, dead but not reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_for(ready, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- store: killed builders

BUILDER = """
import sys, time
from cdray.dag.store import Store
def build(out):
    for i in range(20):
        (out / f"part_{i:02d}.txt").write_text(str(i) * 1000)
        time.sleep(0.01)
    return {"parts": 20}
Store.at(sys.argv[1]).get_or_build("demo", "killed", build, config={}, inputs={})
"""


@pytest.mark.parametrize("seed", range(10))
def test_killed_builder_leaves_no_artifact_and_rebuilds(seed, tmp_path):
    rng = random.Random(seed)
    proc = _spawn(BUILDER, str(tmp_path))
    out = tmp_path / "demo" / "killed"
    parts_at_kill = rng.randint(1, 19)
    assert _kill_when(proc, lambda: len(list(out.glob("part_*.txt"))) >= parts_at_kill)
    store = Store.at(tmp_path)
    assert not store.is_done("demo", "killed")  # half-written output is never an artifact
    proc = _spawn(BUILDER, str(tmp_path))
    assert proc.wait(120) == 0, proc.stdout.read()
    assert store.manifest("demo", "killed")["stats"] == {"parts": 20}
    assert store.verify("demo", "killed") == []
    assert len(store.manifest("demo", "killed")["files"]) == 20


def test_verify_names_the_corrupt_file(tmp_path, capsys):
    from cdray.cli import main

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"store: {{root: {tmp_path / 'store'}}}\ngrid: {{k: [], q: [0.0]}}\n")
    assert main(["verify", str(cfg)]) == 0  # an empty (or mistyped) store says so
    assert "nothing is built there yet" in capsys.readouterr().out
    store = Store.at(tmp_path / "store")
    store.get_or_build("demo", "good", lambda out: (out / "a.txt").write_text("a") and {}, config={}, inputs={})
    store.get_or_build("demo", "bad", lambda out: (out / "b.txt").write_text("b") and {}, config={}, inputs={})
    (store.dir("demo", "bad") / "b.txt").write_text("flipped")
    assert main(["verify", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "demo/bad" in out and "b.txt" in out and "demo/good" not in out


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def train_world(tmp_path_factory, text_corpus_dir):
    """A built micro GOOD train node's inputs (corpus, tokenizer, token streams)."""
    from conftest import micro_sweep_dict

    from cdray import config as C
    from cdray.dag import builders as stages
    from cdray.dag.graph import build_graph

    root = tmp_path_factory.mktemp("faults-train")
    d = micro_sweep_dict(text_corpus_dir, root)
    d["train"] |= {"steps": 24, "checkpoint_every": 6}
    d["grid"] |= {"k": [6]}
    cfg = C.from_dict(d)
    store = Store.at(cfg.store.root)
    graph = build_graph(cfg)
    for node in graph.good.walk():
        if node is not graph.good:
            stages.build(node, cfg, store)
    return graph.good, cfg, store


def _weights(run_dir: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / f"step_{step:06d}" / "model" / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path, step: int) -> None:
    wa, wb = _weights(a, step), _weights(b, step)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference_run(train_world, tmp_path_factory):
    from cdray.dag import builders as stages
    from cdray.models.training import train

    node, cfg, store = train_world
    out = tmp_path_factory.mktemp("faults-ref") / "run"
    torch.set_num_threads(1)
    train(stages.train_job(node, cfg, store), out)
    return out


def test_killed_train_workers_resume_to_identical_weights(train_world, reference_run, ray_session, tmp_path):
    from cdray.shell.train_run import fit_training

    node, cfg, _ = train_world
    store = _fresh_store_with_inputs(train_world, tmp_path)
    out = store.dir(node.stage, node.key)  # the run writes where the store keeps it
    kills = sorted(random.Random(1).sample([s for s in range(2, cfg.train.steps) if s % 6], 2))
    for step in kills:  # FailureConfig restarts the worker group each time
        faults.arm(out, "train-step-rank0", step)
    stats, files = fit_training(node, cfg, store, out)
    assert not list(out.glob(faults.TRIGGER_PREFIX + "*")), "every kill point was reached"
    assert stats["steps"] == cfg.train.steps
    _assert_same_weights(reference_run, out, cfg.train.steps)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, cfg.train.steps + 1))  # no step lost or repeated
    # every milestone's weights, the newest one's resume state, nothing of Ray's own state files
    assert {f"step_{s:06d}/model/model.safetensors" for s in (6, 12, 18, 24)} <= set(files)
    assert [rel for rel in files if "/resume/" in rel and not rel.startswith("step_000024/")] == []
    assert all(rel.startswith("step_") or rel in ("metrics.jsonl", "milestones.jsonl") for rel in files)


def _fresh_store_with_inputs(train_world, tmp_path: Path) -> Store:
    """A store of its own holding the train node's built inputs (no run of it, no Ray run state)."""
    import shutil

    node, _, store = train_world
    fresh = Store.at(tmp_path / "store")
    for _, dep in node.inputs:
        for n in dep.walk():
            if store.is_done(n.stage, n.key) and not fresh.dir(n.stage, n.key).exists():
                shutil.copytree(store.dir(n.stage, n.key), fresh.dir(n.stage, n.key))
    return fresh


TRAIN_DRIVER = """
import sys, torch
from cdray import config as C
from cdray.dag import builders as stages
from cdray.dag.graph import build_graph
from cdray.dag.store import Store
from cdray.models.training import train
torch.set_num_threads(1)
cfg = C.load(sys.argv[1])
store = Store.at(cfg.store.root)
train(stages.train_job(build_graph(cfg).good, cfg, store), sys.argv[2])
"""


@pytest.mark.parametrize("seed", [3, 4])
def test_killed_training_driver_reruns_to_identical_weights(seed, train_world, reference_run, tmp_path):
    import yaml

    from cdray.config import to_dict

    node, cfg, store = train_world
    cfg_path = tmp_path / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "run"
    step = random.Random(seed).randrange(7, cfg.train.steps)
    faults.arm(out, "train-step-rank0", step)
    first = _spawn(TRAIN_DRIVER, str(cfg_path), str(out))
    assert first.wait(120) == -signal.SIGKILL
    assert (out / f"step_{(step // 6) * 6:06d}" / "trainer_state.json").is_file()
    assert not (out / f"step_{cfg.train.steps:06d}").exists()
    again = _spawn(TRAIN_DRIVER, str(cfg_path), str(out))
    assert again.wait(120) == 0, again.stdout.read()
    _assert_same_weights(reference_run, out, cfg.train.steps)


# ---------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def gen_world(tmp_path_factory):
    from conftest import generation_world

    return generation_world(tmp_path_factory.mktemp("faults-gen"), n_docs=16, words=8, prompt_tokens=5)


def _gen_setup(world, out_dir: Path, text_corpus_dir: Path, tmp_path: Path):
    from conftest import micro_sweep_dict

    from cdray import config as C
    from cdray.decode.synthetic import shard_plan

    d = micro_sweep_dict(text_corpus_dir, tmp_path)
    d["generation"] |= {"prompt_tokens": 5, "continuations": 2, "max_new_tokens": 24, "batch_size": 4,
                        "shard_prompts": 2, "actors": 2, "token_budget": 10**6}
    cfg = C.from_dict(d)
    kwargs = {"expert_dir": world["expert"], "amateur": {"kind": "small", "model_dir": world["amateur"],
                                                          "dropout": 0.0},
              "strategy": "contrastive", "generation": cfg.generation,
              "prompts_path": str(world["root"] / "prompts.parquet"), "tokenizer_dir": world["tok"],
              "out_dir": str(out_dir)}
    return cfg, kwargs, shard_plan(16, 2)


def _corpus(out_dir: Path, n_shards: int) -> bytes:
    from cdray.decode.shards import finalize_corpus

    finalize_corpus(out_dir, n_shards, 10**6)
    table = pq.read_table(out_dir / "corpus.parquet")
    keys = list(zip(table.column("prompt_id").to_pylist(), table.column("continuation").to_pylist()))
    assert sorted(keys) == [(p, c) for p in range(16) for c in range(2)]  # none missing, none twice
    return (out_dir / "corpus.parquet").read_bytes()


@pytest.fixture(scope="module")
def reference_corpus(gen_world, text_corpus_dir, tmp_path_factory):
    from cdray.dag.builders import _execute_in_process

    tmp = tmp_path_factory.mktemp("faults-gen-ref")
    torch.set_num_threads(1)
    _, kwargs, shards = _gen_setup(gen_world, tmp / "ref", text_corpus_dir, tmp)
    _execute_in_process(kwargs, shards)
    return _corpus(tmp / "ref", len(shards))


def test_killed_generation_actors_restart_to_identical_corpus(gen_world, reference_corpus, text_corpus_dir,
                                                              ray_session, tmp_path):
    from cdray.shell.ray_exec import generate_with_ray_data

    out = tmp_path / "gen"
    cfg, kwargs, shards = _gen_setup(gen_world, out, text_corpus_dir, tmp_path)
    for shard_id in random.Random(7).sample(range(len(shards)), 2):
        faults.arm(out, "shard", shard_id)  # the actor dies mid-shard; Ray Data restarts it
    generate_with_ray_data(kwargs, shards)
    assert not list(out.glob(faults.TRIGGER_PREFIX + "*")), "every kill point was reached"
    assert _corpus(out, len(shards)) == reference_corpus


GEN_DRIVER = """
import json, sys, ray, torch
from cdray import config as C
from cdray.shell.ray_exec import generate_with_ray_data
kwargs, shards, cfg = json.loads(sys.argv[1]), json.loads(sys.argv[2]), C.from_dict(json.loads(sys.argv[3]))
kwargs["generation"] = cfg.generation  # typed, as the Ray shell passes it
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"PYTHONPATH": sys.argv[4], "OMP_NUM_THREADS": "1"}})
generate_with_ray_data(kwargs, shards)
"""


@pytest.mark.parametrize("seed", [11, 2])  # kill points: shards 4 and 1
def test_killed_generation_driver_reruns_to_identical_corpus(seed, gen_world, reference_corpus,
                                                             text_corpus_dir, tmp_path):
    from cdray.config import to_dict
    from cdray.decode.shards import shards_done

    out = tmp_path / "gen"
    cfg, kwargs, shards = _gen_setup(gen_world, out, text_corpus_dir, tmp_path)
    plain = {name: value for name, value in kwargs.items() if name != "generation"}  # cfg carries it
    args = (json.dumps(plain), json.dumps(shards), json.dumps(to_dict(cfg)), str(ROOT))
    first = _spawn(GEN_DRIVER, *args)
    # the driver dies while an actor is in the middle of this shard (Ray's processes share its fate);
    # the hold keeps that actor from committing the shard in the moments before Ray reaps it, or
    # it could finish the whole corpus first (it did, in CI) and the re-run would resume nothing
    kill_at = random.Random(seed).randint(1, 4)
    faults.arm(out, "shard", kill_at, victim=first.pid)
    hold = faults.hold(out, "shard", kill_at)
    assert first.wait(240) == -signal.SIGKILL, first.stdout.read()
    held = faults.held_path(out, "shard", kill_at)
    _wait_for(lambda: held.exists() and held.read_text().strip(), 60,
              "the actor that killed the driver to reach the hold")
    _wait_for(lambda: not _alive(int(held.read_text())), 120, "Ray to reap the dead driver's actor")
    hold.unlink()
    held.unlink()
    assert kill_at not in shards_done(out) and len(shards_done(out)) < len(shards), "killed mid-corpus"
    again = _spawn(GEN_DRIVER, *args)
    assert again.wait(240) == 0, again.stdout.read()
    assert _corpus(out, len(shards)) == reference_corpus


def test_corrupt_shard_is_reported_not_used(gen_world, text_corpus_dir, tmp_path):
    from cdray.dag.builders import _execute_in_process
    from cdray.decode.shards import finalize_corpus

    out = tmp_path / "gen"
    _, kwargs, shards = _gen_setup(gen_world, out, text_corpus_dir, tmp_path)
    _execute_in_process(kwargs, shards[:2])
    shard = out / "shards" / "shard_00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-20])
    with pytest.raises(ValueError, match="shard_00001.parquet"):
        finalize_corpus(out, len(shards), 10**6)
    assert not (out / "corpus.parquet").exists()
    assert not (out / MANIFEST).exists()
    assert np.all([p.is_file() for p in (out / "shards").glob("shard_00000.*")])

