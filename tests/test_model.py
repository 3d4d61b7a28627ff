"""Tests of cdray.models.llama: configs, parameter counts, save/load."""
import pytest
import torch

from cdray.common.special_tokens import BOS_ID as BOS
from cdray.common.special_tokens import EOS_ID as EOS
from cdray.common.special_tokens import PAD_ID as PAD
from cdray.common.special_tokens import UNK_ID as UNK
from cdray.config import MODEL_PRESETS, ModelConfig
from cdray.models.llama import build_model, llama_config, load_model, param_counts, save_model

torch.set_num_threads(1)

TINY = ModelConfig(layers=2, hidden=32, heads=2, ffn=64, context=64)
GOOD = ModelConfig(**MODEL_PRESETS["good"])


def test_llama_config_fields():
    cfg = llama_config(ModelConfig(rope_theta=5000.0, rms_eps=1e-5, **MODEL_PRESETS["tiny"]), 500,
                       attention_dropout=0.3)
    assert cfg.vocab_size == 500 and cfg.hidden_size == 128 and cfg.num_hidden_layers == 4
    assert cfg.num_attention_heads == cfg.num_key_value_heads == 4 and cfg.intermediate_size == 512
    assert cfg.rope_parameters["rope_theta"] == 5000.0 and cfg.rms_norm_eps == 1e-5
    assert not cfg.tie_word_embeddings and not cfg.attention_bias and not cfg.mlp_bias
    assert cfg.max_position_embeddings == 256 and cfg.hidden_act == "silu"
    assert cfg.attention_dropout == 0.3
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, UNK) == (BOS, EOS, PAD, 0)
    assert llama_config(ModelConfig(vocab_size=77), 500).vocab_size == 77


@pytest.mark.parametrize("m", [TINY, ModelConfig(**MODEL_PRESETS["micro"])])
def test_param_counts_match_numel(m):
    model = build_model(m, 100, seed=0)
    counts = param_counts(model.config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    emb = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    assert counts["non_embedding"] == counts["total"] - emb


def test_param_counts_of_the_paper_good_model():
    counts = param_counts(llama_config(GOOD, 32000))
    assert round(counts["total"] / 1e6) == 162
    assert round(counts["non_embedding"] / 1e6) == 113


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(TINY, 64, seed=5)
    assert torch.equal(before, torch.get_rng_state())
    b = build_model(TINY, 64, seed=5)
    c = build_model(TINY, 64, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["lm_head.weight"], sc["lm_head.weight"])


def test_save_load_roundtrip(tmp_path):
    model = build_model(TINY, 64, seed=1)
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert not list((tmp_path / "m").glob("*.bin"))
    loaded = load_model(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.dtype == torch.float32
    dropped = load_model(tmp_path / "m", attention_dropout=0.5)
    assert dropped.config.attention_dropout == 0.5
    assert load_model(tmp_path / "m").config.attention_dropout == 0.0
    x = torch.randint(0, 64, (2, 10))
    dropped.train()
    with torch.no_grad():
        assert not torch.equal(dropped(x).logits, loaded(x).logits)  # dropout active in train mode
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path / "nothing")
