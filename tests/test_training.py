"""Tests of cdray.models.training and train_data: mixing counts, step-addressed data, decay groups, bitwise resume."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from cdray.config import ModelConfig, TrainConfig
from cdray.models.checkpoints import has_resume_state, latest_checkpoint, step_dir
from cdray.models.llama import build_model
from cdray.models.train_data import MixedBatches, TrainJob, realised_q, synthetic_counts
from cdray.models.training import lr_factor, make_optimizer, train

torch.set_num_threads(1)

TINY = ModelConfig(layers=2, hidden=32, heads=2, ffn=64, context=64)
RECIPE = TrainConfig(steps=12, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=2, precision="fp32",
                     checkpoint_every=6, eval_blocks=3)


def _stream(path, n, seed, vocab=64):
    np.save(path, np.random.default_rng(seed).integers(0, vocab, size=n).astype(np.uint16))
    return str(path)


@pytest.fixture
def job(tmp_path):
    return TrainJob(model=TINY, vocab_size=64, recipe=RECIPE, seed=7, q=0.3, milestones=(6, 12),
                    real_tokens=_stream(tmp_path / "real.npy", 16 * 9 + 5, 1),
                    eval_tokens=_stream(tmp_path / "eval.npy", 16 * 4, 2),
                    synthetic_tokens=_stream(tmp_path / "syn.npy", 16 * 5, 3))


# ---------------------------------------------------------------- mixing


@pytest.mark.parametrize("q,B,T", [(0.3, 256, 8000), (0.3, 4, 12), (0.1, 7, 13), (0.77, 16, 99)])
def test_exact_counts(q, B, T):
    c = synthetic_counts(q, B, T, "exact")
    assert len(c) == T and c.sum() == round(q * B * T)
    assert np.all(np.abs(c - q * B) < 1)
    prefix = np.cumsum(c)
    assert np.all(np.abs(prefix - q * B * np.arange(1, T + 1)) <= 0.5 + 1e-9)
    assert realised_q(c, B) == pytest.approx(round(q * B * T) / (B * T))


def test_exact_extremes():
    assert not synthetic_counts(0.0, 8, 5, "exact").any()
    assert (synthetic_counts(1.0, 8, 5, "exact") == 8).all()
    assert realised_q(synthetic_counts(0.3, 256, 8000, "exact"), 256) == pytest.approx(0.3, abs=1e-9)


def test_paper16():
    c = synthetic_counts(0.3, 256, 10, "paper16")
    assert (c == 4 * 16).all()  # floor(16 * 0.3) = 4 of every 16
    assert realised_q(c, 256) == 0.25
    assert (synthetic_counts(0.5, 16, 3, "paper16") == 8).all()
    assert (synthetic_counts(1.0, 32, 3, "paper16") == 32).all()


def test_bad_mixing_inputs():
    with pytest.raises(ValueError):
        synthetic_counts(1.5, 8, 5, "exact")
    with pytest.raises(ValueError):
        synthetic_counts(0.3, 8, 5, "nope")


# ---------------------------------------------------------------- data position


def test_data_position_is_a_pure_function_of_step(job):
    a, b = MixedBatches(job), MixedBatches(job)
    order = [a.local_batch(t) for t in range(job.recipe.steps)]
    for t in reversed(range(job.recipe.steps)):  # random access gives the same batches
        assert np.array_equal(b.local_batch(t), order[t])
    # the global batch is the concatenation of the ranks' slices, synthetic first
    for t in range(job.recipe.steps):
        halves = [MixedBatches(job, rank=r, world_size=2).local_batch(t) for r in range(2)]
        assert np.array_equal(np.concatenate(halves), order[t])
        layout = a.global_layout(t)
        n_syn = int(a.counts[t])
        assert [s for s, _ in layout] == [1] * n_syn + [0] * (4 - n_syn)
        syn = np.load(job.synthetic_tokens)
        for i, (stream, block) in enumerate(layout):
            src = syn if stream == 1 else np.load(job.real_tokens)
            assert np.array_equal(order[t][i], src[block * 16:(block + 1) * 16])
    # every real block is used once per epoch before any repeats
    real_done, _ = a.consumed(job.recipe.steps)
    ids = a.real.block_ids(0, real_done)
    n = a.real.n_blocks
    assert n == 9 and all(sorted(ids[e * n:(e + 1) * n]) == list(range(n)) for e in range(real_done // n))


def test_world_size_must_divide_batch(job):
    with pytest.raises(ValueError, match="world_size"):
        MixedBatches(job, rank=0, world_size=3)


# ---------------------------------------------------------------- optimiser


@pytest.mark.parametrize("decay_norms", [False, True])
def test_no_weight_decay_on_norms(decay_norms):
    model = build_model(TINY, 64, seed=0)
    opt, _ = make_optimizer(model, dataclasses.replace(RECIPE, decay_norms=decay_norms))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "model.embed_tokens.weight" in decayed and "lm_head.weight" in decayed
    assert "model.layers.0.mlp.up_proj.weight" in decayed
    norms = {n for n in names.values() if "norm" in n}
    assert norms and (norms <= decayed if decay_norms else norms == plain)
    assert len(decayed) + len(plain) == len(names)


def test_lr_schedule():
    assert lr_factor(0, 10, 100) == 0.0 and lr_factor(5, 10, 100) == 0.5
    assert lr_factor(10, 10, 100) == 1.0 and lr_factor(100, 10, 100) == pytest.approx(0.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)


# ---------------------------------------------------------------- the loop


def _final_weights(out):
    from safetensors.torch import load_file
    return load_file(str(out / "step_000012" / "model" / "model.safetensors"))


def test_resume_is_bitwise_equal(job, tmp_path):
    full = tmp_path / "full"
    res = train(job, full)
    assert res["steps"] == 12 and res["n_sequences"] == 48 and res["tokens"] == 48 * 16
    assert res["n_synthetic_sequences"] == round(0.3 * 48) and res["final_eval_loss"] > 0
    th = res["throughput"]  # the first step is timed apart; milestones are not step time
    assert th["timed_steps"] == 11 and th["first_step_s"] > 0 and th["tokens_per_s"] > 0
    assert 0 <= th["data_wait_share"] < 1 and 0 < th["thread_cpu_seconds"] <= th["cpu_seconds"] + 1e-3
    assert [m["step"] for m in res["milestones"]] == [6, 12]

    part = tmp_path / "part"
    reports = []
    early = train(job, part, stop_after=6, report=reports.append)
    assert early["steps"] == 6 and latest_checkpoint(part).name == "step_000006"
    assert reports[0]["step"] == 6 and reports[0]["checkpoint"].endswith("step_000006")
    # junk a later step dir without trainer_state.json and extra log lines: both must be ignored
    (part / "step_000012").mkdir()
    with (part / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 7, "loss": 0.0, "lr": 0.0, "n_syn": 0}) + "\n")
    resumed = train(job, part)
    assert resumed["steps"] == 12 and resumed["throughput"]["timed_steps"] == 5

    a, b = _final_weights(full), _final_weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file
    oa = load_file(str(full / "step_000012" / "resume" / "optimizer.safetensors"))
    ob = load_file(str(part / "step_000012" / "resume" / "optimizer.safetensors"))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)

    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    full_rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    times = [r.pop("time") for r in rows]  # wall-clock stamps are the only fields that may differ
    assert times == sorted(times) and [r.pop("time") for r in full_rows]
    assert rows == full_rows
    ms = [json.loads(line) for line in (part / "milestones.jsonl").read_text().splitlines()]
    assert [m["step"] for m in ms] == [6, 12] and ms == res["milestones"]
    assert sum(r["n_syn"] for r in rows) == res["n_synthetic_sequences"]

    state = json.loads((part / "step_000012" / "trainer_state.json").read_text())
    assert state["step"] == 12 and state["realised_q"] == pytest.approx(14 / 48)
    assert state["tokens_seen"] == 48 * 16
    resume_state = json.loads((part / "step_000012" / "resume" / "state.json").read_text())
    assert resume_state["scheduler"]["last_epoch"] == 12 and set(resume_state["param_steps"].values()) == {12.0}
    saved_logs = (part / "step_000012" / "resume" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in saved_logs] == list(range(1, 13))
    assert not list(part.rglob("*.bin")) and not list(part.rglob("*.pt"))

    again = train(job, part)  # already finished: nothing to do, same summary
    assert again["steps"] == 12 and again["final_eval_loss"] == res["final_eval_loss"]


def test_a_restarted_worker_resumes_from_the_milestone_it_is_handed(job, tmp_path):
    """Ray hands every rank of a restarted worker group one milestone (its newest committed): the
    run goes on from it even where a newer one was written but never committed, and with
    resume_from=None it starts over."""
    full = tmp_path / "full"
    train(job, full)
    part = tmp_path / "part"
    train(job, part, stop_after=12, keep_resume=2)
    assert [has_resume_state(step_dir(part, s)) for s in (6, 12)] == [True, True]
    elsewhere = tmp_path / "another-node"  # a node that has only the milestone it downloaded
    shutil.copytree(step_dir(part, 6), step_dir(elsewhere, 6))
    resumed = train(job, elsewhere, resume_from=step_dir(elsewhere, 6))
    assert resumed["steps"] == 12 and resumed["throughput"]["timed_steps"] == 5
    a, b = _final_weights(full), _final_weights(elsewhere)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line)["step"] for line in (elsewhere / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 13))  # the logs up to step 6 came with the milestone
    fresh = train(job, tmp_path / "fresh", resume_from=None)
    assert fresh["throughput"]["timed_steps"] == 11


def test_the_loop_keeps_resume_state_on_the_newest_milestones_only(job, tmp_path):
    out = tmp_path / "run"
    train(dataclasses.replace(job, milestones=(3, 6, 9)), out, keep_resume=1)
    assert [has_resume_state(step_dir(out, s)) for s in (3, 6, 9, 12)] == [False, False, False, True]
    assert all((step_dir(out, s) / "model" / "model.safetensors").is_file() for s in (3, 6, 9, 12))


def test_gradient_accumulation_gives_the_unaccumulated_step(job, tmp_path):
    """grad_accum splits a step's batch into equal micro-batches: the same mean loss and summed
    gradients, so the same run within float rounding."""
    plain = train(job, tmp_path / "plain")
    accum = train(dataclasses.replace(job, recipe=dataclasses.replace(RECIPE, grad_accum=4)), tmp_path / "accum")
    a, b = _final_weights(tmp_path / "plain"), _final_weights(tmp_path / "accum")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    assert accum["final_eval_loss"] == pytest.approx(plain["final_eval_loss"], rel=1e-5)
    rows = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("plain", "accum")]
    assert rows[1] == pytest.approx(rows[0], rel=1e-5)


def test_a_bf16_run_saves_bf16_weights_and_resumes_exactly(job, tmp_path):
    recipe = dataclasses.replace(RECIPE, precision="bf16", save_dtype="bf16")
    j = dataclasses.replace(job, recipe=recipe)
    train(j, tmp_path / "full")
    train(j, tmp_path / "part", stop_after=6)
    train(j, tmp_path / "part")
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "part")
    assert {t.dtype for t in a.values()} == {torch.bfloat16}
    assert all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file
    ma, mb = (load_file(str(tmp_path / d / "step_000012" / "resume" / "master.safetensors")) for d in ("full", "part"))
    assert {t.dtype for t in ma.values()} == {torch.float32} and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(job, tmp_path):
    short = dataclasses.replace(RECIPE, steps=4, warmup_steps=1, checkpoint_every=4)
    runs = {}
    for comp in (False, True):
        j = dataclasses.replace(job, milestones=(4,), recipe=dataclasses.replace(short, compile=comp))
        res = train(j, tmp_path / f"compile-{comp}")
        rows = [json.loads(line) for line in (tmp_path / f"compile-{comp}" / "metrics.jsonl").read_text().splitlines()]
        runs[comp] = (res, [r["loss"] for r in rows])
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-3)  # fused kernels round differently
    assert runs[True][0]["final_eval_loss"] == pytest.approx(runs[False][0]["final_eval_loss"], rel=1e-3)
    # checkpoints hold the plain module's names, not the compiled wrapper's (_orig_mod.)
    from safetensors.torch import load_file
    names = load_file(str(tmp_path / "compile-True" / "step_000004" / "model" / "model.safetensors")).keys()
    assert not any("_orig_mod" in n for n in names)


def test_resume_refuses_a_different_job(job, tmp_path):
    out = tmp_path / "run"
    train(job, out, stop_after=6)
    with pytest.raises(ValueError, match="different job"):
        train(dataclasses.replace(job, seed=8), out)


def test_bf16_baseline_runs(job, tmp_path):
    j = dataclasses.replace(job, q=0.0, synthetic_tokens=None, milestones=(3,),
                            recipe=dataclasses.replace(RECIPE, precision="bf16", steps=3, warmup_steps=1))
    res = train(j, tmp_path / "bf16")
    assert res["n_synthetic_sequences"] == 0 and res["realised_q"] == 0.0
    assert np.isfinite(res["final_eval_loss"]) and res["milestones"][-1]["step"] == 3


def test_bad_inputs_name_the_file(job, tmp_path):
    missing = str(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="missing.npy"):
        train(dataclasses.replace(job, real_tokens=missing), tmp_path / "a")
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError, match="corrupt.npy"):
        train(dataclasses.replace(job, synthetic_tokens=str(corrupt)), tmp_path / "b")
    short = _stream(tmp_path / "short.npy", 10, 4)
    with pytest.raises(ValueError, match="short.npy"):
        train(dataclasses.replace(job, eval_tokens=short), tmp_path / "c")
    with pytest.raises(ValueError, match="synthetic_tokens"):
        train(dataclasses.replace(job, synthetic_tokens=None), tmp_path / "d")
    two_d = tmp_path / "twod.npy"
    np.save(two_d, np.zeros((4, 16), dtype=np.int32))
    with pytest.raises(ValueError, match="twod.npy"):
        train(dataclasses.replace(job, real_tokens=str(two_d)), tmp_path / "e")


def _ddp_worker(rank, world_size, init_file, job, out, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        seen = []
        res = train(job, out, rank=rank, world_size=world_size, report=seen.append)
        results[rank] = (res["steps"], [m["eval_loss"] is None for m in seen])
    finally:
        torch.distributed.destroy_process_group()


def test_two_rank_ddp_matches_single_process(job, tmp_path):
    import torch.multiprocessing as mp
    single = train(job, tmp_path / "single")
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), job, tmp_path / "ddp", results), nprocs=2)
    assert results[0] == (12, [False, False]) and results[1] == (12, [True, True])
    a, b = _final_weights(tmp_path / "single"), _final_weights(tmp_path / "ddp")
    # same data and same mean loss; only the reduction order differs
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    ms = [json.loads(line) for line in (tmp_path / "ddp" / "milestones.jsonl").read_text().splitlines()]
    assert ms[-1]["eval_loss"] == pytest.approx(single["final_eval_loss"], abs=1e-4)
