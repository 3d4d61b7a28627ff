"""Tests of cdray.models.weights: a saved checkpoint as plain tensors decodes exactly as the loaded model."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cdray.decode.stacked import StackedLlama, same_shape
from cdray.models.llama import load_model
from cdray.models.weights import load_weights

ROOT = Path(__file__).resolve().parent.parent


def _save(path, seed, **kw):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64,
                      **{"tie_word_embeddings": False, "num_key_value_heads": 2, **kw})
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _logits(models, dtype=torch.float32):
    stack = StackedLlama(models, dtype=dtype, attention="eager")
    stack.new_cache(3, 16)
    ids = torch.tensor([[1, 5, 9, 3], [1, 7, 3, 3], [1, 8, 12, 40]])
    positions = torch.arange(4).expand(3, 4).contiguous()
    return stack.forward(ids, positions, slots=torch.arange(3), last=torch.tensor([3, 1, 3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_stack_exactly_as_the_loaded_models(tmp_path, dtype):
    a, b = _save(tmp_path / "a", 0), _save(tmp_path / "b", 1)
    light = [load_weights(a), load_weights(b)]
    full = [load_model(a, dtype=dtype), load_model(b, dtype=dtype)]
    assert same_shape(light[0], full[0]) and same_shape(light[0], light[1])
    assert torch.equal(_logits(light, dtype), _logits(full, dtype))


def test_tied_embeddings_and_defaults(tmp_path):
    path = _save(tmp_path / "tied", 2, tie_word_embeddings=True)
    w = load_weights(path)
    assert torch.equal(w.get_parameter("lm_head.weight"), w.get_parameter("model.embed_tokens.weight"))
    assert torch.equal(_logits([w]), _logits([load_model(path)]))
    # fields a config.json leaves out take transformers' Llama defaults (one kv head per head)
    full = _save(tmp_path / "full", 2, num_key_value_heads=4)
    cfg = json.loads((full / "config.json").read_text())
    for key in ("num_key_value_heads", "head_dim", "rms_norm_eps", "hidden_act"):
        cfg.pop(key, None)
    (full / "config.json").write_text(json.dumps(cfg))
    w = load_weights(full)
    assert w.config.num_key_value_heads == 4 and w.config.rms_norm_eps == 1e-6
    with pytest.raises(ValueError, match="no tensor 'model.nope'"):
        w.get_parameter("model.nope")
    # a default that contradicts the saved tensors (two kv heads saved, none written) is named
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("num_key_value_heads")
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"k_proj.weight has shape \[16, 32\], config.json describes \[32, 32\]"):
        load_weights(path)


def test_unreadable_checkpoints_name_their_folder(tmp_path):
    with pytest.raises(ValueError, match="config.json missing"):
        load_weights(tmp_path / "missing")
    path = _save(tmp_path / "cut", 3)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{path}: unreadable model checkpoint"):
        load_weights(path)


def test_generation_actor_skips_transformers_modeling(tmp_path):
    """What the light loaders are for: a generation actor imports no transformers at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_generation import save_tokenizer

    _save(tmp_path / "good", 0)
    tok = save_tokenizer(tmp_path / "tok")
    cfg = json.loads((tok / "tokenizer_config.json").read_text())  # as cdray's trainer writes it:
    (tok / "tokenizer_config.json").write_text(json.dumps({**cfg, "clean_up_tokenization_spaces": False}))
    pq.write_table(pa.table({"prompt_id": [0], "prompt": [[1, 5, 6]]}), tmp_path / "prompts.parquet")
    kwargs = dict(expert_dir=str(tmp_path / "good"), amateur={"kind": "dropout", "dropout": 0.1},
                  strategy="contrastive",
                  prompts_path=str(tmp_path / "prompts.parquet"), out_dir=str(tmp_path / "out"),
                  tokenizer_dir=str(tok))
    generation = {"prompt_tokens": 5, "continuations": 2, "max_new_tokens": 10, "batch_size": 3,
                  "shard_prompts": 3, "seed": 11}
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from cdray.config import GenerationConfig
from cdray.decode.synthetic import ShardGenerator
gen = ShardGenerator(**json.loads({json.dumps(kwargs)!r}),
                     generation=GenerationConfig(**json.loads({json.dumps(generation)!r})))
gen.run_shard(0, 0, 1)
print(sorted(m for m in sys.modules if m.startswith("transformers")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "shards" / "shard_00000.json").is_file()
