"""Top-p (nucleus) truncation: the smallest most-probable prefix whose mass reaches p."""
from __future__ import annotations

import math

from cdray.decode.truncation import register


@register("top_p", order=20, label=lambda p: f"P-{p:g}".replace("0.", "."))
def top_p(scores, p: float):
    """Tokens sorted by probability (softmax of the scores), descending, stable by index; the
    token crossing p is kept."""
    import torch

    if p >= 1.0:
        return scores
    probs = torch.softmax(scores, dim=-1)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep_sorted = torch.cumsum(sorted_p, dim=-1) - sorted_p < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return torch.where(keep, scores, torch.full_like(scores, -math.inf))
