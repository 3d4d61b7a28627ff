"""cdray.decode.attention's Triton kernel, run by Triton's CPU interpreter: exact attention over each
row's own keys (model-dtype and fp8 caches), the decode step built on it, and its rows batch-free.

The compiled kernel and its CUDA graph need a GPU: bench/row_determinism.py and bench/decoding.py
check them on the device machine (BENCHMARKS.md, decoding).
"""
import math

import pytest
import torch

import cdray.decode.attention as da
from cdray.config import DecodingConfig, GenerationConfig
from cdray.decode.engine import Decoder, _nll
from cdray.decode.fused import fused_sample, silu_mul
from cdray.decode.sample import generate
from cdray.decode.scores import sample_inverse_cdf, step_scores
from cdray.decode.stacked import StackedLlama
from tests.test_stacked_fast import _decode_step, _gqa_llama

pytest.importorskip("triton")  # installed by `make setup` (the interpreter needs no GPU)


def _reference(q, k, v, lengths):
    N, nh, hd = q.shape
    rep = nh // k.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64)
    for n in range(N):
        L = int(lengths[n])
        keys = k[n, :, :L].double().repeat_interleave(rep, 0)
        values = v[n, :, :L].double().repeat_interleave(rep, 0)
        w = torch.softmax((q[n].double()[:, None, :] * keys).sum(-1) / math.sqrt(hd), -1)
        out[n] = (w[..., None] * values).sum(1)
    return out


@pytest.mark.parametrize("heads,kv_heads,products", [(4, 4, "mma"), (6, 2, "mma"), (4, 4, "padded"),
                                                     (4, 4, "vector")])
def test_kernel_attends_over_exactly_each_rows_keys(heads, kv_heads, products):
    g = torch.Generator().manual_seed(heads)
    N, T, hd = 5, 80, 16
    q = torch.randn(N, heads, hd, generator=g)
    k = torch.randn(N, kv_heads, T, hd, generator=g)
    v = torch.randn(N, kv_heads, T, hd, generator=g)
    lengths = torch.tensor([1, 16, 17, 63, 80], dtype=torch.int32)
    want = _reference(q, k, v, lengths)
    cfg = da.KernelConfig(block_n=16, products=products)
    got = da.decode_attention(q, k, v, lengths, config=cfg)
    assert torch.allclose(got.double(), want, atol=1e-5)
    # keys at or past a row's length are never read: poisoning them changes nothing
    poisoned = [t.clone() for t in (k, v)]
    for n, L in enumerate(lengths.tolist()):
        for t in poisoned:
            t[n, :, L:] = float("nan")
    again = da.decode_attention(q, *poisoned, lengths, config=cfg)
    assert torch.equal(again, got)


@pytest.mark.parametrize("q_size,v_size,products,rep", [
    (1.0, 1.0, "mma", 2), (1e5, 1e-3, "mma", 2), (1e5, 1e-3, "mma", 1), (1e5, 1e-3, "vector", 1)])
def test_fp8_cache_is_attention_over_its_dequantized_values(q_size, v_size, products, rep):
    # (queries past fp16's range and tiny values: the kernel's fp16 products stay accurate)
    g = torch.Generator().manual_seed(1)
    N, nkv, T, hd = 3, 2, 40, 32
    heads = rep * nkv
    q = (torch.randn(N, heads, hd, generator=g) * q_size).bfloat16()
    k = (torch.randn(N, nkv, T, hd, generator=g) * 3 / q_size).bfloat16()
    v = (torch.randn(N, nkv, T, hd, generator=g) * v_size).bfloat16()
    k[0, 0, 5] = 0  # an all-zero vector keeps a finite scale
    kq, ks = da.quantize(k)
    vq, vs = da.quantize(v)
    assert kq.dtype == da.FP8 and ks.shape == (N, nkv, T) and ks.dtype == da.SCALE_DTYPE
    back = da.dequantize(kq, ks, torch.float32)
    assert torch.equal(back[0, 0, 5], torch.zeros(hd))
    # e4m3 keeps 3 mantissa bits: within 1/16 of each vector's largest magnitude
    assert ((back - k.float()).abs() <= k.float().abs().amax(-1, keepdim=True) / 16).all()
    lengths = torch.tensor([40, 9, 33], dtype=torch.int32)
    got = da.decode_attention(q, kq, vq, lengths, ks, vs,
                              config=da.KernelConfig(block_n=16, products=products))
    want = _reference(q, back, da.dequantize(vq, vs, torch.float32), lengths)
    assert got.dtype == torch.bfloat16
    assert ((got.double() - want).norm(dim=-1) <= 1e-2 * want.norm(dim=-1)).all()
    with pytest.raises(ValueError, match="k_scale"):
        da.decode_attention(q, kq, vq, lengths)


@pytest.mark.parametrize("fp8", [False, True])
def test_one_query_head_per_kv_head_keeps_the_padded_softmaxs_bits(fp8):
    # "mma" runs the softmax on the one real row of the 16 the products need; "padded" on all
    g = torch.Generator().manual_seed(2)
    N, nkv, T, hd = 4, 3, 50, 16
    q = torch.randn(N, nkv, hd, generator=g)
    k, v = torch.randn(2, N, nkv, T, hd, generator=g)
    scales = ()
    if fp8:
        (k, ks), (v, vs) = da.quantize(k), da.quantize(v)
        scales = (ks, vs)
    lengths = torch.tensor([50, 1, 17, 33], dtype=torch.int32)
    one, padded = (da.decode_attention(q, k, v, lengths, *scales,
                                       config=da.KernelConfig(block_n=16, products=products))
                   for products in ("mma", "padded"))
    assert torch.equal(one, padded)


@pytest.mark.parametrize("strategy,d", [
    ("contrastive", DecodingConfig()),
    ("contrastive", DecodingConfig(penalty=-math.inf, lam=0.5, temperature=0.7)),
    ("no_contrast", DecodingConfig(temperature=1.3)),
    ("no_contrast_vhead", DecodingConfig(alpha=0.01)),
])
def test_fused_sampler_is_the_step_scores_and_inverse_cdf(strategy, d):
    g = torch.Generator().manual_seed(len(strategy))
    B, V = 24, 3000  # several loop blocks, the last one partial
    zg, za = torch.randn(B, V, generator=g) * 4, torch.randn(B, V, generator=g) * 4
    u = torch.rand(B, generator=g)
    u[0] = 0.0  # the first token with mass, never one without
    amateur = za if strategy == "contrastive" else None
    scores, head, log_pg, log_pb = step_scores(zg, amateur, strategy, d)
    want = sample_inverse_cdf(scores, u)
    token, head_size, nll_e, nll_a = fused_sample(zg, amateur, u, strategy, d)
    assert torch.equal(token, want)
    assert torch.equal(head_size, head.sum(-1))
    assert torch.allclose(nll_e, _nll(zg, log_pg, want, d.temperature), atol=1e-5)
    if amateur is not None:
        assert torch.allclose(nll_a, _nll(za, log_pb, want, d.temperature), atol=1e-5)
    else:
        assert not nll_a.any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_silu_mul_is_torchs_silu_times_up(dtype):
    g = torch.Generator().manual_seed(0)
    gate_up = (torch.randn(2, 5, 2 * 3000, generator=g) * 3).to(dtype)  # loop blocks, one partial
    gate, up = gate_up.chunk(2, dim=-1)
    want = torch.nn.functional.silu(gate) * up
    if dtype == torch.bfloat16:
        assert torch.equal(silu_mul(gate_up), want)  # rounded as torch rounds, twice
    else:  # exp and division may differ in the last bit
        assert torch.allclose(silu_mul(gate_up), want, rtol=1e-6, atol=1e-6)


def test_fused_sampler_reads_model_dtype_logits_as_their_fp32_widening():
    g = torch.Generator().manual_seed(3)
    zg, za = ((torch.randn(16, 3000, generator=g) * 4).bfloat16() for _ in range(2))
    u = torch.rand(16, generator=g)
    narrow = fused_sample(zg, za, u, "contrastive", DecodingConfig())
    wide = fused_sample(zg.float(), za.float(), u, "contrastive", DecodingConfig())
    for a, b in zip(narrow, wide):
        assert torch.equal(a, b)


def test_fused_sampler_goes_with_the_triton_step_only():
    m = _gqa_llama(0)
    assert Decoder(m, m, "contrastive", DecodingConfig(), attention="triton").fused_sampler
    # strategies and options it does not compute take cdray.decode.scores's path
    for strategy, d in [("contrastive_tail", DecodingConfig()), ("contrastive", DecodingConfig(top_k=50)),
                        ("contrastive", DecodingConfig(top_p=0.9)),
                        ("contrastive", DecodingConfig(no_repeat_ngram=3))]:
        assert not Decoder(m, m, strategy, d, attention="triton").fused_sampler
    assert not Decoder(m, m, "contrastive", DecodingConfig(), attention="flex").fused_sampler
    assert not Decoder(m, m, "contrastive", DecodingConfig()).fused_sampler  # CPU: eager


@pytest.fixture(scope="module")
def gqa_pair():
    return _gqa_llama(0), _gqa_llama(1)


@pytest.mark.parametrize("kv_cache,kv_heads,products", [
    ("model", 2, "mma"), ("fp8", 2, "mma"), ("model", 4, "mma"), ("fp8", 4, "vector")])
def test_triton_step_computes_the_eager_step(gqa_pair, kv_cache, kv_heads, products):
    # the launch shape follows the cache and the head grouping: the vector kernel for an fp8
    # cache with one query head per kv head (the GOOD shape), the mma kernel otherwise
    pair = list(gqa_pair) if kv_heads == 2 else [_gqa_llama(i, kv_heads) for i in (0, 1)]
    s = StackedLlama(pair, attention="triton", kv_cache=kv_cache)
    s.new_cache(6, 100)
    assert s.fast_kernel == "triton" and not s.fixed_batch and s.T == 104
    g = torch.Generator().manual_seed(0)
    # stale entries past each row's position must stay invisible
    caches = [torch.randn(c.shape, generator=g) for c in s.k_cache + s.v_cache]
    if kv_cache == "fp8":
        quantized = [da.quantize(c) for c in caches]
        caches = [q for q, _ in quantized]
        for dst, (_, scale) in zip(s.k_scale + s.v_scale, quantized):
            dst.copy_(scale)
    ids = torch.randint(4, 64, (6, 1), generator=g)
    positions = torch.tensor([[0], [5], [63], [64], [99], [31]])
    fast = _decode_step(s, caches, ids, positions)
    assert s._fast.kernel_config == da.default_config(kv_cache == "fp8", 4 // kv_heads)
    assert s._fast.kernel_config.products == products
    written = [c.float() for c in s.k_cache + s.v_cache + s.k_scale + s.v_scale]
    s.attention = "eager"  # it dequantizes an fp8 cache
    eager = _decode_step(s, caches, ids, positions)
    assert torch.allclose(fast, eager, rtol=1e-4, atol=1e-4), (fast - eager).abs().max()
    for a, b in zip(written, s.k_cache + s.v_cache + s.k_scale + s.v_scale):
        assert torch.equal(a, b.float())  # the same keys, values and scales written


def test_triton_fp8_rows_do_not_depend_on_batch_or_refill(gqa_pair, monkeypatch):
    # (the interpreter costs ~1 s per decode step: rows are few and short here)
    expert, amateur = gqa_pair
    kept = []  # the batch of 4 drops finished slots once the queue is empty (a new graph)
    keep_slots = StackedLlama.keep_slots
    monkeypatch.setattr(StackedLlama, "keep_slots",
                        lambda self, slots, width=None: kept.append(width or len(slots))
                        or keep_slots(self, slots, width))
    d = DecodingConfig(alpha=0.1)
    prompts = [[1, 4 + i, 30 - i] + [7] * (i % 4) for i in range(6)]
    seeds = [100 + i for i in range(6)]
    kw = dict(max_new_tokens=10, stop_at_eos=True, eos_id=35, max_len=16, attention="triton",
              kv_cache="fp8")
    base = generate(expert, amateur, prompts, seeds, "contrastive", d, batch_size=6, **kw)
    assert any(r.stopped_at_eos for r in base) and not all(r.stopped_at_eos for r in base)
    other = generate(expert, amateur, prompts[::-1], seeds[::-1], "contrastive", d, batch_size=4,
                     **kw)[::-1]
    assert kept and [r.tokens for r in other] == [r.tokens for r in base]
    assert [r.expert_nll_mean for r in other] == [r.expert_nll_mean for r in base]
    # rows fed in as a shared batch takes them (cdray.decode.shared_batch): the triton step's batch
    # starts at 2 slots, widens to 4, shrinks in a drain and widens again for a late row
    dec = Decoder(expert, amateur, "contrastive", d, attention="triton", kv_cache="fp8")
    rows = {i: (prompts[i], seeds[i]) for i in range(6)}
    later, got, kept[:] = [[rows[2], rows[3], rows[4]]], {}, []

    def more():
        if later:
            return later.pop(0)
        if 5 in rows and kept and kept[-1] < 4:
            return [rows.pop(5)]
        return []

    dec.generate([prompts[0], prompts[1]], seeds[:2], max_new_tokens=10, stop_at_eos=True,
                 eos_id=35, max_len=16, batch_size=4, more=more,
                 on_row=lambda r, res: got.__setitem__(r, res))
    assert 5 not in rows and [got[i].tokens for i in range(6)] == [r.tokens for r in base]
    shrunk = next(i for i, w in enumerate(kept) if w < 4)
    assert kept[0] == 4 and 4 in kept[shrunk:]  # widened, shrunk, widened again
    assert [got[i].expert_nll_mean for i in range(6)] == [r.expert_nll_mean for r in base]


def test_triton_step_hands_the_fused_sampler_model_dtype_logits(gqa_pair):
    expert, amateur = gqa_pair
    dec = Decoder(expert, amateur, "contrastive", DecodingConfig(alpha=0.1), attention="triton",
                  dtype=torch.bfloat16)
    assert dec.fused_sampler and dec.groups[0].fast_options["float_logits"] is False
    prompts, seeds = [[1, 5, 9], [1, 7], [1, 4, 4, 8]], [1, 2, 3]
    kw = dict(max_new_tokens=4, stop_at_eos=False, max_len=8, batch_size=2)  # with a refill
    narrow = dec.generate(prompts, seeds, **kw)
    assert dec.groups[0]._fast is not None and not dec.groups[0]._fast.float_logits
    dec.groups[0].fast_options["float_logits"] = True  # the step widening them first, as before
    dec.groups[0]._fast = None
    wide = dec.generate(prompts, seeds, **kw)
    assert [r.tokens for r in narrow] == [r.tokens for r in wide]
    assert [r.expert_nll_mean for r in narrow] == [r.expert_nll_mean for r in wide]


def test_kv_cache_and_kernel_config_errors_name_their_field(monkeypatch):
    GenerationConfig(kv_cache="fp8").validate("generation")
    with pytest.raises(ValueError, match="generation.kv_cache"):
        GenerationConfig(attention="flex", kv_cache="fp8").validate("generation")
    with pytest.raises(ValueError, match="block_n"):
        da.KernelConfig.parse("48,4,2")
    with pytest.raises(ValueError, match="block_n,num_warps"):
        da.KernelConfig.parse("64,4")
    assert da.KernelConfig.parse("64,4,2,vector").label() == "64,4,2,vector"
    with pytest.raises(ValueError, match="products"):
        da.KernelConfig.parse("64,4,2,tensor")
    m = _gqa_llama(0)
    with pytest.raises(ValueError, match="kv_cache"):
        StackedLlama([m], attention="flex", kv_cache="fp8")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "CUDA" in da.unavailable_reason(torch.device("cpu"))
    s = StackedLlama([m], attention="triton")
    s.new_cache(2, 8)
    with pytest.raises(RuntimeError, match="CUDA"):
        s.forward(torch.tensor([[5], [6]]), torch.tensor([[0], [0]]))
