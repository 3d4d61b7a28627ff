"""The pure training loop: AdamW + warmup-cosine over step-addressed batches, milestones, pickle-free resume."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from cdray.common.faults import crash_point, pause_point
from cdray.config import TrainConfig
from cdray.models.checkpoints import (
    append_jsonl,
    prune_resume,
    resume,
    step_dir,
    truncate_jsonl,
    write_checkpoint,
)
from cdray.models.llama import build_model
from cdray.models.step_clock import StepClock
from cdray.models.train_data import REAL, BlockStream, MixedBatches, TrainJob, realised_q

VERSION = 1

# recipe fields that change the trajectory; resuming under different values is refused
_TRAJECTORY_FIELDS = ("steps", "batch_size", "seq_len", "lr", "beta1", "beta2", "weight_decay",
                      "decay_norms", "warmup_steps", "grad_clip", "precision", "mixing")


# ---------------------------------------------------------------- optimiser and schedule


def _is_norm(module: torch.nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") or isinstance(module, torch.nn.LayerNorm)


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norms: bool) -> list[dict]:
    """Decay matrices and embeddings; norms (unless decay_norms) and biases are not decayed."""
    no_decay_names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p_name == "bias" or (_is_norm(module) and not decay_norms):
                no_decay_names.add(full)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in no_decay_names else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0, then cosine to 0 at total_steps (the HF cosine-with-warmup shape)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, recipe: TrainConfig):
    groups = param_groups(model, recipe.weight_decay, recipe.decay_norms)
    # fused kernels on CUDA (one launch for all parameters); CPU keeps the default implementation
    on_cuda = next(model.parameters()).is_cuda
    opt = torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.beta1, recipe.beta2),
                            weight_decay=recipe.weight_decay, fused=True if on_cuda else None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, recipe.warmup_steps, recipe.steps))
    return opt, sched


# ---------------------------------------------------------------- resume identity


def _job_fingerprint(job: TrainJob) -> dict:
    recipe = {k: getattr(job.recipe, k) for k in _TRAJECTORY_FIELDS}
    if job.recipe.grad_accum != 1:  # a field added later: runs before it hold no such entry
        recipe["grad_accum"] = job.recipe.grad_accum
    return {"model": dataclasses.asdict(job.model), "vocab_size": job.vocab_size, "seed": job.seed,
            "q": job.q, "recipe": recipe, "version": VERSION}


# ---------------------------------------------------------------- the loop


def validate_job(job: TrainJob) -> None:
    if not 0 <= job.q <= 1:
        raise ValueError(f"q={job.q!r} is outside [0, 1]")
    if job.q > 0 and not job.synthetic_tokens:
        raise ValueError(f"q={job.q} > 0 needs synthetic_tokens (none given; real_tokens={job.real_tokens})")
    job.recipe.validate("train")
    job.model.validate("model")
    if job.recipe.seq_len > job.model.context:
        raise ValueError(f"seq_len={job.recipe.seq_len} exceeds the model context {job.model.context}")
    bad = [m for m in job.milestones if not 1 <= m <= job.recipe.steps]
    if bad:
        raise ValueError(f"milestones {bad} are outside [1, steps={job.recipe.steps}]")


def autocast(device: str, precision: str):
    dev_type = torch.device(device).type
    return torch.autocast(dev_type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def eval_loss(model, blocks: np.ndarray, device: str, precision: str, batch: int = 8) -> float:
    """Mean next-token loss over every predicted token of the blocks."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch):
        x = torch.from_numpy(blocks[i:i + batch]).to(device)
        with autocast(device, precision):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                               x[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += x[:, 1:].numel()
    model.train(was_training)
    return total / max(1, count)


def _global_mean(value: torch.Tensor, world_size: int) -> float:
    if world_size > 1:
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
        value /= world_size
    return float(value.item())


LATEST = "latest"  # resume_from: the newest milestone in out_dir that keeps its resume state


def train(job: TrainJob, out_dir: Path, *, rank: int = 0, world_size: int = 1, device: str = "cpu",
          report=None, stop_after: int | None = None, resume_from: Path | str | None = LATEST,
          keep_resume: int | None = None) -> dict:
    """Train (or resume) one run; rank 0 writes milestones and metrics under out_dir.

    `resume_from`: LATEST (the newest resumable milestone in out_dir), None (from step 0) or a
    milestone dir (the one a restarted worker group was handed: every rank resumes from it).
    `report(milestone)` is called on every rank after each milestone (Ray's report is a barrier);
    only rank 0's dict carries eval_loss and the checkpoint path. `keep_resume`: after each
    milestone, rank 0 drops the resume state of all but the newest that many in out_dir (None:
    the caller prunes, once its store holds the newer ones). `stop_after` is a test hook that
    simulates a crash right after that step's milestone.
    """
    validate_job(job)
    recipe = job.recipe
    out_dir = Path(out_dir)
    lead = rank == 0
    distributed = world_size > 1
    data = MixedBatches(job, rank, world_size)
    eval_blocks = BlockStream(job.eval_tokens, recipe.seq_len, job.seed, REAL, "eval",
                              job.model.vocab_size or job.vocab_size).first_blocks(
        recipe.eval_blocks)
    seen, by_words = _words_seen(job, data)
    milestones = sorted(set(job.milestones) | {recipe.steps} | set(by_words.values()))
    if torch.device(device).type == "cpu":
        torch.set_num_threads(recipe.torch_threads)

    torch.manual_seed(job.seed)
    model = build_model(job.model, job.vocab_size, job.seed).to(device)
    model.train()
    opt, sched = make_optimizer(model, recipe)

    start = 0
    if resume_from is not None:
        at = None if resume_from == LATEST else Path(resume_from)
        start = resume(out_dir, recipe.steps, _job_fingerprint(job), model, opt, sched, device, at=at)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path, milestones_path = out_dir / "metrics.jsonl", out_dir / "milestones.jsonl"
    done = truncate_jsonl(milestones_path, start) if lead else []
    if lead:
        truncate_jsonl(metrics_path, start)
    if distributed:
        torch.distributed.barrier()  # nobody reads logs or checkpoints while rank 0 trims them

    net = _wrap(model, recipe, device, distributed)
    window: list[float] = []
    saves: list[float] = []
    last_loss = None
    reached = start
    clock = StepClock(data.local * data.seq_len)
    for step in range(start, recipe.steps):
        clock.start()
        batch = torch.from_numpy(data.local_batch(step)).to(device)
        clock.data_ready()
        loss = _accumulated_step(net, batch, recipe, distributed)
        if recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        done_steps = reached = step + 1
        last_loss = _global_mean(loss, world_size)
        window.append(last_loss)
        if lead:
            append_jsonl(metrics_path, {"step": done_steps, "loss": last_loss, "lr": lr,
                                        "n_syn": int(data.counts[step]), "time": round(time.time(), 3)})
        clock.stop()  # milestone work (eval, checkpoint) is not step time
        crash_point(out_dir, f"train-step-rank{rank}", done_steps)
        pause_point(out_dir, f"train-step-rank{rank}", done_steps)
        if done_steps not in milestones:
            continue
        record = _milestone(job, data, done_steps, window, model, eval_blocks, device, lead)
        if seen is not None:
            record["words"] = int(seen[done_steps])
        window = []
        saving = time.perf_counter()
        d = step_dir(out_dir, done_steps)
        if lead:
            append_jsonl(milestones_path, record)  # before the checkpoint, whose resume state copies it
            done.append(record)
            write_checkpoint(d, model, opt, sched, _trainer_state(job, data, record), device,
                             save_dtype=recipe.save_dtype, logs_from=out_dir)
            if keep_resume is not None:
                prune_resume(out_dir, keep_resume)
        if distributed:
            torch.distributed.barrier()
        if report is not None:
            report(dict(record, checkpoint=str(d) if lead else None))
        saves.append(round(time.perf_counter() - saving, 4))
        if stop_after is not None and done_steps >= stop_after:
            break

    # what each milestone's checkpoint held the steps up for (writing it, handing it on), eval apart
    summary = dict(_summary(job, data, done, last_loss, reached), throughput=clock.summary(), checkpoint_seconds=saves)
    if seen is not None:
        summary.update(words=int(seen[reached]), word_checkpoints={str(w): s for w, s in by_words.items()})
    return summary


def _words_seen(job: TrainJob, data: MixedBatches) -> tuple[Optional[np.ndarray], dict[int, int]]:
    """(words seen after each step, {words: step} of the word-count checkpoints) where the recipe
    asks for them, else (None, {})."""
    if not job.recipe.checkpoint_words:
        return None, {}
    if job.tokenizer_dir is None:
        raise ValueError("train.checkpoint_words needs the run's tokenizer to count words (none given)")
    from cdray.models.words import checkpoint_steps, schedule, words_by_step

    seen = words_by_step(MixedBatches(job), job.tokenizer_dir)  # the global batches, on every rank
    return seen, checkpoint_steps(schedule(job.recipe.checkpoint_words), seen)


def _accumulated_step(net: torch.nn.Module, batch: torch.Tensor, recipe: TrainConfig,
                      distributed: bool) -> torch.Tensor:
    """Forward and backward of one step's local batch in `grad_accum` equal micro-batches; returns
    the batch's mean loss. Every sequence has seq_len tokens, so the mean of the micro-batches'
    mean losses is the batch's mean loss and the summed gradients are the batch's (within float
    rounding); DDP all-reduces once, on the last micro-batch."""
    parts = batch.chunk(recipe.grad_accum)
    total = torch.zeros((), device=batch.device)
    for i, x in enumerate(parts):
        sync = not distributed or i == len(parts) - 1
        with (contextlib.nullcontext() if sync else net.no_sync()), autocast(str(batch.device), recipe.precision):
            loss = net(input_ids=x, labels=x).loss
        (loss / len(parts)).backward()
        total += loss.detach()
    return total / len(parts)


def _wrap(model: torch.nn.Module, recipe: TrainConfig, device: str, distributed: bool) -> torch.nn.Module:
    """What the steps run: DDP over the workers, compiled if asked; `model` stays the plain module
    for evaluation and checkpoints."""
    net = model
    if distributed:
        dev = torch.device(device)
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if recipe.compile:
        net = torch.compile(net)
    return net


def _trainer_state(job: TrainJob, data: MixedBatches, record: dict) -> dict:
    """The milestone's trainer_state.json: where the run is, and the job it belongs to (resume
    refuses another)."""
    real_n, syn_n = data.consumed(record["step"])
    return {"step": record["step"], "q": job.q, "realised_q": record["realised_q"],
            "tokens_seen": record["tokens"], "epochs_real": real_n / data.real.n_blocks,
            "epochs_synthetic": (syn_n / data.syn.n_blocks) if data.syn else 0.0,
            "job": _job_fingerprint(job)}


def _milestone(job, data, step, window, model, eval_blocks, device, lead) -> dict:
    counts = data.counts[:step]
    return {"step": step,
            "eval_loss": eval_loss(model, eval_blocks, device, job.recipe.precision) if lead else None,
            "train_loss": float(np.mean(window)) if window else None,
            "realised_q": realised_q(counts, data.batch_size),
            "tokens": step * data.batch_size * data.seq_len}


def _summary(job, data, done, last_loss, step) -> dict:
    counts = data.counts[:step]
    return {"steps": step,
            "tokens": step * data.batch_size * data.seq_len,
            "realised_q": realised_q(counts, data.batch_size),
            "n_synthetic_sequences": int(counts.sum()),
            "n_sequences": step * data.batch_size,
            "final_eval_loss": done[-1]["eval_loss"] if done else None,
            "milestones": done,
            "train_loss_last": last_loss}


__all__ = ["VERSION", "param_groups", "lr_factor", "make_optimizer", "eval_loss", "train"]
