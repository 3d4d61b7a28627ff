"""Llama shapes without building them: parameter counts and the SMALL-r shape search (plain
arithmetic, so planning a sweep never imports torch or transformers)."""
from __future__ import annotations

import math

from cdray.config import ModelConfig


def count_params(*, hidden: int, ffn: int, layers: int, vocab: int, heads: int, kv_heads: int,
                 head_dim: int, attention_bias: bool = False, mlp_bias: bool = False,
                 tied: bool = False) -> dict:
    """{"total", "non_embedding"} of a Llama; non_embedding leaves out both embed_tokens and
    lm_head."""
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attn = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    if attention_bias:
        attn += q_out + 2 * kv_out + hidden
    mlp = 3 * hidden * ffn + ((2 * ffn + hidden) if mlp_bias else 0)
    per_layer = attn + mlp + 2 * hidden  # two RMSNorm weights
    non_embedding = layers * per_layer + hidden  # + final norm
    embeddings = vocab * hidden * (1 if tied else 2)
    return {"total": non_embedding + embeddings, "non_embedding": non_embedding}


def shape_params(m: ModelConfig, vocab_size: int) -> dict:
    """count_params of shape m as cdray.models.llama.llama_config builds it (untied embeddings, no
    biases, one kv head per head); m.vocab_size, when set, wins over vocab_size."""
    return count_params(hidden=m.hidden, ffn=m.ffn, layers=m.layers, vocab=m.vocab_size or vocab_size,
                        heads=m.heads, kv_heads=m.heads, head_dim=m.hidden // m.heads)


def _ratios(expert: ModelConfig, small: ModelConfig, vocab_size: int) -> tuple[float, float]:
    e, s = shape_params(expert, vocab_size), shape_params(small, vocab_size)
    return e["non_embedding"] / s["non_embedding"], e["total"] / s["total"]


def _search_space(expert: ModelConfig) -> list[ModelConfig]:
    """Layers 1..L x hidden = k * head_dim (k = 1..heads), keeping the expert's FFN/hidden ratio."""
    head_dim = expert.hidden // expert.heads
    ffn_ratio = expert.ffn / expert.hidden
    shapes = []
    for layers in range(1, expert.layers + 1):
        for heads in range(1, expert.heads + 1):
            hidden = heads * head_dim
            shapes.append(ModelConfig(
                layers=layers, hidden=hidden, heads=heads, ffn=max(1, round(hidden * ffn_ratio)),
                context=expert.context, rope_theta=expert.rope_theta, rms_eps=expert.rms_eps,
                vocab_size=expert.vocab_size))
    return shapes


def non_embedding_ratios(expert: ModelConfig, candidates: tuple[ModelConfig, ...], vocab_size: int) -> list[float]:
    """expert / candidate non-embedding parameter ratio of each SMALL candidate, in their order."""
    return [_ratios(expert, shape, vocab_size)[0] for shape in candidates]


def small_for_ratio(expert: ModelConfig, r: float, vocab_size: int,
                    candidates: tuple[ModelConfig, ...] = ()) -> tuple[ModelConfig, dict]:
    """The shape whose non-embedding ratio expert/shape is closest to r in log space, and its ratios.

    Ties go to the earlier candidate (given order, or fewer layers then narrower in the search).
    """
    if not r > 0:
        raise ValueError(f"r={r!r} must be > 0")
    pool = list(candidates) if candidates else _search_space(expert)
    best, best_key = None, None
    for i, shape in enumerate(pool):
        ne, _ = _ratios(expert, shape, vocab_size)
        # rounding keeps float noise from deciding between equally good shapes
        key = (round(abs(math.log(ne) - math.log(r)), 12), i)
        if best_key is None or key < best_key:
            best, best_key = shape, key
    ne, total = _ratios(expert, best, vocab_size)
    return best, {"target_r": float(r), "non_embedding_ratio": ne, "total_ratio": total,
                  "layers": best.layers, "hidden": best.hidden, "heads": best.heads, "ffn": best.ffn}
