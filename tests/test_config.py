"""Config loading: strict keys, types, ranges, presets, overrides, milestones."""
from __future__ import annotations

import math

import pytest
import yaml

from cdray import config as C


def load_dict(d: dict, tmp_path, overrides=()):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    return C.load(p, overrides)


def test_defaults_are_the_paper_recipe():
    cfg = C.SweepConfig().validate()
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.seq_len) == (8000, 256, 1024)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_steps) == (1e-3, 0.1, 150)
    assert (cfg.expert.model.layers, cfg.expert.model.hidden, cfg.expert.model.heads) == (12, 768, 12)
    d = cfg.generation.decoding
    assert (d.alpha, d.lam, d.temperature, d.penalty) == (0.1, 1.0, 1.0, -20.0)
    assert cfg.good_milestones[:4] == (500, 1000, 1500, 2000)


@pytest.mark.parametrize("data,field", [
    ({"nope": 1}, "nope"),
    ({"train": {"stepz": 3}}, "train.stepz"),
    ({"grid": {"q": [0.0, 1.5]}}, "grid.q[1]"),
    ({"grid": {"q": [-0.1]}}, "grid.q[0]"),
    ({"train": {"steps": "ten"}}, "train.steps"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"generation": {"decoding": {"alpha": 1.0}}}, "generation.decoding.alpha"),
    ({"generation": {"decoding": {"temperature": 0}}}, "generation.decoding.temperature"),
    ({"generation": {"decoding": {"top_p": 1.5}}}, "generation.decoding.top_p"),
    ({"generation": {"decoding": {"top_k": 0}}}, "generation.decoding.top_k"),
    ({"grid": {"k": [700]}}, "grid.k[0]"),
    ({"grid": {"r": [0.5]}}, "grid.r[0]"),
    ({"grid": {"p": [1.0]}}, "grid.p[0]"),
    ({"grid": {"strategy": ["greedy"]}}, "grid.strategy[0]"),
    ({"expert": {"model": {"preset": "huge"}}}, "expert.model.preset"),
    ({"expert": {"model": {"vocab_size": 100}}}, "expert.model.vocab_size"),
    ({"mixed_model": {"preset": "good", "vocab_size": 31999}}, "mixed_model.vocab_size"),
    ({"small": {"candidates": [{"preset": "tiny", "vocab_size": 5000}]}}, "small.candidates[0].vocab_size"),
    ({"corpus": {"sources": [{"kind": "local"}]}}, "corpus.sources[0].path"),
    ({"corpus": {"sources": [{"kind": "web"}]}}, "corpus.sources[0].kind"),
    ({"train": {"num_workers": 3}}, "train.batch_size"),
    ({"expert": {"step": 700}}, "expert.step"),
])
def test_bad_values_name_their_field(data, field, tmp_path):
    with pytest.raises(C.ConfigError) as e:
        load_dict(data, tmp_path)
    assert e.value.field == field
    assert "\n" not in str(e.value)


def test_k_must_precede_the_expert_step(tmp_path):
    with pytest.raises(C.ConfigError, match="earlier than the expert step"):
        load_dict({"expert": {"step": 1000}, "grid": {"k": [1500]}}, tmp_path)


def test_presets_and_overrides(tmp_path):
    cfg = load_dict({"expert": {"model": {"preset": "tiny", "layers": 3}}}, tmp_path,
                    ["train.steps=100", "train.warmup_steps=10", "train.seq_len=128", "generation.max_new_tokens=64", "train.checkpoint_every=25", "grid.k=[25]", "grid.q=[0, 0.5]",
                     "generation.decoding.penalty=-inf"])
    assert cfg.expert.model.layers == 3 and cfg.expert.model.hidden == 128
    assert cfg.train.steps == 100 and cfg.good_milestones == (25, 50, 75, 100)
    assert cfg.grid.q == (0.0, 0.5)
    assert cfg.generation.decoding.penalty == -math.inf


def test_malformed_yaml_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("grid: {q: [0, 0.3\n")
    with pytest.raises(C.ConfigError, match="malformed YAML"):
        C.load(p)


def test_field_reference_lists_every_leaf():
    names = {row[0] for row in C.field_reference()}
    assert {"train.steps", "generation.decoding.alpha", "grid.q", "store.root"} <= names


def test_the_config_reference_is_current():
    from pathlib import Path

    from cdray.config.reference import DOC

    doc = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    assert doc == DOC + C.reference_markdown() + "\n", \
        "regenerate it: python -m cdray.config.reference > docs/config.md"


def test_a_sweep_file_that_says_one_thing_twice_is_an_error_naming_it(tmp_path):
    f = tmp_path / "twice.yaml"
    f.write_text("name: a\ntrain:\n  lr: 0.1\n  steps: 5\n  lr: 0.2\n")
    with pytest.raises(C.ConfigError, match=r"the key 'lr' is there twice \(lines 3 and 5\)"):
        C.load(f)
    f.write_text("name: a\ngrid: {seed: [42, 43, 42]}\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(f)
    assert e.value.field == "grid.seed[2]"


def test_a_babylm_dir_above_the_task_folders_is_named_with_the_one_to_use(tmp_path):
    import shutil

    from conftest import BABYLM_SAMPLE

    from cdray.eval.babylm import missing_reason

    shutil.copytree(BABYLM_SAMPLE / "blimp_filtered", tmp_path / "evaluation_data" / "full_eval" / "blimp_filtered")
    reason = missing_reason(str(tmp_path), ["blimp"])
    assert "the task folders are in evaluation_data/full_eval/: point eval.babylm_dir there" in reason
