"""Profiles: one sweep file, laptop or cluster, chosen by name; every profile is checked strictly."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cdray import config as c

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, data) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"name": "p", "train": {"steps": 10, "checkpoint_every": 5, "warmup_steps": 1, "seq_len": 64},
        "grid": {"k": [5]}, "expert": {"model": {"preset": "micro"}},
        "generation": {"max_new_tokens": 16},
        "profiles": {"cluster": {"store": {"root": "s3://bucket/cdray?endpoint_override=127.0.0.1:9000"},
                                 "tracking": {"uri": "http://127.0.0.1:5000"},
                                 "ray": {"address": "auto", "max_concurrent_cells": 8},
                                 "train": {"num_workers": 2, "use_gpu": True},
                                 "generation": {"actors": 4, "min_actors": 2, "actor_gpus": 1}},
                     "laptop": {}}}


def test_no_profile_is_the_file_as_written(tmp_path):
    cfg = c.load(write(tmp_path, BASE))
    assert cfg.profile is None and cfg.store.root == ".cdray/store" and cfg.ray.address is None


def test_profile_applies_only_its_keys_and_set_wins(tmp_path):
    path = write(tmp_path, BASE)
    cfg = c.load(path, ["profile=cluster", "ray.max_concurrent_cells=3"])
    assert cfg.profile == "cluster"
    assert cfg.store.root.startswith("s3://bucket/") and cfg.tracking.uri == "http://127.0.0.1:5000"
    assert cfg.tracking.experiment == "cdray"  # untouched keys keep the file's value
    assert (cfg.ray.address, cfg.ray.max_concurrent_cells) == ("auto", 3)
    assert (cfg.train.num_workers, cfg.train.use_gpu, cfg.train.steps) == (2, True, 10)
    g = cfg.generation
    assert (g.actors, g.min_actors, g.actor_gpus, g.max_new_tokens) == (4, 2, 1.0, 16)
    assert c.load(write(tmp_path, {**BASE, "profile": "laptop"})).profile == "laptop"


@pytest.mark.parametrize("profiles,field", [
    ({"cluster": {"train": {"steps": 5}}}, "profiles.cluster.train.steps"),  # not a profile knob
    ({"cluster": {"ray": {"adress": "auto"}}}, "profiles.cluster.ray.adress"),
    ({"cluster": {"generation": {"actors": "many"}}}, "profiles.cluster.generation.actors"),
    ({"cluster": {"store": {"root": "ftp://host/x"}}}, "store.root"),
    ({"cluster": {"generation": {"min_actors": 3, "actors": 2}}}, "generation.min_actors"),
])
def test_bad_profiles_name_the_field(tmp_path, profiles, field):
    path = write(tmp_path, {**BASE, "profiles": profiles})
    with pytest.raises(c.ConfigError) as e:
        c.load(path, ["profile=cluster"])
    assert e.value.field == field


def test_unknown_profile_is_an_error(tmp_path):
    with pytest.raises(c.ConfigError, match="'gpu' is not one of the sweep file's profiles"):
        c.load(write(tmp_path, BASE), ["profile=gpu"])


def test_shipped_sweeps_load_with_every_profile():
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        for name in (yaml.safe_load(path.read_text()).get("profiles") or {}):
            cfg = c.load(path, [f"profile={name}"])
            assert cfg.profile == name and cfg.store.root.startswith("s3://")


def test_a_profiled_config_round_trips(tmp_path):
    cfg = c.load(write(tmp_path, BASE), ["profile=cluster"])
    assert c.from_dict(c.to_dict(cfg)) == cfg


def test_plan_with_a_profile_states_which_keys_it_changes(tmp_path):
    """A profile that sets a keyed field (train.num_workers: the same runs computed by two workers)
    re-keys the runs, and `cdray plan --profile` says so; one that sets plumbing changes no key."""
    from cdray.dag.graph import build_graph
    from cdray.sweep.plan import profile_effect

    sweep = tmp_path / "s.yaml"
    raw = c.load_raw(ROOT / "sweeps" / "tiny.yaml")
    raw["profiles"] = {"two": {"train": {"num_workers": 2}}, "where": {"ray": {"max_concurrent_cells": 1}}}
    sweep.write_text(__import__("yaml").safe_dump(raw))
    plain = build_graph(c.load(sweep, profiles=False))
    two = c.load(sweep, ["profile=two"])
    line = profile_effect(two, build_graph(two), plain)
    assert line.startswith("profile 'two' changes the keys of ") and "train GOOD seed=43" in line
    where = c.load(sweep, ["profile=where"])
    assert "every key as without it" in profile_effect(where, build_graph(where), plain)
