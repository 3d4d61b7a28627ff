"""Llama shapes for cdray: HF configs, parameter counts, SMALL-r shape selection, safe save/load."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdray.config import ModelConfig

# the tokenizer's special ids (PAPER.md 1.2)
UNK, BOS, EOS, PAD = 0, 1, 2, 3


def llama_config(m: ModelConfig, vocab_size: int, *, attention_dropout: float = 0.0) -> LlamaConfig:
    """The HF config of shape `m`; m.vocab_size, when set, wins over the tokenizer's `vocab_size`."""
    if m.hidden % m.heads:
        raise ValueError(f"hidden={m.hidden} is not divisible by heads={m.heads}")
    return LlamaConfig(
        vocab_size=m.vocab_size or vocab_size,
        hidden_size=m.hidden,
        intermediate_size=m.ffn,
        num_hidden_layers=m.layers,
        num_attention_heads=m.heads,
        num_key_value_heads=m.heads,
        hidden_act="silu",
        max_position_embeddings=m.context,
        rms_norm_eps=m.rms_eps,
        # transformers 5 takes RoPE settings only through rope_parameters
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rope_theta)},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=float(attention_dropout),
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def param_counts(cfg: LlamaConfig) -> dict:
    """Analytic {"total", "non_embedding"}; non_embedding leaves out both embed_tokens and lm_head."""
    h, f, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q_out = cfg.num_attention_heads * head_dim
    kv_out = cfg.num_key_value_heads * head_dim
    attn = h * q_out + 2 * h * kv_out + q_out * h
    if cfg.attention_bias:
        attn += q_out + 2 * kv_out + h
    mlp = 3 * h * f + ((2 * f + h) if cfg.mlp_bias else 0)
    per_layer = attn + mlp + 2 * h  # two RMSNorm weights
    non_embedding = layers * per_layer + h  # + final norm
    embeddings = vocab * h * (1 if cfg.tie_word_embeddings else 2)
    return {"total": non_embedding + embeddings, "non_embedding": non_embedding}


def _ratios(expert: ModelConfig, small: ModelConfig, vocab_size: int) -> tuple[float, float]:
    e = param_counts(llama_config(expert, vocab_size))
    s = param_counts(llama_config(small, vocab_size))
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


def build_model(m: ModelConfig, vocab_size: int, seed: int) -> LlamaForCausalLM:
    """A freshly initialised fp32 model; the global torch RNG is left as it was."""
    cfg = llama_config(m, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.float()


def _unwrap(model):
    # DistributedDataParallel and torch.compile both hide the HF model one attribute down
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model


def save_model(model, out_dir: Path) -> None:
    """save_pretrained as safetensors (transformers 5 has no pickle path and no safe_serialization)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _unwrap(model).save_pretrained(out_dir)


def load_model(path: Path, *, dtype=torch.float32, device="cpu",
               attention_dropout: float | None = None) -> LlamaForCausalLM:
    """Load a saved model from safetensors only; attention_dropout overrides the saved config.

    Dropout acts only in train mode: a DROP-p amateur must be put in .train() by its caller.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no saved model (config.json missing)")
    overrides = {} if attention_dropout is None else {"attention_dropout": float(attention_dropout)}
    try:
        model = LlamaForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=False, **overrides)
    except Exception as e:  # safetensors and transformers raise many types for a broken checkpoint
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: unreadable model checkpoint ({first})") from None
    return model.to(device)


__all__ = ["UNK", "BOS", "EOS", "PAD", "llama_config", "param_counts", "small_for_ratio",
           "build_model", "save_model", "load_model"]
