"""Tests of cdray.models.checkpoints: pickle-free round trip, newest complete step dir, resume check, jsonl logs."""
import dataclasses
import json

import pytest
import torch

from cdray.config import ModelConfig, TrainConfig
from safetensors.torch import load_file

from cdray.models.checkpoints import (
    append_jsonl,
    complete_checkpoints,
    has_resume_state,
    latest_checkpoint,
    prune_resume,
    resume_to_prune,
    read_checkpoint,
    read_jsonl,
    resume,
    step_dir,
    truncate_jsonl,
    write_checkpoint,
)
from cdray.models.llama import build_model
from cdray.models.training import make_optimizer

torch.set_num_threads(1)

TINY = ModelConfig(layers=2, hidden=32, heads=2, ffn=64, context=64)
RECIPE = TrainConfig(steps=10, batch_size=2, seq_len=8, lr=3e-3, warmup_steps=2, precision="fp32")


def _trained(steps=2):
    torch.manual_seed(0)
    model = build_model(TINY, 64, seed=0)
    opt, sched = make_optimizer(model, RECIPE)
    for _ in range(steps):
        x = torch.randint(0, 64, (2, 8))
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return model, opt, sched


def _fresh():
    model = build_model(TINY, 64, seed=1)  # different init: everything must come from the checkpoint
    return (model, *make_optimizer(model, RECIPE))


def test_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, opt, sched = _trained()
    d = step_dir(tmp_path, 2)
    assert d.name == "step_000002"
    write_checkpoint(d, model, opt, sched, {"step": 2, "job": {"seed": 0}}, "cpu")
    expected_draw = torch.rand(3)  # what the RNG gives right after the checkpoint

    torch.manual_seed(123)
    m2, o2, s2 = _fresh()
    state = read_checkpoint(d, m2, o2, s2, "cpu")
    assert state["step"] == 2 and state["job"] == {"seed": 0}
    assert state["param_names"] == [n for n, _ in model.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))
    sa, sb = opt.state_dict(), o2.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    assert all(torch.equal(sa["state"][i][k], sb["state"][i][k]) for i in sa["state"] for k in sa["state"][i])
    assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
    assert s2.state_dict()["last_epoch"] == 2
    assert torch.equal(torch.rand(3), expected_draw)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))


def test_read_refuses_weights_of_another_model(tmp_path):
    model, opt, sched = _trained(steps=1)
    write_checkpoint(tmp_path / "step_000001", model, opt, sched, {"step": 1}, "cpu")
    other = build_model(dataclasses.replace(TINY, layers=1), 64, seed=0)
    with pytest.raises(ValueError, match="do not match the model"):
        read_checkpoint(tmp_path / "step_000001", other, *make_optimizer(other, RECIPE), "cpu")


def test_latest_checkpoint_only_counts_complete_step_dirs_with_resume_state(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    for step in (3, 6, 9, 11):
        (step_dir(tmp_path, step) / "resume").mkdir(parents=True)
        (step_dir(tmp_path, step) / "trainer_state.json").write_text("{}")
        (step_dir(tmp_path, step) / "resume" / "state.json").write_text("{}")
    step_dir(tmp_path, 12).mkdir()  # no trainer_state.json: a crash mid-write
    (tmp_path / "step_15").mkdir()  # not a step dir name
    (tmp_path / "step_15" / "trainer_state.json").write_text("{}")
    (step_dir(tmp_path, 11) / "resume" / "state.json").unlink()  # its resume state is not whole
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [3, 6, 9, 11]  # weights: all four
    assert latest_checkpoint(tmp_path).name == "step_000009"
    assert latest_checkpoint(tmp_path, max_step=8).name == "step_000006"
    assert latest_checkpoint(tmp_path, max_step=2) is None


def test_only_the_newest_milestones_keep_their_resume_state(tmp_path):
    model, opt, sched = _trained(steps=1)
    for step in (1, 2, 3, 4):
        write_checkpoint(step_dir(tmp_path, step), model, opt, sched, {"step": step}, "cpu")
    assert resume_to_prune([4, 1, 3, 2], keep=2) == [1, 2]
    assert prune_resume(tmp_path, keep=2) == [1, 2]
    assert [has_resume_state(step_dir(tmp_path, s)) for s in (1, 2, 3, 4)] == [False, False, True, True]
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [1, 2, 3, 4]  # every milestone keeps its weights
    assert latest_checkpoint(tmp_path).name == "step_000004"
    weights = (step_dir(tmp_path, 1) / "model" / "model.safetensors").stat().st_size
    kept = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    # what the issue asks of a run's store bytes: at most 1.25x its milestones' weights here is
    # (4 + 2 x resume) / 4; resume state is 2x the weights (AdamW's two moments) plus small files
    resume_bytes = sum(p.stat().st_size for p in (step_dir(tmp_path, 4) / "resume").rglob("*") if p.is_file())
    assert 1.9 * weights < resume_bytes < 2.2 * weights
    assert kept < 4 * weights + 2 * resume_bytes + 4 * 8192


def test_bf16_weights_resume_from_fp32_master_weights(tmp_path):
    model, opt, sched = _trained(steps=2)
    d = step_dir(tmp_path, 2)
    write_checkpoint(d, model, opt, sched, {"step": 2, "job": {"seed": 0}}, "cpu", save_dtype="bf16")
    saved = load_file(str(d / "model" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert json.loads((d / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    m2, o2, s2 = _fresh()
    read_checkpoint(d, m2, o2, s2, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))
    prune_resume(tmp_path, keep=1)  # the newest keeps its master weights
    assert (d / "resume" / "master.safetensors").is_file()


def test_resume_restores_the_matching_job_and_refuses_another(tmp_path):
    m, o, s = _fresh()
    assert resume(tmp_path, 10, {"seed": 0}, m, o, s, "cpu") == 0  # nothing there: start at 0
    model, opt, sched = _trained(steps=4)
    write_checkpoint(step_dir(tmp_path, 4), model, opt, sched, {"step": 4, "job": {"seed": 0}}, "cpu")
    assert resume(tmp_path, 10, {"seed": 0}, m, o, s, "cpu") == 4
    assert s.state_dict()["last_epoch"] == 4
    with pytest.raises(ValueError, match="different job"):
        resume(tmp_path, 10, {"seed": 1}, *_fresh(), "cpu")
    assert resume(tmp_path, 3, {"seed": 1}, *_fresh(), "cpu") == 0  # beyond max_step: ignored


def test_jsonl_logs_are_trimmed_to_the_resumed_step(tmp_path):
    log = tmp_path / "metrics.jsonl"
    assert read_jsonl(log) == []
    for step in range(1, 6):
        append_jsonl(log, {"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in truncate_jsonl(log, 3)] == [1, 2, 3]
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]
    with log.open("a") as f:
        f.write('{"step": 4, "lo')  # torn by a crash: the log ends before it
    append_jsonl(log, {"step": 5})
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3]


def test_a_step_whose_files_did_not_survive_a_power_cut_is_not_complete(tmp_path):
    """trainer_state.json and resume/state.json record their files' sizes: a marker beside a
    truncated file (what a disk that reorders writes can leave) does not count as complete."""
    model, opt, sched = _trained(steps=1)
    for step in (1, 2, 3):
        write_checkpoint(step_dir(tmp_path, step), model, opt, sched, {"step": step}, "cpu")
    state = json.loads((step_dir(tmp_path, 2) / "trainer_state.json").read_text())
    assert state["files"]["model/model.safetensors"] > 0
    resume_state = json.loads((step_dir(tmp_path, 2) / "resume" / "state.json").read_text())
    assert resume_state["files"]["optimizer.safetensors"] > 0
    assert latest_checkpoint(tmp_path).name == "step_000003"
    (step_dir(tmp_path, 3) / "resume" / "optimizer.safetensors").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "step_000002"
    (step_dir(tmp_path, 2) / "model" / "model.safetensors").write_bytes(b"")
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [1, 3]
    assert latest_checkpoint(tmp_path).name == "step_000001"
