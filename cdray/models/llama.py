"""Llama models for cdray: HF configs and their parameter counts, build, safe save/load."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdray.common.special_tokens import BOS_ID, EOS_ID, PAD_ID
from cdray.config import ModelConfig
from cdray.models.shapes import count_params

# the tokenizer's special ids (Ulm et al. 2025, arXiv 2510.08245)


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
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def param_counts(cfg: LlamaConfig) -> dict:
    """Analytic {"total", "non_embedding"} of an HF Llama config (cdray.models.shapes.count_params)."""
    return count_params(
        hidden=cfg.hidden_size, ffn=cfg.intermediate_size, layers=cfg.num_hidden_layers,
        vocab=cfg.vocab_size, heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias, tied=cfg.tie_word_embeddings)


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


def save_model(model, out_dir: Path, dtype: torch.dtype | None = None) -> None:
    """save_pretrained as safetensors (transformers 5 has no pickle path and no safe_serialization),
    its weights cast to `dtype` when given (the model itself is left as it is)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inner = _unwrap(model)
    if dtype is None:
        inner.save_pretrained(out_dir)
        return
    weights = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in inner.state_dict().items()}
    inner.save_pretrained(out_dir, state_dict=weights)
    config = json.loads((out_dir / "config.json").read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_model(path: Path, *, dtype=torch.float32, device="cpu",
               attention_dropout: float | None = None) -> LlamaForCausalLM:
    """Load a saved model from safetensors only; attention_dropout overrides the saved config.

    Dropout acts only in train mode: a DROP-p amateur must be put in .train() by its caller.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no saved model (config.json missing)")
    from cdray.models.weights import check_checkpoint

    check_checkpoint(path)  # names the file of a shape mismatch (transformers prints a table)
    overrides = {} if attention_dropout is None else {"attention_dropout": float(attention_dropout)}
    try:
        model = LlamaForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=False, **overrides)
    except Exception as e:  # safetensors and transformers raise many types for a broken checkpoint
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: unreadable model checkpoint ({first})") from None
    return model.to(device)


__all__ = ["llama_config", "param_counts",
           "build_model", "save_model", "load_model"]
