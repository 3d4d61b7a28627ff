"""`cdray plan` / `run` refuse data that cannot reach a stage: a missing source or BabyLM folder
(local or in a bucket), and on a multi-node cluster any local data path or a local store.root,
or an sqlite tracking database, unless ray.shared_disk says every node sees the same disk. One
line naming the field, exit 2."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from cdray.cli import main
from cdray.shell.local_cluster import JOB_ENV
from tests.conftest import s3_uri, upload_folder


def write(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / f"sweep-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("cdray: error: config field '"), err
    return err[0]


@pytest.fixture(autouse=True)
def local_run(monkeypatch):
    """No cluster unless a test says so."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(JOB_ENV, raising=False)


def test_a_missing_local_source_or_babylm_folder_is_refused(micro_cfg_dict, tmp_path, capsys):
    cfg = micro_cfg_dict | {"corpus": micro_cfg_dict["corpus"] | {
        "sources": [{"kind": "local", "name": "text", "path": str(tmp_path / "absent")}]}}
    line = refused(capsys, ["plan", write(tmp_path, cfg)])
    assert line == f"cdray: error: config field 'corpus.sources[0].path': {str(tmp_path / 'absent')!r}: no such folder"
    cfg = micro_cfg_dict | {"data_root": str(tmp_path), "corpus": micro_cfg_dict["corpus"] | {
        "sources": [{"kind": "babylm", "name": "b", "path": "babylm"}]}}
    assert refused(capsys, ["plan", write(tmp_path, cfg)]).endswith(
        f"no such folder (a relative path is under data_root {str(tmp_path)!r})")
    cfg = micro_cfg_dict | {"eval": {"babylm_dir": str(tmp_path / "eval-data")}}
    line = refused(capsys, ["plan", write(tmp_path, cfg)])
    assert line.startswith("cdray: error: config field 'eval.babylm_dir': ") and "fetch-eval" in line
    assert main(["plan", write(tmp_path, micro_cfg_dict)]) == 0  # the same sweep with its data: planned


def test_a_missing_remote_source_is_refused(micro_cfg_dict, tmp_path, capsys, s3_server):
    endpoint, bucket = s3_server
    uri = s3_uri(endpoint, bucket, f"nothing-{uuid.uuid4().hex[:8]}")
    cfg = micro_cfg_dict | {"corpus": micro_cfg_dict["corpus"] | {
        "sources": [{"kind": "local", "name": "text", "path": uri}]}}
    line = refused(capsys, ["plan", write(tmp_path, cfg)])
    assert line.startswith("cdray: error: config field 'corpus.sources[0].path': 's3://") and "no such folder" in line


@pytest.mark.parametrize("target", ["ray.address", "RAY_ADDRESS", "job"])
def test_local_data_or_store_on_a_multi_node_cluster_is_refused(target, micro_cfg_dict, text_corpus_dir, tmp_path,
                                                                capsys, monkeypatch, s3_server):
    endpoint, bucket = s3_server
    argv = []
    if target == "ray.address":
        argv = ["--set", "ray.address=10.0.0.5:6379"]
    elif target == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    else:
        monkeypatch.setenv(JOB_ENV, '{"runtime_env": {}}')
    path = write(tmp_path, micro_cfg_dict | {"eval": {"babylm_dir": str(tmp_path)}})
    line = refused(capsys, ["plan", path, *argv])
    assert line.startswith("cdray: error: config field 'store.root': ") and "multi-node" in line
    assert "ray.shared_disk" in line
    store = ["--set", f"store.root={s3_uri(endpoint, bucket, f'store-{uuid.uuid4().hex[:8]}')}"]
    line = refused(capsys, ["plan", path, *argv, *store])
    assert "'tracking.uri'" in line and "MLflow server" in line  # an sqlite file on one node
    line = refused(capsys, ["plan", path, *argv, *store, "--set", "tracking.uri=http://127.0.0.1:5000"])
    assert "'tracking.uri'" in line and "loopback" in line  # a server other nodes cannot reach
    store += ["--set", "tracking.uri=http://10.0.0.5:5000"]
    assert "'corpus.sources[0].path'" in refused(capsys, ["plan", path, *argv, *store])
    data = upload_folder(text_corpus_dir, s3_uri(endpoint, bucket, f"data-{uuid.uuid4().hex[:8]}"))
    remote_source = ["--set", f"corpus.sources.0.path={data}"]
    assert "'eval.babylm_dir'" in refused(capsys, ["plan", path, *argv, *store, *remote_source])
    # every node sees the same files at the same paths (NFS, one node): the local paths are fine
    assert main(["plan", path, *argv, "--set", "ray.shared_disk=true"]) == 0, capsys.readouterr().err


def test_run_refuses_before_any_work(micro_cfg_dict, tmp_path, capsys):
    path = write(tmp_path, micro_cfg_dict)
    line = refused(capsys, ["run", path, "--set", "ray.address=10.0.0.5:6379"])
    assert "'store.root'" in line
    store = Path(micro_cfg_dict["store"]["root"])
    assert not store.exists() or not any(p.name == "manifest.json" for p in store.rglob("*"))
    import sys

    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()  # no Ray cluster was started or attached to
