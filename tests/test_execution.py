"""A stage reads only its node's keyed config and the run's execution knobs: builders never see the
sweep's config, so a key cannot miss what its stage reads."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from cdray import config as C
from cdray.dag import builders
from cdray.dag.run_config import execution_of
from cdray.dag.graph import build_graph
from cdray.dag.store import Store
from cdray.shell import ray_exec, train_run


def test_execution_holds_only_execution_only_fields(micro_cfg_dict):
    ex = execution_of(C.from_dict(micro_cfg_dict))
    for name, section in (("train", C.TrainConfig), ("generation", C.GenerationConfig), ("eval", C.EvalConfig)):
        marked = {f.name for f in dataclasses.fields(section) if f.metadata.get("key") is False}
        assert set(getattr(ex, name)) == marked, name


def test_no_builder_takes_the_sweep_config():
    executors = [*builders.BUILDERS.values(), train_run.fit_training, builders.build_generate]
    for fn in executors:
        params = list(inspect.signature(fn).parameters.values())
        assert params[1].annotation in ("Execution", "SweepConfig | Execution"), fn.__name__
    for fn in builders.BUILDERS.values():
        assert "cfg" not in inspect.signature(fn).parameters, fn.__name__
    assert "cfg" not in inspect.signature(ray_exec.generate_with_ray_data).parameters


def test_a_train_node_trains_by_its_own_recipe_not_the_runs(micro_cfg_dict, tmp_path):
    """The node planned at lr 3e-3 trains at lr 3e-3 even when the run's config says 1e-2: the
    recipe comes from the node's keyed config (only execution knobs come from the run)."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    d = micro_cfg_dict | {"train": micro_cfg_dict["train"] | {"steps": 8, "checkpoint_every": 4}}
    planned = C.from_dict(d)
    other = C.from_dict(d | {"train": d["train"] | {"lr": 1e-2, "torch_threads": 2}})
    node = build_graph(planned).good
    assert build_graph(other).good.key != node.key
    runs = {}
    for name, run in (("planned", planned), ("other", other)):
        store = Store.at(tmp_path / name)
        for n in node.walk():
            builders.build(n, run, store)
        runs[name] = load_file(str(store.dir("train", node.key) / "step_000008" / "model" / "model.safetensors"))
    assert all(torch.equal(runs["planned"][k], runs["other"][k]) for k in runs["planned"])
    assert builders.train_job(node, other, Store.at(tmp_path / "other")).recipe.torch_threads == 2  # execution


@pytest.mark.parametrize("field", ["lr", "weight_decay", "steps"])
def test_the_recipe_a_train_node_rebuilds_is_the_one_it_was_keyed_by(micro_cfg_dict, field):
    cfg = C.from_dict(micro_cfg_dict)
    node = build_graph(cfg).good
    assert getattr(execution_of(cfg).recipe(node.config["recipe"]), field) == getattr(cfg.train, field)
