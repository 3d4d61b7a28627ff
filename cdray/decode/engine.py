"""The batched two-model sampling engine: per-slot KV caches, per-row seeds, EOS stop and refill."""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from torch import Tensor

from cdray.common.special_tokens import EOS_ID, PAD_ID
from cdray.config import NEEDS_AMATEUR, STRATEGIES, DecodingConfig
from cdray.decode.scores import NgramBlocker, sample_inverse_cdf, step_scores
from cdray.decode.truncation import truncate
from cdray.decode.slots import RowQueue, RowResult, SlotBatch
from cdray.decode.stacked import StackedLlama, same_shape


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
        # queue each step before the host files the previous one (generate); turned off only to
        # check that it changes no row (tests) and to measure what it saves (bench/decoding.py)
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

    def forward(self, ids, positions, slots=None, last=None, seeds=None,
                max_position=None) -> list[Tensor]:
        """Every model's logits for one prefill or decode step: [expert, amateur if used]."""
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
        B = max(1, min(batch_size, n, *(g.max_batch() for g in self.groups)))
        # rows from `more` may widen a batch that started (or shrank) below batch_size
        B_max = max(1, min(batch_size, *(g.max_batch() for g in self.groups)))
        if not stop_at_eos and more is None:
            # every row takes max_new_tokens steps, so rows go in ceil(n / B) rounds that start
            # and end together: spread evenly, the last round leaves no slot empty (4096 rows in
            # 1536 slots: 3 rounds of 1366, not 1536, 1536 and 1024)
            B = -(-n // -(-n // B))
        results: list[Optional[RowResult]] = [None] * n if more is None else []
        queue = RowQueue(prompts, row_seeds, more, check)
        blocker = NgramBlocker(self.d.no_repeat_ngram) if self.d.no_repeat_ngram > 0 else None
        batch = SlotBatch(self, B, T, max_new_tokens, pad_id, blocker, staging_rows=B_max)
        fused = self.fused_sampler

        def pull() -> bool:
            """Rows of `more` for idle slots; the batch regrows to every slot it may have."""
            got = queue.pull()
            if got and batch.width < B_max:
                batch.resize(torch.arange(batch.width), B_max)
            return got

        if usage is not None:
            usage.setdefault("slot_steps", 0)
            usage.setdefault("row_steps", 0)
        batch.admit(list(range(B)), queue.take(B))
        while True:
            live = batch.row >= 0
            n_live = int(live.sum())
            if n_live == 0:
                break
            if usage is not None:
                usage["slot_steps"] += batch.width
                usage["row_steps"] += n_live
            token, *row_stats = self._sample(batch.logits, batch.uniform(), blocker, fused)
            host = batch.send_home(token, *row_stats)
            # the next step is queued before the host waits for this one's tokens: every slot
            # is fed its own token on the device, so the device computes step t+1 while the host
            # files step t. A row that ended at step t is fed once more, harmlessly: it writes
            # its own slot past its end, which a refill's prefill overwrites, and no other row
            # reads. Skipped when no row can outlive this step (every live one reaches its
            # length), so a call's last step is not computed for nothing.
            ahead = self.look_ahead and bool((live & (batch.step + 1 < max_new_tokens)).any())
            if ahead:  # every live row has been fed `step` tokens
                batch.decode(token, int((batch.plen + batch.step)[live].max()))
            batch.step_d += 1
            ended, free = batch.file(host, live, stop_at_eos, eos_id, self.uses_amateur)
            for r, res in ended:
                if more is None:
                    results[r] = res
                if on_row is not None:
                    on_row(r, res)
            live = batch.row >= 0
            if not ahead and bool(live.any()):  # now step - 1 of them
                batch.decode(token, int((batch.plen + batch.step - 1)[live].max()))
            if refill and more is not None and not queue and bool((batch.row < 0).any()):
                pull()
            # slots to refill: those freed now (and, with `more`, any left empty while the queue
            # was dry)
            idle = free if more is None else torch.nonzero(batch.row < 0).squeeze(1).tolist()
            if idle and refill and queue:
                # the batch stays full: refill every idle slot from the queue
                slots = idle[:len(queue)]
                batch.admit(slots, queue.take(len(slots)))
                continue
            if not bool(live.any()):
                if queue or pull():  # no refill: start the next batch
                    k = min(batch.width, len(queue))
                    batch.admit(list(range(k)), queue.take(k))
                continue
            if (free and not queue and int(live.sum()) <= batch.width // 2
                    and not any(g.fixed_batch for g in self.groups)):
                # nothing left to refill with: drop finished slots so steps get cheaper
                batch.resize(torch.nonzero(live).squeeze(1), int(live.sum()))
        return results  # type: ignore[return-value]

    def _sample(self, logits: list[Tensor], u: Tensor, blocker: Optional[NgramBlocker],
                fused: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step's tokens from the slots' logits and uniforms, with |V_head| and both NLLs."""
        zg = logits[0]
        za = logits[1] if self.uses_amateur else None
        if fused:
            from cdray.decode.fused import fused_sample

            return fused_sample(zg, za, u, self.strategy, self.d)
        scores, head, log_pg, log_pb = step_scores(zg, za, self.strategy, self.d)
        if blocker is not None:
            scores = blocker.apply(scores)
        token = sample_inverse_cdf(truncate(scores, self.d), u)
        nll_e = _nll(zg, log_pg, token, self.d.temperature)
        nll_a = (_nll(za, log_pb, token, self.d.temperature) if za is not None
                 else torch.zeros_like(nll_e))
        return token, head.sum(dim=-1), nll_e, nll_a
