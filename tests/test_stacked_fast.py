"""The flex decode step (cdray.decode.fast_step) on CPU: same function as the eager step, rows batch-free.

On CUDA the step is also captured as a CUDA graph; that part needs a GPU and is checked by
bench/row_determinism.py and bench/decoding.py on the device machine (BENCHMARKS.md).
"""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import cdray.decode.fast_step as stacked_fast
from cdray.config import DecodingConfig, GenerationConfig
from cdray.decode.sample import generate
from cdray.decode.stacked import StackedLlama


def _gqa_llama(seed: int, kv_heads: int = 2) -> LlamaForCausalLM:
    # grouped-query attention (4 query heads on 2 kv heads by default) and head dim 16
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=256,
                      tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(40.0)
    return m


@pytest.fixture(scope="module")
def gqa_pair():
    return _gqa_llama(0), _gqa_llama(1)


def _decode_step(stack: StackedLlama, caches, ids, positions):
    for dst, src in zip(stack.k_cache + stack.v_cache, caches):
        dst.copy_(src)
    return stack.forward(ids, positions)


def test_flex_step_computes_the_eager_step(gqa_pair, monkeypatch):
    s = StackedLlama(list(gqa_pair), attention="flex")
    s.new_cache(6, 100)
    assert s.T == 128  # whole 64-key blocks
    g = torch.Generator().manual_seed(0)
    # stale entries past each row's position must stay invisible
    caches = [torch.randn(c.shape, generator=g) for c in s.k_cache + s.v_cache]
    ids = torch.randint(4, 64, (6, 1), generator=g)
    positions = torch.tensor([[0], [5], [63], [64], [99], [31]])
    flex = _decode_step(s, caches, ids, positions)
    written = [c.clone() for c in s.k_cache + s.v_cache]
    s.attention = "eager"
    eager = _decode_step(s, caches, ids, positions)
    assert torch.allclose(flex, eager, rtol=1e-4, atol=1e-4), (flex - eager).abs().max()
    # and it wrote the same keys and values into the cache
    for a, b in zip(written, s.k_cache + s.v_cache):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    # past the kernel grid's limit each model attends in its own call: the same numbers
    s.attention = "flex"
    s._fast = None
    monkeypatch.setattr(stacked_fast, "MAX_GRID_Y", 2 * 6 * 2 - 1)
    per_member = _decode_step(s, caches, ids, positions)
    assert s._fast._state.per_member
    assert torch.allclose(per_member, flex, rtol=1e-5, atol=1e-5)


def test_flex_rows_do_not_depend_on_batch_or_refill(gqa_pair):
    expert, amateur = gqa_pair
    d = DecodingConfig(alpha=0.1)
    prompts = [[1, 4 + i, 30 - i] + [7] * (i % 4) for i in range(10)]
    seeds = [100 + i for i in range(10)]
    kw = dict(max_new_tokens=70, stop_at_eos=True, eos_id=19, max_len=80, attention="flex")
    base = generate(expert, amateur, prompts, seeds, "contrastive", d, batch_size=10, **kw)
    # rows cross a 64-key block, and some end early so slots refill
    assert max(len(p) + len(r.tokens) for p, r in zip(prompts, base)) > 64
    assert any(r.stopped_at_eos for r in base) and not all(r.stopped_at_eos for r in base)
    other = generate(expert, amateur, prompts[::-1], seeds[::-1], "contrastive", d, batch_size=3,
                     **kw)[::-1]
    assert [r.tokens for r in other] == [r.tokens for r in base]
    assert [r.expert_nll_mean for r in other] == [r.expert_nll_mean for r in base]
    assert [r.amateur_nll_mean for r in other] == [r.amateur_nll_mean for r in base]


def test_flex_step_never_drops():
    m = _gqa_llama(0)
    cpu = StackedLlama([m, m])
    assert cpu.fast_kernel is None and not cpu.fixed_batch  # CPU: eager (faster there)
    cpu.attention = "flex"
    assert cpu.fast_kernel == "flex" and cpu.fixed_batch and cpu.max_batch() == 65535 // 2
    dropped = StackedLlama([m, m], dropout=[0.0, 0.1], attention="flex")
    assert dropped.fast_kernel is None  # DROP-p amateurs: eager, with their dropout masks
    with pytest.raises(ValueError, match="dropout"):
        stacked_fast.FastDecode(dropped)
    with pytest.raises(ValueError, match="CUDA"):
        stacked_fast.FastDecode(cpu, graphs=True)


def test_compile_layers_needs_the_flex_step():
    GenerationConfig(compile_layers=True).validate("generation")
    with pytest.raises(ValueError, match="generation.compile_layers"):
        GenerationConfig(attention="eager", compile_layers=True).validate("generation")
