"""Triton kernels for the decode step's per-row pieces: RMSNorm, RoPE with the KV-cache write (and
fp8 quantization), and the contrastive sampler. Each replaces a chain of launches with one, and
each program owns one row, so a row's bits never depend on the batch around it."""
from __future__ import annotations

import torch
from torch import Tensor

from cdray.decode.attention import _interpreted


def _kernels():
    from cdray.decode.kernels import cd_sample_kernel, rms_norm_kernel, rope_write_kernel, silu_mul_kernel

    return rms_norm_kernel, rope_write_kernel, cd_sample_kernel, silu_mul_kernel


# Veltkamp splitters that round fp32 to a narrower type's significand (triton_kernels.round_bits):
# the interpreter's own casts to bf16 and fp16 do not round to nearest even
_SPLIT = {torch.bfloat16: 2.0**16 + 1, torch.float16: 2.0**13 + 1}
SILU_BLOCK = 1024  # intermediate features per loop iteration of silu_mul


def rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """RMSNorm of x [G, b, H] with per-member weights w [G, 1, H] (the eager step's rounding)."""
    G, b, H = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    block = max(16, 1 << (H - 1).bit_length())
    _kernels()[0][(G * b,)](x, w.contiguous(), out, b, H, eps, BLOCK=block,
                            num_warps=4 if block >= 1024 else 2)
    return out


def silu_mul(gate_up: Tensor) -> Tensor:
    """silu(gate) * up of the fused projection output [G, b, 2 I] = [gate | up], in one launch
    (torch's two kernels and their rounding)."""
    G, b, width = gate_up.shape
    inter = width // 2
    gate_up = gate_up.contiguous()
    out = torch.empty((G, b, inter), dtype=gate_up.dtype, device=gate_up.device)
    split = _SPLIT.get(gate_up.dtype, 0.0) if _interpreted() else 0.0
    block = min(SILU_BLOCK, 1 << (inter - 1).bit_length())
    _kernels()[3][(G * b,)](gate_up, out, inter, BLOCK=block, SPLIT=split, num_warps=4)
    return out


def rope_and_write(qkv: Tensor, pos: Tensor, inv_freq: Tensor, nh: int, nkv: int, k_cache: Tensor,
                   v_cache: Tensor, k_scale: Tensor | None, v_scale: Tensor | None) -> Tensor:
    """Rotate the query and key heads of qkv [G, b, (nh + 2 nkv) * hd] at positions pos [b],
    store keys and values at cache[g, i, head, pos[i]] (slot i = row i; fp8 values and scales
    when the cache is fp8), and return the queries [G, b, nh, hd]."""
    G, b, width = qkv.shape
    hd = width // (nh + 2 * nkv)
    T = k_cache.shape[3]
    if qkv.stride(-1) != 1 or qkv.stride(0) != b * qkv.stride(1):
        qkv = qkv.contiguous()
    if k_cache.shape[:2] != (G, b) or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the fused cache write needs contiguous caches of this batch")
    q = torch.empty((G, b, nh, hd), dtype=qkv.dtype, device=qkv.device)
    fp8 = k_scale is not None
    ks, vs = (k_scale, v_scale) if fp8 else (pos, pos)  # unread placeholders
    heads_p = 1 << (nh + 2 * nkv - 1).bit_length()
    _kernels()[1][(G * b,)](
        qkv, pos, inv_freq, q, k_cache, v_cache, ks, vs, b, T, qkv.stride(1),
        NH=nh, NKV=nkv, HD=hd, HEADS_P=heads_p, FP8=fp8, PREROUND=_interpreted(), num_warps=4)
    return q


# strategies the fused sampler computes (contrastive_tail, any truncation rule and n-gram blocking
# take the plain path: cdray.decode.scores and cdray.decode.truncation)
FUSED_MODES = {"no_contrast": 0, "no_contrast_vhead": 1, "contrastive": 2}
SAMPLE_BLOCK = 1024  # vocabulary entries per loop iteration of the fused sampler


def fused_sampler_fits(strategy: str, d) -> bool:
    """Whether fused_sample computes this strategy and DecodingConfig."""
    from cdray.decode.truncation import active

    return strategy in FUSED_MODES and not active(d) and not d.no_repeat_ngram


def fused_sample(zg: Tensor, za: Tensor | None, u: Tensor, strategy: str, d):
    """One step's token, |V_head| and the sampled token's expert and amateur NLLs per row, from
    fp32 logits [B, V] and uniforms u [B]: cdray.decode.scores's step_scores and sample_inverse_cdf
    (and the engine's NLLs) in one launch of one program per row."""
    B, V = zg.shape
    amateur = za is not None
    if zg.stride(-1) != 1 or (amateur and za.stride(-1) != 1):
        raise ValueError("the fused sampler needs logits contiguous along the vocabulary")
    token = torch.empty(B, dtype=torch.int64, device=zg.device)
    head = torch.empty(B, dtype=torch.int64, device=zg.device)
    nll_e = torch.empty(B, dtype=torch.float32, device=zg.device)
    nll_a = torch.zeros(B, dtype=torch.float32, device=zg.device)
    za_ = za if amateur else zg
    _kernels()[2][(B,)](zg, za_, u.float().contiguous(), token, head, nll_e, nll_a, V,
                        zg.stride(0), za_.stride(0), 1.0 / d.temperature, float(d.alpha),
                        float(d.lam), float(d.penalty), MODE=FUSED_MODES[strategy],
                        AMATEUR=amateur, BLOCK=min(SAMPLE_BLOCK, 1 << (V - 1).bit_length()),
                        num_warps=4)
    return token, head, nll_e, nll_a
