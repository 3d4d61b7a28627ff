"""What a training run reads: its job, the exact real/synthetic mix of every step, memmapped token streams."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from cdray.config import ModelConfig, TrainConfig

REAL, SYNTHETIC = 0, 1  # stream ids: part of the per-epoch permutation seed
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
    tokenizer_dir: str | None = None  # what the words seen are counted with (recipe.checkpoint_words)


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


__all__ = ["REAL", "SYNTHETIC", "TrainJob", "synthetic_counts", "realised_q", "open_tokens", "BlockStream",
           "MixedBatches"]
