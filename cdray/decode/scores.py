"""Contrastive decoding math (Ulm et al. 2025, arXiv 2510.08245): scores, sampler, n-gram blocking (the
truncation rules: cdray.decode.truncation)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from cdray.config import STRATEGIES, DecodingConfig

# ---------------------------------------------------------------- one decoding step


def _head_mask(zg: Tensor, alpha: float) -> Tensor:
    """V_head of temperature-scaled expert logits zg [B, V]."""
    # strict pG(x) > alpha * max pG on softmax itself (not exp(log_softmax)), so the boundary
    # is exactly the paper's definition (amax, not max: max also builds an index tensor)
    p = torch.softmax(zg, dim=-1)
    return p > alpha * p.amax(dim=-1, keepdim=True)


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    # z / 1 is z exactly: skip a vocabulary-sized pass at the paper's T = 1
    z = logits.float()
    return z if temperature == 1.0 else z / temperature


def head_size(expert_logits: Tensor, d: DecodingConfig) -> Tensor:
    """|V_head| per row, as int64 [B]."""
    return _head_mask(_scaled(expert_logits, d.temperature), d.alpha).sum(dim=-1)


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
    return step_scores(expert_logits, amateur_logits, strategy, d)[0]


def step_scores(expert_logits: Tensor, amateur_logits: Tensor | None, strategy: str,
                d: DecodingConfig) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(scores, V_head mask, log pG, log pB or None) of one step, each computed once."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (one of {list(STRATEGIES)})")
    zg = _scaled(expert_logits, d.temperature)
    head = _head_mask(zg, d.alpha)
    log_pg = torch.log_softmax(zg, dim=-1)
    log_pb = None
    if strategy == "no_contrast":
        return zg, head, log_pg, None
    penalty = torch.tensor(float(d.penalty), dtype=log_pg.dtype, device=log_pg.device)
    if strategy == "no_contrast_vhead":
        return torch.where(head, log_pg, penalty), head, log_pg, None
    if amateur_logits is None:
        raise ValueError(f"strategy {strategy!r} needs amateur logits")
    log_pb = torch.log_softmax(_scaled(amateur_logits, d.temperature), dim=-1)
    cd = log_pg - d.lam * log_pb if d.lam != 1.0 else log_pg - log_pb
    if strategy == "contrastive":
        return torch.where(head, cd, penalty), head, log_pg, log_pb
    # contrastive_tail
    inf = torch.tensor(math.inf, dtype=cd.dtype, device=cd.device)
    min_head = torch.where(head, cd, inf).amin(dim=-1, keepdim=True)
    log_thresh = math.log(d.alpha) if d.alpha > 0 else -math.inf
    log_thresh = log_thresh + log_pg.amax(dim=-1, keepdim=True)
    tail = log_pg + (min_head - log_thresh)
    # alpha=0 (or pG underflow) can give inf - inf; such tokens carry no mass anyway
    tail = torch.where(torch.isnan(tail), -inf, tail)
    return torch.where(head, cd, tail), head, log_pg, log_pb


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
    # the cdf rises at every positive-probability token and is flat elsewhere, so the first
    # index past the target is such a token, unless round-off put the target at or past the
    # total (idx == V): only then is the last positive-probability token looked up
    past_end = idx >= probs.shape[-1]
    if bool(past_end.any()):
        rows = torch.nonzero(past_end).squeeze(1)
        positions = torch.arange(probs.shape[-1], device=probs.device)
        last_valid = torch.where(probs[rows] > 0, positions, -1).amax(dim=-1).clamp(min=0)
        idx = idx.index_put((rows,), last_valid)
    return idx


# ---------------------------------------------------------------- no-repeat-n-gram


class NgramBlocker:
    """Per-slot n-gram memory: a token that would complete an n-gram already in the row is banned.

    A row's context is its prompt plus its sampled tokens (as in HF's no_repeat_ngram_size).
    If every token of a row would be banned the row is left unbanned rather than left with no
    probability mass at all.
    """

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"no_repeat_ngram={n} must be >= 1")
        self.n = n
        self.history: dict[int, list[int]] = {}
        self.seen: dict[int, dict[tuple, set]] = {}

    def reset(self, slot: int, prompt: list[int]) -> None:
        self.history[slot], self.seen[slot] = [], {}
        for t in prompt:
            self._add(slot, t)

    def _add(self, slot: int, token: int) -> None:
        h = self.history[slot]
        h.append(int(token))
        if len(h) >= self.n:
            self.seen[slot].setdefault(tuple(h[len(h) - self.n:-1]), set()).add(h[-1])

    def push(self, slots: list[int], tokens: list[int]) -> None:
        for s, t in zip(slots, tokens):
            self._add(s, t)

    def compact(self, keep: list[int]) -> None:
        """Slots were renumbered: new slot i is old slot keep[i]."""
        self.history = {i: self.history[k] for i, k in enumerate(keep) if k in self.history}
        self.seen = {i: self.seen[k] for i, k in enumerate(keep) if k in self.seen}

    def banned(self, slot: int) -> list[int]:
        h = self.history.get(slot)
        if h is None or len(h) < self.n - 1:
            return []
        prefix = tuple(h[len(h) - self.n + 1:]) if self.n > 1 else ()
        return sorted(self.seen[slot].get(prefix, ()))

    def apply(self, scores: Tensor) -> Tensor:
        rows, cols = [], []
        for s in range(scores.shape[0]):
            ban = self.banned(s)
            if ban and len(ban) < scores.shape[-1]:
                rows += [s] * len(ban)
                cols += ban
        if not rows:
            return scores
        out = scores.clone()
        out[torch.tensor(rows), torch.tensor(cols)] = -math.inf
        # a row whose whole support got banned keeps its unbanned scores
        dead = torch.isinf(out).all(dim=-1) & ~torch.isinf(scores).all(dim=-1)
        return torch.where(dead[:, None], scores, out)
