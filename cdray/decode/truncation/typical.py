"""Locally typical truncation (Meister et al. 2023, "Locally typical sampling"): keep the tokens
whose surprisal is closest to the step's entropy, the smallest such set with mass typical_p."""
from __future__ import annotations

import math

from cdray.decode.truncation import register


@register("typical_p", order=40, label=lambda p: f"T-{p:g}".replace("0.", "."))
def typical(scores, p: float):
    """Tokens sorted by |surprisal - entropy| ascending (stable by index); the token crossing
    typical_p is kept, so at least one token is."""
    import torch

    if p >= 1.0:
        return scores
    logp = torch.log_softmax(scores, dim=-1)
    probs = logp.exp()
    entropy = -(probs * torch.where(probs > 0, logp, torch.zeros_like(logp))).sum(dim=-1, keepdim=True)
    distance = torch.where(probs > 0, (-logp - entropy).abs(), torch.full_like(logp, math.inf))
    order = torch.sort(distance, dim=-1, stable=True).indices
    sorted_p = probs.gather(-1, order)
    keep_sorted = torch.cumsum(sorted_p, dim=-1) - sorted_p < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return torch.where(keep, scores, torch.full_like(scores, -math.inf))
