"""The slots of one generate call: which row each holds, its sampled tokens, and what it feeds next."""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from cdray.decode.scores import NgramBlocker


@dataclass
class RowResult:
    tokens: list[int]  # new tokens only, EOS included if produced
    stopped_at_eos: bool
    head_size_mean: float  # mean |V_head| over the steps that produced this row's tokens
    expert_nll_mean: float = 0.0  # mean -log pG(token) (T=1) of the sampled tokens
    amateur_nll_mean: float = math.nan  # the same under the amateur; nan without one
    # the row's share of the call's wall time: each step's, split evenly over its live rows
    # (so the rows of a call, or of one request among several sharing it, sum to the time
    # they took of it); timing, so never part of a row's identity
    seconds: float = field(default=0.0, compare=False)


Row = tuple[int, list[int], int]  # (row number, prompt, seed)


class RowQueue:
    """The rows waiting for a slot: the call's prompts, then whatever `more` returns (numbered on)."""

    def __init__(self, prompts: list[list[int]], row_seeds: list[int],
                 more: Optional[Callable[[], list[tuple[list[int], int]]]],
                 check: Callable[[int, list[int]], None]):
        self.rows: deque[Row] = deque(zip(range(len(prompts)), prompts, row_seeds))
        self.added, self.more, self.check = len(prompts), more, check

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, k: int) -> list[Row]:
        return [self.rows.popleft() for _ in range(k)]

    def pull(self) -> bool:
        """Queue the rows `more` has now; False when it has none (or there is no `more`)."""
        if self.more is None:
            return False
        fresh = self.more()
        for prompt, seed in fresh:
            self.check(self.added, prompt)
            self.rows.append((self.added, prompt, seed))
            self.added += 1
        return bool(fresh)


class SlotBatch:
    """Per-slot state of a batch: the host's bookkeeping (row, tokens so far, statistics) and the
    device's (positions, uniforms, seeds, the last logits) that the next step feeds on."""

    def __init__(self, decoder, width: int, T: int, max_new_tokens: int, pad_id: int,
                 blocker: Optional[NgramBlocker], staging_rows: int):
        dev = self.dev = decoder.device
        self.decoder, self.T, self.max_new, self.pad_id, self.blocker = (
            decoder, T, max_new_tokens, pad_id, blocker)
        for g in decoder.groups:
            g.new_cache(width, T)
        self.row = torch.full((width,), -1, dtype=torch.long)  # -1: empty
        self.step = torch.zeros(width, dtype=torch.long)  # tokens sampled so far
        self.plen = torch.zeros(width, dtype=torch.long)  # prompt length: k-th feed at plen + k
        self.step_d = torch.zeros(width, dtype=torch.long, device=dev)  # the same, for the uniforms
        self.live_d = torch.zeros(width, dtype=torch.bool, device=dev)  # holds an unfinished row
        self.pos = torch.zeros(width, dtype=torch.long, device=dev)  # position of the next fed token
        self.uniforms = torch.zeros((width, max_new_tokens), dtype=torch.float32, device=dev)
        self.seeds = torch.zeros(width, dtype=torch.int64, device=dev)
        self.buf = torch.full((width, max_new_tokens), pad_id, dtype=torch.long)
        self.stats = torch.zeros((width, 3), dtype=torch.float64)  # head, expert nll, amateur nll sums
        self.spent = torch.zeros(width, dtype=torch.float64)  # seconds: RowResult.seconds so far
        # prefill logits are the model's dtype widened, so storing them narrowed is exact
        logit_dtype = decoder.groups[0].dtype if decoder.fused_sampler else torch.float32
        self.logits = [torch.zeros((width, decoder.groups[0].vocab), dtype=logit_dtype, device=dev)
                       for _ in decoder.index]
        # a step's token, |V_head| and NLLs come back to the host through one pinned buffer
        # while the device already runs the next step (Decoder.generate)
        self.cuda = dev.type == "cuda"
        self.staging = torch.empty(4 * staging_rows, dtype=torch.float64, pin_memory=self.cuda)
        self.copied = torch.cuda.Event() if self.cuda else None
        self.clock = time.perf_counter()

    @property
    def width(self) -> int:
        return len(self.row)

    def to_dev(self, t: Tensor) -> Tensor:
        # from pinned memory without waiting: a plain copy to a GPU waits for every queued
        # step, which would stall the step queued ahead on each refill
        return t.pin_memory().to(self.dev, non_blocking=True) if self.cuda else t.to(self.dev)

    def admit(self, slots: list[int], items: list[Row]) -> None:
        """Put rows into empty slots and prefill their prompts (in a batch of their own)."""
        # a fixed prefill width (not the longest prompt of this group): a row's prefill
        # arithmetic then never depends on which rows it is prefilled with
        width = self.T - self.max_new
        ids = torch.full((len(slots), width), self.pad_id, dtype=torch.long)
        lens = torch.tensor([len(p) for _, p, _ in items])
        fresh = torch.empty((len(slots), self.max_new), dtype=torch.float32)
        for i, (_, p, seed) in enumerate(items):
            ids[i, :len(p)] = torch.tensor(p, dtype=torch.long)
            fresh[i] = torch.rand(self.max_new, generator=torch.Generator().manual_seed(int(seed)))
            if self.blocker is not None:
                self.blocker.reset(slots[i], p)
        s = torch.tensor(slots, dtype=torch.long)
        self.row[s] = torch.tensor([r for r, _, _ in items])
        self.step[s] = 0
        self.plen[s] = lens
        self.buf[s] = self.pad_id
        self.stats[s] = 0.0
        self.spent[s] = 0.0
        sd = self.to_dev(s)
        self.uniforms[sd] = self.to_dev(fresh)
        self.step_d[sd] = 0
        self.live_d[sd] = True
        self.seeds[sd] = self.to_dev(torch.tensor([seed for _, _, seed in items], dtype=torch.int64))
        self.pos[sd] = self.to_dev(lens)
        # right padding: a row's tokens sit at their true positions 0..len-1 in its slot
        positions = self.to_dev(torch.arange(width).expand(len(slots), width).contiguous())
        out = self.decoder.forward(self.to_dev(ids), positions, slots=sd, last=self.to_dev(lens - 1),
                                    seeds=self.seeds[sd], max_position=width - 1)
        for buf_, o in zip(self.logits, out):
            buf_[sd] = o.to(buf_.dtype)

    def resize(self, keep: Tensor, width: int) -> None:
        """Rebuild the batch from the slots `keep` (host indices, in order), then empty slots up
        to `width`: drops finished slots, or adds slots for rows that came later."""
        kd, extra = keep.to(self.dev), width - len(keep)
        for g in self.decoder.groups:
            g.keep_slots(kd, width)

        def widen(t: Tensor, fill=0) -> Tensor:
            t = t[kd] if t.device == kd.device else t[keep]
            return torch.cat([t, torch.full((extra, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)])

        self.row, self.step, self.buf = widen(self.row, -1), widen(self.step), widen(self.buf, self.pad_id)
        self.stats, self.spent, self.plen = widen(self.stats), widen(self.spent), widen(self.plen)
        self.pos, self.uniforms, self.seeds = widen(self.pos), widen(self.uniforms), widen(self.seeds)
        self.step_d, self.live_d = widen(self.step_d), widen(self.live_d, False)
        self.logits = [widen(x) for x in self.logits]
        if self.blocker is not None:
            self.blocker.compact(keep.tolist())

    def uniform(self) -> Tensor:
        """Each slot's uniform for the step it is at (clamped for slots past their end)."""
        return self.uniforms.gather(1, self.step_d.clamp(max=self.max_new - 1)[:, None]).squeeze(1)

    def send_home(self, token: Tensor, head_size: Tensor, nll_e: Tensor, nll_a: Tensor) -> Tensor:
        """Start the step's one device-to-host copy (token ids are exact in float64)."""
        packed = torch.stack([token.double(), head_size.double(), nll_e.double(), nll_a.double()])
        host = self.staging[:packed.numel()].view(packed.shape)
        host.copy_(packed, non_blocking=self.cuda)
        if self.copied is not None:
            self.copied.record()
        return host

    def decode(self, token: Tensor, max_position: int) -> None:
        """Feed each live slot its sampled token at its next position (dead slots feed a pad at
        position 0 of their own slot), all on the device; max_position is the largest, from the
        host's count (the eager step would otherwise read it back from the device)."""
        ids = torch.where(self.live_d, token, self.pad_id)[:, None]
        # never past the cache, whatever the slot: the triton step writes without bounds checks
        positions = torch.where(self.live_d, self.pos, 0).clamp_(max=self.T - 1)[:, None]
        self.logits = self.decoder.forward(ids, positions, seeds=self.seeds,
                                            max_position=min(max_position, self.T - 1))
        self.pos += self.live_d.long()

    def file(self, host: Tensor, live: Tensor, stop_at_eos: bool, eos_id: int,
             amateur: bool) -> tuple[list[tuple[int, RowResult]], list[int]]:
        """File the step's tokens on the host (waiting for its copy) and end the rows that are
        done: returns (row number, result) for each, by slot, and the slots they emptied."""
        if self.copied is not None:
            self.copied.synchronize()
        tok, hsz, nll_e, nll_a = host[0].long(), host[1], host[2], host[3]
        idx = torch.nonzero(live).squeeze(1)
        # the time since the last step was filed (refills and prefills included) went to the
        # rows this step sampled for
        now = time.perf_counter()
        self.spent[idx] += (now - self.clock) / len(idx)
        self.clock = now
        self.buf[idx, self.step[idx]] = tok[idx]
        self.stats[idx] += torch.stack([hsz, nll_e, nll_a], dim=1)[idx]
        self.step[idx] += 1
        if self.blocker is not None:
            self.blocker.push(idx.tolist(), tok[idx].tolist())
        eos = (tok == eos_id) & live if stop_at_eos else torch.zeros_like(live)
        done = live & (eos | (self.step >= self.max_new))
        ended = []
        for s in torch.nonzero(done).squeeze(1).tolist():
            k = int(self.step[s])
            st = self.stats[s] / k
            ended.append((int(self.row[s]), RowResult(
                tokens=self.buf[s, :k].tolist(), stopped_at_eos=bool(eos[s]),
                head_size_mean=float(st[0]), expert_nll_mean=float(st[1]),
                amateur_nll_mean=float(st[2]) if amateur else math.nan, seconds=float(self.spent[s]))))
            self.row[s] = -1
        freed = torch.nonzero(done).squeeze(1)
        if len(freed):
            self.live_d[self.to_dev(freed)] = False
        return ended, freed.tolist()
