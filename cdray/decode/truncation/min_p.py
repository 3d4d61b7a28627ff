"""Min-p truncation (Nguyen et al. 2024, "Turning up the heat: min-p sampling"): keep the tokens
whose probability is at least min_p times the most probable token's."""
from __future__ import annotations

import math

from cdray.decode.truncation import register


@register("min_p", order=30, label=lambda p: f"M-{p:g}".replace("0.", "."))
def min_p(scores, p: float):
    """In log space: score - max score >= log(min_p), so the top token is always kept."""
    import torch

    logp = torch.log_softmax(scores, dim=-1)
    keep = logp >= logp.amax(dim=-1, keepdim=True) + math.log(p)
    return torch.where(keep, scores, torch.full_like(scores, -math.inf))
