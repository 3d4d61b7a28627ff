"""Saved Llama checkpoints as plain tensors (config.json + safetensors) for the decoder, without
importing transformers' modeling code (seconds of every generation actor's start-up)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from torch import Tensor

# what transformers' LlamaConfig assumes for a field its config.json leaves out
_LLAMA_DEFAULTS = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-6,
                   "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
                   "head_dim": None, "num_key_value_heads": None}


class LlamaWeights:
    """A saved Llama's config (its config.json's fields as attributes) and its tensors by the
    names transformers gives them; get_parameter is nn.Module's, so the stacked decoder reads
    this and a LlamaForCausalLM alike."""

    def __init__(self, config: SimpleNamespace, tensors: dict[str, Tensor]):
        self.config = config
        self.tensors = tensors

    def get_parameter(self, name: str) -> Tensor:
        if name == "lm_head.weight" and name not in self.tensors and self.config.tie_word_embeddings:
            name = "model.embed_tokens.weight"
        try:
            return self.tensors[name]
        except KeyError:
            raise ValueError(f"checkpoint has no tensor {name!r}") from None


def load_weights(path: Path) -> LlamaWeights:
    """The checkpoint a cdray.model.save_model wrote to `path`, on the CPU in its saved dtype."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no saved model (config.json missing)")
    try:
        fields = {**_LLAMA_DEFAULTS, **json.loads((path / "config.json").read_text(encoding="utf-8"))}
        index = path / "model.safetensors.index.json"
        files = (sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
                 if index.is_file() else ["model.safetensors"])
        tensors: dict[str, Tensor] = {}
        for name in files:
            tensors.update(load_file(str(path / name)))
    except Exception as e:  # json, safetensors and the file system raise many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: unreadable model checkpoint ({first})") from None
    if fields["num_key_value_heads"] is None:
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    return LlamaWeights(SimpleNamespace(**fields), tensors)
