"""Top-k truncation: keep every token whose score is at least the k-th largest."""
from __future__ import annotations

import math

from cdray.decode.truncation import register


@register("top_k", order=10, label=lambda k: f"K-{k}")
def top_k(scores, k: int):
    """Ties at the k-th value are all kept (independent of index order): with a finite penalty and
    |V_head| < k the k-th score is the penalty, and top-k keeps everything (the paper's no-op)."""
    import torch

    if k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return torch.where(scores >= kth, scores, torch.full_like(scores, -math.inf))
