"""The batched two-model sampling engine: per-slot KV caches, per-row seeds, EOS stop and refill."""
from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from cdray.common.special_tokens import EOS_ID, PAD_ID
from cdray.config import NEEDS_AMATEUR, STRATEGIES, DecodingConfig
from cdray.decode.scores import NgramBlocker, sample_inverse_cdf, step_scores, truncate
from cdray.decode.stacked import StackedLlama, same_shape


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


def available_memory(device) -> int:
    """Bytes this process may still use: free GPU memory, or available RAM on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil ships with ray
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def plan_batch_size(groups: list[StackedLlama], max_len: int, cap: int, memory_fraction: float,
                    device, available: Optional[int] = None) -> int:
    """Largest batch whose KV caches (every model) and fp32 step temporaries fit the memory share.

    Per row: the cache of each stacked group plus ~8 vocabulary-sized fp32 buffers (logits of
    both models, scores, softmax, cumsum...). Capped by `cap` and at least 1.
    """
    if cap < 1:
        raise ValueError(f"batch cap {cap} must be >= 1")
    vocab = groups[0].vocab
    per_row = sum(g.kv_bytes_per_row(max_len) for g in groups) + 8 * 4 * vocab
    budget = (available if available is not None else available_memory(device)) * memory_fraction
    return max(1, min(cap, int(budget // per_row)))


def _nll(logits: Tensor, logp_t: Optional[Tensor], token: Tensor, temperature: float) -> Tensor:
    """-log p(token) under the model itself (T=1), reusing log_softmax(z/T) when T is 1."""
    if temperature == 1.0 and logp_t is not None:
        return -logp_t.gather(1, token[:, None]).squeeze(1)
    return torch.logsumexp(logits, -1) - logits.gather(1, token[:, None]).squeeze(1)


class Decoder:
    """Holds the (stacked) models of one expert/amateur pair and samples rows with them."""

    def __init__(self, expert, amateur, strategy: str, d: DecodingConfig, *, device="cpu",
                 dtype=torch.float32, amateur_dropout: float = 0.0, engine: str = "auto",
                 attention: str = "auto", compile_layers: bool = False, kv_cache: str = "model"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r} (one of {list(STRATEGIES)})")
        if strategy in NEEDS_AMATEUR and amateur is None:
            raise ValueError(f"strategy {strategy!r} needs an amateur model")
        if engine not in ("auto", "stacked", "separate"):
            raise ValueError(f"unknown engine {engine!r}")
        self.strategy, self.d, self.device = strategy, d, torch.device(device)
        self.uses_amateur = strategy in NEEDS_AMATEUR
        drop = float(amateur_dropout)
        if not self.uses_amateur:
            # its logits would be unused: never pay for the amateur's forward
            self.groups = [StackedLlama([expert], dtype=dtype, device=device, attention=attention,
                                        kv_cache=kv_cache)]
            self.index = [(0, 0)]
        elif engine != "separate" and same_shape(expert, amateur):
            self.groups = [StackedLlama([expert, amateur], dtype=dtype, device=device,
                                        dropout=[0.0, drop], attention=attention,
                                        kv_cache=kv_cache)]
            self.index = [(0, 0), (0, 1)]
        else:
            if engine == "stacked":
                raise ValueError("engine 'stacked' needs an amateur of the expert's shape")
            self.groups = [StackedLlama([expert], dtype=dtype, device=device, attention=attention,
                                        kv_cache=kv_cache),
                           StackedLlama([amateur], dtype=dtype, device=device, dropout=[drop],
                                        attention=attention, kv_cache=kv_cache)]
            self.index = [(0, 0), (1, 0)]
        # queue each step before the host files the previous one (generate); off only for A/Bs
        self.look_ahead = True
        fused = self.fused_sampler
        for g in self.groups:
            # the fused sampler reads the step's logits in the model's dtype (see FastDecode)
            g.fast_options = {"compiled": bool(compile_layers), "float_logits": not fused}
        if self.uses_amateur and self.groups[-1].vocab != self.groups[0].vocab:
            raise ValueError("expert and amateur vocabularies differ")

    @property
    def fused_sampler(self) -> bool:
        """With the triton step, the sampler is one Triton launch too, where it computes the
        strategy (cdray.decode.fused): its rounding is its own, so it goes with that step only."""
        from cdray.decode.fused import fused_sampler_fits

        return (all(g.fast_kernel == "triton" for g in self.groups)
                and fused_sampler_fits(self.strategy, self.d))

    def _forward(self, ids, positions, slots=None, last=None, seeds=None,
                 max_position=None) -> list[Tensor]:
        outs = [g.forward(ids, positions, slots=slots, last=last, seeds=seeds,
                          max_position=max_position) for g in self.groups]
        return [outs[gi][mi] for gi, mi in self.index]

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], row_seeds: list[int], *, max_new_tokens: int,
                 stop_at_eos: bool, eos_id: int = EOS_ID, pad_id: int = PAD_ID, batch_size: int = 64,
                 max_len: Optional[int] = None, refill: bool = True,
                 on_row: Optional[Callable[[int, RowResult], None]] = None,
                 usage: Optional[dict] = None,
                 more: Optional[Callable[[], list[tuple[list[int], int]]]] = None,
                 ) -> list[RowResult]:
        """One continuation per prompt; row j's uniforms come from its own seed row_seeds[j].

        The batch holds `batch_size` slots; a slot whose row ends (EOS or length) takes the next
        queued row when `refill` is set (its prompt is prefilled in a batch of its own), else
        the batch shrinks. max_len (cache length) defaults to the longest prompt +
        max_new_tokens; pass a fixed value so a row's arithmetic never depends on its shard.
        usage, when given, accumulates "slot_steps" (slots computed, summed over decode steps)
        and "row_steps" (tokens sampled) as the call runs: their ratio is how busy the batch was,
        which the drain at the call's end (no rows left to refill with, rows still running)
        brings below 1.
        more, when given, is asked for further (prompt, seed) rows whenever the queue runs dry:
        rows it returns are numbered on from len(prompts) and join the batch as slots free (a
        batch narrower than batch_size, from few first rows or a drain, widens for them), so
        the call ends only when it returns none and every row has ended. Rows then reach the
        caller through on_row only (none are kept: the call may outlive many requests), and
        max_len is required.
        """
        n = len(prompts)
        if n != len(row_seeds):
            raise ValueError(f"{n} prompts but {len(row_seeds)} row seeds")
        if n == 0:
            return []
        if more is not None and max_len is None:
            raise ValueError("generate with `more` rows needs a fixed max_len")
        T = max_len if max_len is not None else max(len(p) for p in prompts) + max_new_tokens

        def check(i: int, p: list[int]) -> None:
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty")
            if len(p) + max_new_tokens > T:
                raise ValueError(f"prompt of {len(p)} tokens + {max_new_tokens} new exceeds "
                                 f"max_len={T}")

        for i, p in enumerate(prompts):
            check(i, p)
        dev, d = self.device, self.d
        B = max(1, min(batch_size, n, *(g.max_batch() for g in self.groups)))
        # rows from `more` may widen a batch that started (or shrank) below batch_size
        B_max = max(1, min(batch_size, *(g.max_batch() for g in self.groups)))
        if not stop_at_eos and more is None:
            # every row takes max_new_tokens steps, so rows go in ceil(n / B) rounds that start
            # and end together: spread evenly, the last round leaves no slot empty (4096 rows in
            # 1536 slots: 3 rounds of 1366, not 1536, 1536 and 1024)
            B = -(-n // -(-n // B))
        for g in self.groups:
            g.new_cache(B, T)
        results: list[Optional[RowResult]] = [None] * n if more is None else []
        queue = deque(zip(range(n), prompts, row_seeds))  # (row number, prompt, seed)
        added = n

        def pull() -> bool:
            """Queue the rows `more` has now; False when it has none (or there is no `more`)."""
            nonlocal added
            if more is None:
                return False
            rows_more = more()
            for p, seed in rows_more:
                check(added, p)
                queue.append((added, p, seed))
                added += 1
            if rows_more and len(row) < B_max:  # give the rows every slot the batch may have
                resize(torch.arange(len(row)), B_max)
            return bool(rows_more)

        def resize(keep: Tensor, width: int) -> None:
            """Rebuild the batch from the slots `keep` (host indices, in order), then empty
            slots up to `width`: drops finished slots, or adds slots for rows that came later."""
            nonlocal row, step, buf, stats, spent, plen, pos, uniforms, slot_seeds, step_d, live_d
            nonlocal logits
            kd, extra = keep.to(dev), width - len(keep)
            for g in self.groups:
                g.keep_slots(kd, width)

            def widen(t: Tensor, fill=0) -> Tensor:
                t = t[kd] if t.device == kd.device else t[keep]
                return torch.cat([t, torch.full((extra, *t.shape[1:]), fill, dtype=t.dtype,
                                                device=t.device)])

            row, step, buf, stats = widen(row, -1), widen(step), widen(buf, pad_id), widen(stats)
            spent = widen(spent)
            plen, pos, uniforms, slot_seeds = widen(plen), widen(pos), widen(uniforms), widen(slot_seeds)
            step_d, live_d = widen(step_d), widen(live_d, False)
            logits = [widen(x) for x in logits]
            if blocker is not None:
                blocker.compact(keep.tolist())

        if usage is not None:
            usage.setdefault("slot_steps", 0)
            usage.setdefault("row_steps", 0)

        # per-slot state: the host's (row bookkeeping) and the device's (what the next step feeds)
        row = torch.full((B,), -1, dtype=torch.long)  # -1: empty
        step = torch.zeros(B, dtype=torch.long)  # tokens sampled so far
        plen = torch.zeros(B, dtype=torch.long)  # prompt length: a slot's k-th feed is at plen + k
        step_d = torch.zeros(B, dtype=torch.long, device=dev)  # the same, for the uniforms' index
        live_d = torch.zeros(B, dtype=torch.bool, device=dev)  # slot holds an unfinished row
        pos = torch.zeros(B, dtype=torch.long, device=dev)  # position of the next fed token
        uniforms = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=dev)
        slot_seeds = torch.zeros(B, dtype=torch.int64, device=dev)
        buf = torch.full((B, max_new_tokens), pad_id, dtype=torch.long)
        stats = torch.zeros((B, 3), dtype=torch.float64)  # head sum, expert nll sum, amateur nll sum
        spent = torch.zeros(B, dtype=torch.float64)  # seconds: RowResult.seconds so far
        vocab = self.groups[0].vocab
        fused = self.fused_sampler
        # prefill logits are the model's dtype widened, so storing them narrowed is exact
        logit_dtype = self.groups[0].dtype if fused else torch.float32
        logits = [torch.zeros((B, vocab), dtype=logit_dtype, device=dev) for _ in self.index]
        blocker = NgramBlocker(d.no_repeat_ngram) if d.no_repeat_ngram > 0 else None
        # a step's token, |V_head| and NLLs come back to the host through one pinned buffer
        # while the device already runs the next step (see below)
        cuda = dev.type == "cuda"
        staging = torch.empty(4 * B_max, dtype=torch.float64, pin_memory=cuda)
        copied = torch.cuda.Event() if cuda else None

        def to_dev(t: Tensor) -> Tensor:
            # from pinned memory without waiting: a plain copy to a GPU waits for every queued
            # step, which would stall the step queued ahead on each refill
            return t.pin_memory().to(dev, non_blocking=True) if cuda else t.to(dev)

        def admit(slots: list[int]) -> None:
            items = [queue.popleft() for _ in slots]
            rows_ = [r for r, _, _ in items]
            # a fixed prefill width (not the longest prompt of this group): a row's prefill
            # arithmetic then never depends on which rows it is prefilled with
            width = T - max_new_tokens
            ids = torch.full((len(slots), width), pad_id, dtype=torch.long)
            lens = torch.tensor([len(p) for _, p, _ in items])
            fresh = torch.empty((len(slots), max_new_tokens), dtype=torch.float32)
            for i, (_, p, seed) in enumerate(items):
                ids[i, :len(p)] = torch.tensor(p, dtype=torch.long)
                gen = torch.Generator().manual_seed(int(seed))
                fresh[i] = torch.rand(max_new_tokens, generator=gen)
                if blocker is not None:
                    blocker.reset(slots[i], p)
            s = torch.tensor(slots, dtype=torch.long)
            row[s] = torch.tensor(rows_)
            step[s] = 0
            plen[s] = lens
            buf[s] = pad_id
            stats[s] = 0.0
            spent[s] = 0.0
            sd = to_dev(s)
            uniforms[sd] = to_dev(fresh)
            step_d[sd] = 0
            live_d[sd] = True
            slot_seeds[sd] = to_dev(torch.tensor([seed for _, _, seed in items],
                                                 dtype=torch.int64))
            pos[sd] = to_dev(lens)
            # right padding: a row's tokens sit at their true positions 0..len-1 in its slot
            positions = to_dev(torch.arange(width).expand(len(slots), width).contiguous())
            out = self._forward(to_dev(ids), positions, slots=sd, last=to_dev(lens - 1),
                                seeds=slot_seeds[sd], max_position=width - 1)
            for buf_, o in zip(logits, out):
                buf_[sd] = o.to(buf_.dtype)

        clock = time.perf_counter()
        admit(list(range(B)))
        while True:
            live = row >= 0
            n_live = int(live.sum())
            if n_live == 0:
                break
            if usage is not None:
                usage["slot_steps"] += len(row)
                usage["row_steps"] += n_live
            zg = logits[0]
            za = logits[1] if self.uses_amateur else None
            u = uniforms.gather(1, step_d.clamp(max=max_new_tokens - 1)[:, None]).squeeze(1)
            if fused:
                from cdray.decode.fused import fused_sample

                token, head_size, nll_e, nll_a = fused_sample(zg, za, u, self.strategy, d)
            else:
                scores, head, log_pg, log_pb = step_scores(zg, za, self.strategy, d)
                if blocker is not None:
                    scores = blocker.apply(scores)
                scores = truncate(scores, d.top_k, d.top_p)
                token = sample_inverse_cdf(scores, u)
                head_size = head.sum(dim=-1)
                nll_e = _nll(zg, log_pg, token, d.temperature)
                nll_a = (_nll(za, log_pb, token, d.temperature) if za is not None
                         else torch.zeros_like(nll_e))
            # one device-to-host copy per step; token ids are exact in float64
            packed = torch.stack([token.double(), head_size.double(), nll_e.double(),
                                  nll_a.double()])
            host = staging[:packed.numel()].view(packed.shape)
            host.copy_(packed, non_blocking=cuda)
            if copied is not None:
                copied.record()
            # the next step is queued before the host waits for this one's tokens: every slot
            # is fed its own token on the device, so the device computes step t+1 while the host
            # files step t. A row that ended at step t is fed once more, harmlessly: it writes
            # its own slot past its end, which a refill's prefill overwrites, and no other row
            # reads. Skipped when no row can outlive this step (every live one reaches its
            # length), so a call's last step is not computed for nothing.
            ahead = self.look_ahead and bool((live & (step + 1 < max_new_tokens)).any())
            if ahead:  # every live row has been fed `step` tokens
                self._decode(token, live_d, pos, T, pad_id, slot_seeds, logits,
                             int((plen + step)[live].max()))
            step_d += 1
            if copied is not None:
                copied.synchronize()
            tok_cpu, hsz, nll_e, nll_a = host[0].long(), host[1], host[2], host[3]
            live_idx = torch.nonzero(live).squeeze(1)
            # the time since the last step was filed (refills and prefills included) went
            # to the rows this step sampled for
            now = time.perf_counter()
            spent[live_idx] += (now - clock) / n_live
            clock = now
            buf[live_idx, step[live_idx]] = tok_cpu[live_idx]
            stats[live_idx] += torch.stack([hsz, nll_e, nll_a], dim=1)[live_idx]
            step[live_idx] += 1
            if blocker is not None:
                blocker.push(live_idx.tolist(), tok_cpu[live_idx].tolist())
            eos = (tok_cpu == eos_id) & live if stop_at_eos else torch.zeros_like(live)
            done = live & (eos | (step >= max_new_tokens))
            free: list[int] = []
            for s in torch.nonzero(done).squeeze(1).tolist():
                k = int(step[s])
                st = stats[s] / k
                res = RowResult(tokens=buf[s, :k].tolist(), stopped_at_eos=bool(eos[s]),
                                head_size_mean=float(st[0]), expert_nll_mean=float(st[1]),
                                amateur_nll_mean=float(st[2]) if self.uses_amateur else math.nan,
                                seconds=float(spent[s]))
                r = int(row[s])
                if more is None:
                    results[r] = res
                if on_row is not None:
                    on_row(r, res)
                row[s] = -1
                free.append(s)
            if free:
                live_d[to_dev(torch.tensor(free))] = False
            live = row >= 0
            if not ahead and bool(live.any()):  # now step - 1 of them
                self._decode(token, live_d, pos, T, pad_id, slot_seeds, logits,
                             int((plen + step - 1)[live].max()))
            if refill and more is not None and not queue and bool((row < 0).any()):
                pull()  # rows of `more` for the idle slots (the batch regrows if it shrank)
            # slots to refill: those freed now (and, with `more`, any left empty while the queue
            # was dry)
            idle = free if more is None else torch.nonzero(row < 0).squeeze(1).tolist()
            if idle and refill and queue:
                # the batch stays full: refill every idle slot from the queue
                admit(idle[:len(queue)])
                continue
            if not bool(live.any()):
                if queue or pull():  # no refill: start the next batch
                    admit(list(range(min(len(row), len(queue)))))
                continue
            if (free and not queue and int(live.sum()) <= len(row) // 2
                    and not any(g.fixed_batch for g in self.groups)):
                # nothing left to refill with: drop finished slots so steps get cheaper
                resize(torch.nonzero(live).squeeze(1), int(live.sum()))
        return results  # type: ignore[return-value]

    def _decode(self, token: Tensor, live_d: Tensor, pos: Tensor, T: int, pad_id: int,
                slot_seeds: Tensor, logits: list[Tensor], max_position: int) -> None:
        """Feed each live slot its sampled token at its next position (dead slots feed a pad at
        position 0 of their own slot), all on the device; max_position is the largest, from the
        host's count (the eager step would otherwise read it back from the device)."""
        ids = torch.where(live_d, token, pad_id)[:, None]
        # never past the cache, whatever the slot: the triton step writes without bounds checks
        positions = torch.where(live_d, pos, 0).clamp_(max=T - 1)[:, None]
        out = self._forward(ids, positions, seeds=slot_seeds,
                            max_position=min(max_position, T - 1))
        pos += live_d.long()
        logits[:] = out  # every slot's logits are new: take the fresh tensors, no copy
