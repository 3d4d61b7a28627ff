"""Where evaluation runs and in what precision: the GPU its Ray tasks ask for, its device, the
autocast of its forward passes, eval.precision's validation and keys, a profile's batch sizes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import BABYLM_SAMPLE, shipped_data_root

from cdray import config as C
from cdray.dag.graph import build_graph
from cdray.eval.device import EVALUATION_STAGES, autocast, eval_device, lm_eval_dtypes, task_gpus
from cdray.sweep.plan import sweep_key

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def test_evaluation_tasks_ask_for_one_gpu_on_a_gpu_sweep_and_none_on_cpu(tmp_path):
    paper = C.load(SWEEPS / "paper.yaml", ["profile=cluster", f"store.root={tmp_path}",
                                          f"data_root={shipped_data_root(tmp_path / 'data')}"])
    tiny = C.load(SWEEPS / "tiny.yaml", [f"store.root={tmp_path}"])
    assert paper.train.use_gpu and not tiny.train.use_gpu
    stages = {n.stage for n in build_graph(paper).build_order()}
    assert EVALUATION_STAGES == {"evaluate", "babylm"}
    for stage in stages | EVALUATION_STAGES:
        assert task_gpus(stage, paper.train.use_gpu) == (1 if stage in EVALUATION_STAGES else 0)
        assert task_gpus(stage, tiny.train.use_gpu) == 0
    assert eval_device(paper.train.use_gpu) == "cuda" and eval_device(tiny.train.use_gpu) == "cpu"


def test_fp32_runs_without_autocast_and_bf16_under_it():
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert lm_eval_dtypes("fp32") == {}
    assert lm_eval_dtypes("bf16") == {"mixed_precision_dtype": torch.bfloat16, "softmax_dtype": torch.float32}
    with pytest.raises(ValueError, match="fp16"):
        autocast("cpu", "fp16")


def test_bf16_evaluation_needs_bf16_training(micro_cfg_dict):
    d = micro_cfg_dict | {"eval": micro_cfg_dict["eval"] | {"precision": "bf16"}}
    assert d["train"]["precision"] == "fp32"
    with pytest.raises(C.ConfigError, match=r"eval\.precision.*needs train\.precision: bf16") as e:
        C.from_dict(d)
    assert e.value.field == "eval.precision"
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(micro_cfg_dict | {"eval": {"precision": "fp16"}})
    assert e.value.field == "eval.precision"
    ok = C.from_dict(d | {"train": d["train"] | {"precision": "bf16"}})
    assert ok.eval.precision == "bf16"


@pytest.mark.skipif(not BABYLM_SAMPLE.is_dir(), reason="no BabyLM sample")
def test_eval_precision_keys_the_evaluation_nodes_only_when_bf16(micro_cfg_dict):
    train_bf16 = micro_cfg_dict["train"] | {"precision": "bf16"}
    base = micro_cfg_dict | {"train": train_bf16, "eval": {"babylm_dir": str(BABYLM_SAMPLE), "max_items": 5}}
    fp32 = C.from_dict(base)
    said = C.from_dict(base | {"eval": base["eval"] | {"precision": "fp32"}})
    bf16 = C.from_dict(base | {"eval": base["eval"] | {"precision": "bf16"}})
    nodes = {name: {(n.stage, n.label): n for n in build_graph(c).build_order()}
             for name, c in (("fp32", fp32), ("said", said), ("bf16", bf16))}
    # the default, written or not, keys nothing new (ADDED): neither a node nor the sweep
    assert {k: n.key for k, n in nodes["fp32"].items()} == {k: n.key for k, n in nodes["said"].items()}
    assert sweep_key(fp32) == sweep_key(said) != sweep_key(bf16)
    assert all("precision" not in n.config for n in nodes["fp32"].values() if n.stage in EVALUATION_STAGES)
    for k, n in nodes["bf16"].items():
        before = nodes["fp32"][k]
        if n.stage in EVALUATION_STAGES:
            assert n.config["precision"] == "bf16" and n.key != before.key
        else:  # the data, the models and their training are the same artifacts
            assert n.key == before.key


def test_a_profile_sizes_the_evaluation_batches_and_nothing_else(micro_cfg_dict):
    profiles = {"gpu": {"eval": {"batch_size": 64, "scoring_batch_size": 512}}}
    plain = C.from_dict(micro_cfg_dict)
    sized = C.from_dict(micro_cfg_dict | {"profiles": profiles}, "gpu")
    assert (sized.eval.batch_size, sized.eval.scoring_batch_size) == (64, 512)
    assert [n.key for n in build_graph(sized).build_order()] == [n.key for n in build_graph(plain).build_order()]
    with pytest.raises(C.ConfigError) as e:  # what evaluation computes is no profile's business
        C.from_dict(micro_cfg_dict | {"profiles": {"gpu": {"eval": {"precision": "bf16"}}}})
    assert e.value.field == "profiles.gpu.eval.precision"
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(micro_cfg_dict | {"profiles": {"gpu": {"eval": {"batch_size": 0}}}}, "gpu")
    assert e.value.field == "eval.batch_size"


def test_paper_yaml_evaluates_in_bf16_with_gpu_sized_batches_on_its_cluster(tmp_path):
    laptop = C.load(SWEEPS / "paper.yaml", [f"store.root={tmp_path}"])
    cluster = C.load(SWEEPS / "paper.yaml", ["profile=cluster", f"store.root={tmp_path}",
                                            f"data_root={shipped_data_root(tmp_path / 'data')}"])
    assert laptop.train.precision == laptop.eval.precision == "bf16"
    assert cluster.eval.batch_size > laptop.eval.batch_size
    assert cluster.eval.scoring_batch_size > laptop.eval.scoring_batch_size
