"""Cluster YAMLs: valid against Ray's own cluster schema, and shaped as the README promises."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTERS = sorted((ROOT / "cluster").glob("*.yaml"))


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_the_four_clusters_exist():
    assert {p.name for p in CLUSTERS} >= {"aws.yaml", "gcp.yaml", "onprem.yaml", "fake.yaml"}


@pytest.mark.parametrize("path", CLUSTERS, ids=[p.name for p in CLUSTERS])
def test_cluster_yaml_matches_ray_schema(path):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(yaml.safe_load(path.read_text()), ray_schema())


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml", "onprem.yaml"])
def test_real_clusters_install_the_pinned_stack_and_a_lean_mlflow(name):
    cfg = yaml.safe_load((ROOT / "cluster" / name).read_text())
    setup = " ".join(cfg["setup_commands"])
    assert "torch==2.13.0" in setup and "-c ~/cdray/constraints.txt" in setup
    head = " ".join(cfg["head_start_ray_commands"])
    for flag in ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", "--workers 1", "--serve-artifacts",
                 "--backend-store-uri sqlite:///", "--autoscaling-config"):
        assert flag in head, flag
    assert ".venv" in cfg["rsync_exclude"] and ".cdray" in cfg["rsync_exclude"]


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_workers_autoscale_from_zero_and_gpus_are_spot(name):
    cfg = yaml.safe_load((ROOT / "cluster" / name).read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert all(w["min_workers"] == 0 and w["max_workers"] >= 1 for w in workers.values())
    gpu = [w for w in workers.values() if w["resources"].get("GPU")]
    cpu = [w for w in workers.values() if not w["resources"].get("GPU")]
    assert gpu and cpu
    spot = json.dumps([w["node_config"] for w in gpu])
    assert "spot" in spot.lower()


def test_fake_cluster_is_cpu_only_and_starts_empty():
    cfg = yaml.safe_load((ROOT / "cluster" / "fake.yaml").read_text())
    assert cfg["provider"]["type"] == "fake_multinode"
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}  # every task needs a new node
    assert all(t.get("min_workers", 0) == 0 and "GPU" not in t["resources"] for t in types.values())


def test_rayignore_keeps_the_working_dir_small():
    ignored = (ROOT / ".rayignore").read_text().split()
    for entry in (".venv/", ".cdray/", "data/", ".git/"):
        assert entry in ignored


def test_schema_check_catches_a_typo():
    jsonschema = pytest.importorskip("jsonschema")
    cfg = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    cfg["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(cfg, ray_schema())
