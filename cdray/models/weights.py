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
    """The checkpoint a cdray.models.llama.save_model wrote to `path`, on the CPU in its saved dtype."""
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
    config = SimpleNamespace(**fields)
    check_shapes(path, config, {k: tuple(v.shape) for k, v in tensors.items()})
    return LlamaWeights(config, tensors)


def expected_shapes(c: SimpleNamespace) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama of config `c` has (untied lm_head included unless tied), by its
    transformers name, and its shape."""
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    q, kv, h, f = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim, c.hidden_size, c.intermediate_size
    shapes = {"model.embed_tokens.weight": (c.vocab_size, h), "model.norm.weight": (h,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, h)
    for i in range(c.num_hidden_layers):
        layer = f"model.layers.{i}"
        shapes.update({f"{layer}.self_attn.q_proj.weight": (q, h), f"{layer}.self_attn.k_proj.weight": (kv, h),
                       f"{layer}.self_attn.v_proj.weight": (kv, h), f"{layer}.self_attn.o_proj.weight": (h, q),
                       f"{layer}.mlp.gate_proj.weight": (f, h), f"{layer}.mlp.up_proj.weight": (f, h),
                       f"{layer}.mlp.down_proj.weight": (h, f), f"{layer}.input_layernorm.weight": (h,),
                       f"{layer}.post_attention_layernorm.weight": (h,)})
    return shapes


def check_shapes(path: Path, config: SimpleNamespace, shapes: dict[str, tuple[int, ...]]) -> None:
    """A ValueError naming the checkpoint's file when a tensor is missing or its shape is not the
    one its config.json describes (another model's weights beside this config)."""
    for name, want in expected_shapes(config).items():
        got = shapes.get(name)
        if got is None:
            raise ValueError(f"{path / 'model.safetensors'}: no tensor {name!r} (config.json describes "
                             f"{config.num_hidden_layers} layers)")
        if tuple(got) != want:
            raise ValueError(f"{path / 'model.safetensors'}: {name} has shape {list(got)}, "
                             f"config.json describes {list(want)}")


def check_checkpoint(path: Path) -> None:
    """check_shapes of a saved single-file checkpoint from its safetensors header alone (no
    tensor is read); a checkpoint this cannot read is left to the loader's own error."""
    from safetensors import safe_open

    path = Path(path)
    try:
        fields = {**_LLAMA_DEFAULTS, **json.loads((path / "config.json").read_text(encoding="utf-8"))}
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # noqa: BLE001 - unreadable: the loader names it
        return
    if fields["num_key_value_heads"] is None:
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    check_shapes(path, SimpleNamespace(**fields), shapes)
