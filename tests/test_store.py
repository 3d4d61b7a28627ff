"""Store keys, manifests written last, get-or-build reuse and locking, verification."""
from __future__ import annotations

import math
import multiprocessing as mp
import time

import pytest

from cdray.common.files import replacing, write_json_atomic
from cdray.dag.keys import canonical_json, stage_key
from cdray.dag.artifacts import artifact_files as _artifact_files
from cdray.dag.store import MANIFEST, Store, StoreError


def test_key_is_stable_and_sensitive():
    k = stage_key("s", 1, {"a": 1, "b": [1, 2]}, {"x": "abc"})
    assert k == stage_key("s", 1, {"b": [1, 2], "a": 1}, {"x": "abc"})  # order-free
    assert len({k, stage_key("s", 2, {"a": 1, "b": [1, 2]}, {"x": "abc"}),
                stage_key("t", 1, {"a": 1, "b": [1, 2]}, {"x": "abc"}),
                stage_key("s", 1, {"a": 2, "b": [1, 2]}, {"x": "abc"}),
                stage_key("s", 1, {"a": 1, "b": [1, 2]}, {"x": "abd"})}) == 5
    assert canonical_json({"p": -math.inf}) != canonical_json({"p": -20.0})


def test_get_or_build_builds_once_and_manifest_is_last(tmp_path):
    store = Store.at(tmp_path)
    calls = []

    def builder(out):
        calls.append(1)
        assert not (out / MANIFEST).exists()
        (out / "data.txt").write_text("hello")
        return {"n": 1}

    m1 = store.get_or_build("demo", "k1", builder, config={"a": 1}, inputs={})
    m2 = store.get_or_build("demo", "k1", builder, config={"a": 1}, inputs={})
    assert calls == [1] and m1 == m2
    assert m1["files"]["data.txt"]["bytes"] == 5 and m1["stats"] == {"n": 1}
    assert store.verify("demo", "k1") == []
    (store.dir("demo", "k1") / "data.txt").write_text("HELLO")
    assert store.verify("demo", "k1") == [str(store.dir("demo", "k1") / "data.txt")]
    assert store.list() == [("demo", "k1")]


def test_artifact_without_manifest_is_rebuilt(tmp_path):
    store = Store.at(tmp_path)
    (store.dir("demo", "k") ).mkdir(parents=True)
    (store.dir("demo", "k") / "half.txt").write_text("partial")
    assert not store.is_done("demo", "k")
    with pytest.raises(StoreError, match="not built"):
        store.manifest("demo", "k")
    store.get_or_build("demo", "k", lambda out: {"rebuilt": True}, config={}, inputs={})
    assert store.manifest("demo", "k")["stats"] == {"rebuilt": True}


def test_a_rebuild_removes_the_temporaries_of_killed_writers(tmp_path):
    """A writer killed mid-write leaves `.tmp-NAME-PID`, which no later writer (another pid)
    overwrites: the next build of the key removes it, and one its own writers left behind."""
    store = Store.at(tmp_path)
    out = store.dir("demo", "k")
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "shard_0.parquet").write_text("committed part")  # resumed, kept
    killed = out / "shards" / ".tmp-shard_1.parquet-999999"
    killed.write_text("half")

    def builder(out):
        assert not killed.exists() and (out / "shards" / "shard_0.parquet").is_file()
        (out / ".tmp-stopped.json-4242").write_text("{")  # a worker stopped midway
        return {}

    m = store.get_or_build("demo", "k", builder, config={}, inputs={})
    assert sorted(p.name for p in out.rglob("*")) == ["manifest.json", "shard_0.parquet", "shards"]
    assert list(m["files"]) == ["shards/shard_0.parquet"]


def _slow_build(root, marker):
    store = Store.at(root)

    def builder(out):
        with open(marker, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        return {}

    store.get_or_build("demo", "race", builder, config={}, inputs={})


def test_two_processes_build_one_key_once(tmp_path):
    marker = tmp_path / "marker"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_slow_build, args=(str(tmp_path / "s"), str(marker))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert marker.read_text().count("built") == 1


def test_replacing_swaps_in_whole_files_and_leaves_no_temporary(tmp_path):
    """Every stage writes through `replacing`: a finished write replaces the file in one rename;
    a failed one leaves the old file as it was, no temporary, and an error naming the file."""
    target = tmp_path / "art" / "tokens.npy"
    target.parent.mkdir()
    write_json_atomic(target, {"b": 1, "a": [1.5]})
    assert target.read_text() == '{\n "a": [\n  1.5\n ],\n "b": 1\n}'
    with pytest.raises(RuntimeError, match="killed"):
        with replacing(target) as tmp:
            tmp.write_text("half writ")
            # mid-write, the temporary is no file of the artifact a commit would list
            assert [rel for rel, _ in _artifact_files(tmp_path / "art")] == ["tokens.npy"]
            raise RuntimeError("killed")
    assert target.read_text().startswith('{\n "a"') and list(target.parent.iterdir()) == [target]
    with pytest.raises(OSError, match="cannot write .*missing/x.json"):
        write_json_atomic(tmp_path / "missing" / "x.json", {})
