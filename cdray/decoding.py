"""Decoding math and the batched two-model KV-cache sampling loop (PAPER.md section 2)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cdray.config import STRATEGIES, DecodingConfig

NEEDS_AMATEUR = ("contrastive", "contrastive_tail")


# ---------------------------------------------------------------- one decoding step


def _expert_logprobs(expert_logits: Tensor, d: DecodingConfig) -> Tensor:
    return torch.log_softmax(expert_logits.float() / d.temperature, dim=-1)


def _head_mask(expert_logits: Tensor, d: DecodingConfig) -> Tensor:
    # strict pG(x) > alpha * max pG on softmax itself (not exp(log_softmax)), so the boundary
    # is exactly the paper's definition
    p = torch.softmax(expert_logits.float() / d.temperature, dim=-1)
    return p > d.alpha * p.max(dim=-1, keepdim=True).values


def head_size(expert_logits: Tensor, d: DecodingConfig) -> Tensor:
    """|V_head| per row, as int64 [B]."""
    return _head_mask(expert_logits, d).sum(dim=-1)


def strategy_scores(expert_logits: Tensor, amateur_logits: Tensor | None, strategy: str,
                    d: DecodingConfig) -> Tensor:
    """Scores [B, V] (fp32) that the sampler turns into softmax(scores).

    pG = softmax(zG/T), pB = softmax(zB/T), V_head = {x : pG(x) > alpha * max pG}.

    - no_contrast:        zG / T
    - no_contrast_vhead:  log pG on V_head, d.penalty elsewhere
    - contrastive:        log pG - lam * log pB on V_head, d.penalty elsewhere
    - contrastive_tail:   CD score on V_head; a tail token x gets log pG(x) + c with
                          c = min_{h in V_head} cd(h) - log(alpha * max pG). A tail token has
                          pG(x) <= alpha * max pG, so its score is <= the smallest head score,
                          with equality only at the threshold: the tail joins the head
                          continuously and keeps the expert's relative shape.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (one of {list(STRATEGIES)})")
    if strategy == "no_contrast":
        return expert_logits.float() / d.temperature
    log_pg = _expert_logprobs(expert_logits, d)
    head = _head_mask(expert_logits, d)
    penalty = torch.full_like(log_pg, float(d.penalty))
    if strategy == "no_contrast_vhead":
        return torch.where(head, log_pg, penalty)
    if amateur_logits is None:
        raise ValueError(f"strategy {strategy!r} needs amateur logits")
    log_pb = torch.log_softmax(amateur_logits.float() / d.temperature, dim=-1)
    cd = log_pg - d.lam * log_pb
    if strategy == "contrastive":
        return torch.where(head, cd, penalty)
    # contrastive_tail
    inf = torch.tensor(math.inf, dtype=cd.dtype, device=cd.device)
    min_head = torch.where(head, cd, inf).min(dim=-1, keepdim=True).values
    log_thresh = math.log(d.alpha) if d.alpha > 0 else -math.inf
    log_thresh = log_thresh + log_pg.max(dim=-1, keepdim=True).values
    tail = log_pg + (min_head - log_thresh)
    # alpha=0 (or pG underflow) can give inf - inf; such tokens carry no mass anyway
    tail = torch.where(torch.isnan(tail), -inf, tail)
    return torch.where(head, cd, tail)


def truncate(scores: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Top-k then top-p truncation of scores [B, V]; dropped tokens become -inf.

    top-k keeps every token whose score is >= the k-th largest score, so ties at the k-th value
    are all kept (independent of index order). Hence with a finite penalty and |V_head| < k the
    k-th score is the penalty and top-k keeps everything (the paper's no-op).
    top-p keeps the smallest prefix of tokens sorted by probability (softmax(scores)), descending,
    stable by index, whose cumulative mass reaches top_p (the token crossing top_p is kept).
    """
    out = scores.float()
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = torch.where(out >= kth, out, torch.full_like(out, -math.inf))
    if top_p is not None and top_p < 1.0:
        probs = torch.softmax(out, dim=-1)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        keep_sorted = mass_before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        out = torch.where(keep, out, torch.full_like(out, -math.inf))
    return out


def sample_inverse_cdf(scores: Tensor, u: Tensor) -> Tensor:
    """One token per row from softmax(scores) given uniforms u [B] in [0, 1).

    token = first index whose cumulative probability is > u * total (strict, so a
    zero-probability token is never picked, even at u = 0); float round-off past the end is
    clamped to the last token with positive probability.
    """
    probs = torch.softmax(scores.float(), dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    positions = torch.arange(probs.shape[-1], device=probs.device)
    last_valid = torch.where(probs > 0, positions, -1).max(dim=-1).values.clamp(min=0)
    return torch.minimum(idx, last_valid)


# ---------------------------------------------------------------- the batched loop


@dataclass
class RowResult:
    tokens: list[int]  # new tokens only, EOS included if produced
    stopped_at_eos: bool
    head_size_mean: float  # mean |V_head| over the steps that produced this row's tokens


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


class _Stream:
    """One model's KV cache and the last-position logits for a left-padded batch."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)

    def step(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         cache=self.cache, use_cache=True, logits_to_keep=1)
        # DynamicCache grows in place; take the returned one in case a model swaps it
        self.cache = out.cache if out.cache is not None else self.cache
        return out.logits[:, -1, :].float()


def _generate_chunk(expert, amateur, prompts, seeds, strategy, d, max_new_tokens, stop_at_eos,
                    eos_id, pad_id, device) -> list[RowResult]:
    n = len(prompts)
    # each row's uniforms come from its own generator so rows don't depend on batch composition
    uniforms = torch.stack([torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s))
                            for s in seeds]).to(device)
    ids, mask = _left_pad(prompts, pad_id, device)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    streams = [_Stream(expert)] + ([_Stream(amateur)] if amateur is not None else [])

    new_tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    head_sum = torch.zeros(n, dtype=torch.float64, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    eos_hit = torch.zeros(n, dtype=torch.bool, device=device)

    step_ids, step_pos = ids, positions
    for t in range(max_new_tokens):
        logits = [s.step(step_ids, mask, step_pos) for s in streams]
        expert_logits = logits[0]
        amateur_logits = logits[1] if len(logits) > 1 else None
        scores = strategy_scores(expert_logits, amateur_logits, strategy, d)
        scores = truncate(scores, d.top_k, d.top_p)
        token = sample_inverse_cdf(scores, uniforms[:, t])

        active = ~finished
        new_tokens[:, t] = torch.where(active, token, new_tokens[:, t])
        lengths += active.long()
        head_sum += torch.where(active, head_size(expert_logits, d).double(), 0.0)
        if stop_at_eos:
            just_ended = active & (token == eos_id)
            eos_hit |= just_ended
            finished |= just_ended
        if bool(finished.all()) or t == max_new_tokens - 1:
            break
        # finished rows keep feeding pad tokens; their outputs are ignored
        step_ids = torch.where(finished, pad_id, token).unsqueeze(-1)
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=-1)

    rows = []
    for i in range(n):
        k = int(lengths[i])
        rows.append(RowResult(tokens=new_tokens[i, :k].tolist(), stopped_at_eos=bool(eos_hit[i]),
                              head_size_mean=float(head_sum[i]) / k if k else 0.0))
    return rows


def generate(expert, amateur, prompts: list[list[int]], row_seeds: list[int], strategy: str,
             d: DecodingConfig, *, max_new_tokens: int, stop_at_eos: bool, eos_id: int = 2,
             pad_id: int = 3, batch_size: int = 64, device="cpu", dtype=torch.float32,
             amateur_dropout: bool = False) -> list[RowResult]:
    """Sample one continuation per prompt; row j uses uniforms from seed row_seeds[j].

    Models must already be on `device` in `dtype` (the caller loads them so); logits are
    upcast to fp32 before scoring. The expert runs in eval mode; the amateur too, unless
    amateur_dropout is set (a DROP-p amateur), when it runs in train mode so that its attention
    dropout is active. No gradients are tracked.
    """
    del dtype  # models arrive in their dtype; kept for a uniform call signature
    if len(prompts) != len(row_seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(row_seeds)} row seeds")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (one of {list(STRATEGIES)})")
    if strategy in NEEDS_AMATEUR and amateur is None:
        raise ValueError(f"strategy {strategy!r} needs an amateur model")
    if strategy not in NEEDS_AMATEUR:
        amateur = None  # its logits would be unused: don't pay for its forward
    expert.eval()
    if amateur is not None:
        amateur.train(amateur_dropout)
    results: list[RowResult] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            end = start + batch_size
            results.extend(_generate_chunk(expert, amateur, prompts[start:end],
                                           row_seeds[start:end], strategy, d, max_new_tokens,
                                           stop_at_eos, eos_id, pad_id, device))
    return results
