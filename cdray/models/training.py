"""The pure training loop: step-addressed real/synthetic mixing, AdamW + warmup-cosine, pickle-free resume."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cdray.common.faults import crash_point
from cdray.config import ModelConfig, TrainConfig
from cdray.models.checkpoints import append_jsonl, resume, step_dir, truncate_jsonl, write_checkpoint
from cdray.models.llama import build_model
from cdray.models.step_clock import StepClock

VERSION = 1

REAL, SYNTHETIC = 0, 1  # stream ids: part of the per-epoch permutation seed
# recipe fields that change the trajectory; resuming under different values is refused
_TRAJECTORY_FIELDS = ("steps", "batch_size", "seq_len", "lr", "beta1", "beta2", "weight_decay",
                      "decay_norms", "warmup_steps", "grad_clip", "precision", "mixing")


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run depends on."""

    model: ModelConfig
    vocab_size: int
    recipe: TrainConfig
    seed: int
    q: float
    milestones: tuple[int, ...]  # steps where a checkpoint is written
    real_tokens: str  # flat 1-D .npy token stream, documents already wrapped <s> ... </s>
    eval_tokens: str
    synthetic_tokens: str | None = None  # required iff q > 0


# ---------------------------------------------------------------- mixing


def _exact_fraction(q: float) -> Fraction:
    # the decimal the user wrote (0.3 is 3/10, not the nearest binary float), so counts are exact
    return Fraction(repr(float(q)))


def synthetic_counts(q: float, batch_size: int, steps: int, mode: str) -> np.ndarray:
    """Synthetic sequences in each step's global batch (int64 array of length `steps`)."""
    if not 0 <= q <= 1:
        raise ValueError(f"q={q!r} is outside [0, 1]")
    if batch_size < 1 or steps < 0:
        raise ValueError(f"batch_size={batch_size} and steps={steps} must be positive")
    qf = _exact_fraction(q)
    if mode == "exact":
        # Bresenham: the cumulative count after t steps is q*B*t rounded half up, so every
        # prefix of the run is as close to q as whole sequences allow
        t = np.arange(steps + 1, dtype=object)
        target = qf * batch_size
        cum = np.array([math.floor(target * int(i) + Fraction(1, 2)) for i in t], dtype=np.int64)
        return np.diff(cum)
    if mode == "paper16":
        # the released code: sequence i is synthetic iff (i % 16) < floor(16 q)
        k = math.floor(qf * 16)
        per_batch = int(np.sum((np.arange(batch_size) % 16) < k))
        return np.full(steps, per_batch, dtype=np.int64)
    raise ValueError(f"mixing mode {mode!r} is not 'exact' or 'paper16'")


def realised_q(counts, batch_size: int) -> float:
    counts = np.asarray(counts)
    if counts.size == 0:
        return 0.0
    return float(counts.sum()) / float(batch_size * counts.size)


# ---------------------------------------------------------------- token streams


class BlockStream:
    """A token file cut into seq_len blocks, read in per-epoch permutations (memmapped)."""

    def __init__(self, path: str | os.PathLike, seq_len: int, seed: int, stream_id: int, what: str,
                 vocab_size: int | None = None):
        self.path = str(path)
        self.tokens = open_tokens(path, what, vocab_size)
        self.seq_len = seq_len
        self.n_blocks = len(self.tokens) // seq_len
        if self.n_blocks < 1:
            raise ValueError(f"{what} token file {self.path}: {len(self.tokens)} tokens is shorter "
                             f"than one block of seq_len={seq_len}")
        self._seed, self._stream_id = seed, stream_id
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:  # sequential reading needs at most two epochs at once
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self._seed, epoch, self._stream_id])
            self._perms[epoch] = rng.permutation(self.n_blocks)
        return self._perms[epoch]

    def block_ids(self, start: int, count: int) -> np.ndarray:
        """Block ids of the sequences start .. start+count-1 of the endless permuted stream."""
        epochs, pos = np.divmod(np.arange(start, start + count, dtype=np.int64), self.n_blocks)
        ids = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            ids[at] = self._perm(int(epoch))[pos[at]]
        return ids

    def read(self, block_ids: np.ndarray) -> np.ndarray:
        index = block_ids[:, None] * self.seq_len + np.arange(self.seq_len)[None, :]
        return np.asarray(self.tokens[index], dtype=np.int64)

    def first_blocks(self, n: int) -> np.ndarray:
        return self.read(np.arange(min(n, self.n_blocks), dtype=np.int64))


def open_tokens(path, what: str = "token", vocab_size: int | None = None) -> np.ndarray:
    """Memmap a 1-D integer .npy stream; any problem (ids outside [0, vocab_size) included) is a
    ValueError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} token file {p} does not exist")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # np.load raises several types for truncated or foreign files
        raise ValueError(f"{what} token file {p} is not a readable .npy array: {e}") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} token file {p} must hold a 1-D integer array "
                         f"(got {getattr(arr, 'dtype', type(arr))} of shape {getattr(arr, 'shape', '?')})")
    if vocab_size is not None and len(arr):
        # an id outside the embedding table would fail deep inside a forward pass (or, on a GPU,
        # read out of bounds): one scan of the memmap says which file instead
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{what} token file {p} holds token ids in [{lo}, {hi}], outside the "
                             f"model's vocabulary [0, {vocab_size})")
    return arr


class MixedBatches:
    """The data position as a pure function of the step: no loader state to checkpoint."""

    def __init__(self, job: TrainJob, rank: int = 0, world_size: int = 1):
        r = job.recipe
        self.batch_size, self.seq_len = r.batch_size, r.seq_len
        if world_size < 1 or not 0 <= rank < world_size or r.batch_size % world_size:
            raise ValueError(f"batch_size={r.batch_size} cannot be split over world_size={world_size} "
                             f"(rank {rank})")
        self.local = r.batch_size // world_size
        self.offset = rank * self.local
        self.counts = synthetic_counts(job.q, r.batch_size, r.steps, r.mixing)
        self.cum_syn = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        vocab = job.model.vocab_size or job.vocab_size
        self.real = BlockStream(job.real_tokens, r.seq_len, job.seed, REAL, "real", vocab)
        self.syn = None
        if job.q > 0:
            self.syn = BlockStream(job.synthetic_tokens, r.seq_len, job.seed, SYNTHETIC, "synthetic", vocab)

    def consumed(self, step: int) -> tuple[int, int]:
        """(real, synthetic) sequences used by the global batches of steps 0 .. step-1."""
        syn = int(self.cum_syn[step])
        return step * self.batch_size - syn, syn

    def global_layout(self, step: int) -> list[tuple[int, int]]:
        """(stream id, block id) of every sequence of the step's global batch."""
        return [self._locate(step, i) for i in range(self.batch_size)]

    def _locate(self, step: int, i: int) -> tuple[int, int]:
        real_done, syn_done = self.consumed(step)
        n_syn = int(self.counts[step])
        if i < n_syn:
            return SYNTHETIC, int(self.syn.block_ids(syn_done + i, 1)[0])
        return REAL, int(self.real.block_ids(real_done + i - n_syn, 1)[0])

    def local_batch(self, step: int) -> np.ndarray:
        """This rank's contiguous slice of the step's global batch, shape (B/world, seq_len)."""
        real_done, syn_done = self.consumed(step)
        n_syn = int(self.counts[step])
        lo, hi = self.offset, self.offset + self.local
        parts = []
        s_lo, s_hi = min(lo, n_syn), min(hi, n_syn)
        if s_hi > s_lo:
            parts.append(self.syn.read(self.syn.block_ids(syn_done + s_lo, s_hi - s_lo)))
        r_lo, r_hi = max(lo, n_syn) - n_syn, max(hi, n_syn) - n_syn
        if r_hi > r_lo:
            parts.append(self.real.read(self.real.block_ids(real_done + r_lo, r_hi - r_lo)))
        return np.concatenate(parts, axis=0)


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


def train(job: TrainJob, out_dir: Path, *, rank: int = 0, world_size: int = 1, device: str = "cpu",
          report=None, stop_after: int | None = None) -> dict:
    """Train (or resume) one run; rank 0 writes milestones and metrics under out_dir.

    `report(milestone)` is called on every rank after each milestone (Ray's report is a barrier);
    only rank 0's dict carries eval_loss and the checkpoint path. `stop_after` is a test hook that
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
    milestones = sorted(set(job.milestones) | {recipe.steps})
    if torch.device(device).type == "cpu":
        torch.set_num_threads(recipe.torch_threads)

    torch.manual_seed(job.seed)
    model = build_model(job.model, job.vocab_size, job.seed).to(device)
    model.train()
    opt, sched = make_optimizer(model, recipe)

    start = resume(out_dir, recipe.steps, _job_fingerprint(job), model, opt, sched, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path, milestones_path = out_dir / "metrics.jsonl", out_dir / "milestones.jsonl"
    done = truncate_jsonl(milestones_path, start) if lead else []
    if lead:
        truncate_jsonl(metrics_path, start)
    if distributed:
        torch.distributed.barrier()  # nobody reads logs or checkpoints while rank 0 trims them

    net = model
    if distributed:
        dev = torch.device(device)
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if recipe.compile:
        net = torch.compile(net)  # `model` stays the plain module for eval and checkpoints

    window: list[float] = []
    last_loss = None
    reached = start
    clock = StepClock(data.local * data.seq_len)
    for step in range(start, recipe.steps):
        clock.start()
        x = torch.from_numpy(data.local_batch(step)).to(device)
        clock.data_ready()
        with autocast(device, recipe.precision):
            loss = net(input_ids=x, labels=x).loss
        loss.backward()
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
        if done_steps not in milestones:
            continue
        record = _milestone(job, data, done_steps, window, model, eval_blocks, device, lead)
        window = []
        d = step_dir(out_dir, done_steps)
        if lead:
            real_n, syn_n = data.consumed(done_steps)
            state = {"step": done_steps, "q": job.q, "realised_q": record["realised_q"],
                     "tokens_seen": record["tokens"],
                     "epochs_real": real_n / data.real.n_blocks,
                     "epochs_synthetic": (syn_n / data.syn.n_blocks) if data.syn else 0.0,
                     "job": _job_fingerprint(job)}
            write_checkpoint(d, model, opt, sched, state, device)
            append_jsonl(milestones_path, record)
            done.append(record)
        if distributed:
            torch.distributed.barrier()
        if report is not None:
            report(dict(record, checkpoint=str(d) if lead else None))
        if stop_after is not None and done_steps >= stop_after:
            break

    return dict(_summary(job, data, done, last_loss, reached), throughput=clock.summary())


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


__all__ = ["VERSION", "TrainJob", "synthetic_counts", "realised_q", "open_tokens", "BlockStream",
           "MixedBatches", "param_groups", "lr_factor", "make_optimizer", "eval_loss", "train"]
