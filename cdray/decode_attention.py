"""cdray's decode-attention kernel (Triton): one query per row over that row's own KV cache prefix,
with the cache in the model's dtype or in fp8 with a scale per (row, kv head, position)."""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3fn value
SCALE_DTYPE = torch.bfloat16  # 2 bytes of scale per head_dim fp8 values (3% more reads at 64)
_TINY = 2.0 ** -100  # scale of an all-zero vector: keeps 0 / scale finite


@dataclass(frozen=True)
class KernelConfig:
    """The launch shape. Fixed per process (never tuned per batch): a row's summation order then
    depends on its own length only, which keeps its bits whatever the batch around it."""

    block_n: int = 64  # keys per loop iteration
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise ValueError(f"block_n={self.block_n} must be a power of two >= 16")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps={self.num_warps} must be a power of two <= 16")
        if not 1 <= self.num_stages <= 6:
            raise ValueError(f"num_stages={self.num_stages} must be in 1..6")

    @classmethod
    def parse(cls, text: str) -> "KernelConfig":
        """'block_n,num_warps,num_stages', e.g. '64,4,2' (bench/decoding.py --attention)."""
        try:
            block_n, warps, stages = (int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"kernel config {text!r} is not 'block_n,num_warps,num_stages'") from None
        return cls(block_n, warps, stages)


def unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the kernel cannot run on `device` (None when it can)."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "the triton decode kernel needs a CUDA device (or TRITON_INTERPRET=1 for tests)"
    if device.type not in ("cpu", "cuda"):
        return f"the triton decode kernel does not run on {device.type}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the triton decode kernel needs the triton package"
    return None


def quantize(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., d] -> (fp8 values [..., d], scales [...]) with x ~ values * scale per vector."""
    xf = x.float()
    scale = (xf.abs().amax(-1) / FP8_MAX).clamp_min(_TINY).to(SCALE_DTYPE)
    # the scale was rounded to bf16 (possibly down): clamp so no value saturates to NaN
    q = (xf / scale.float()[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """The inverse of quantize, in the kernel's arithmetic (fp32 product, then `dtype`)."""
    return (q.float() * scale.float()[..., None]).to(dtype)


@functools.cache
def _kernel():
    # defined on first use: importing triton is slow, absent on CPU installs, and its
    # interpreter (tests) is chosen from TRITON_INTERPRET when a kernel is defined
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, len_ptr, o_ptr,
                                stride_qn, stride_qh, stride_kn, stride_kh, stride_kt,
                                stride_sn, stride_sh, stride_on, stride_oh, qk_scale,
                                NKV: tl.constexpr, REP: tl.constexpr, REP_P: tl.constexpr,
                                HD: tl.constexpr, BLOCK_N: tl.constexpr, SCALED: tl.constexpr):
        # one program per (row, kv head): the REP query heads sharing that kv head, online
        # softmax over the row's keys [0, length) in blocks of BLOCK_N, in a fixed order
        pid = tl.program_id(0)
        n = pid // NKV
        h = pid % NKV
        length = tl.load(len_ptr + n)
        r = tl.arange(0, REP_P)
        d = tl.arange(0, HD)
        heads = h * REP + r
        q = tl.load(q_ptr + n * stride_qn + heads[:, None] * stride_qh + d[None, :],
                    mask=(r < REP)[:, None], other=0.0).to(tl.float32) * qk_scale
        k_row = k_ptr + n * stride_kn + h * stride_kh
        v_row = v_ptr + n * stride_kn + h * stride_kh
        m = tl.full([REP_P], float("-inf"), tl.float32)
        l_sum = tl.zeros([REP_P], tl.float32)
        acc = tl.zeros([REP_P, HD], tl.float32)
        for start in range(0, length, BLOCK_N):
            t = start + tl.arange(0, BLOCK_N)
            valid = t < length
            k = tl.load(k_row + t[:, None] * stride_kt + d[None, :], mask=valid[:, None],
                        other=0.0).to(tl.float32)
            if SCALED:
                ks = tl.load(ks_ptr + n * stride_sn + h * stride_sh + t, mask=valid, other=0.0)
                k = k * ks.to(tl.float32)[:, None]
            s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [REP_P, BLOCK_N], log2 units
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_sum = l_sum * alpha + tl.sum(p, axis=1)
            v = tl.load(v_row + t[:, None] * stride_kt + d[None, :], mask=valid[:, None],
                        other=0.0).to(tl.float32)
            if SCALED:
                vs = tl.load(vs_ptr + n * stride_sn + h * stride_sh + t, mask=valid, other=0.0)
                v = v * vs.to(tl.float32)[:, None]
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m = m_new
        out = acc / l_sum[:, None]
        tl.store(o_ptr + n * stride_on + heads[:, None] * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=(r < REP)[:, None])

    return decode_attention_kernel


def decode_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor,
                     k_scale: Optional[Tensor] = None, v_scale: Optional[Tensor] = None,
                     config: KernelConfig = KernelConfig(), out: Optional[Tensor] = None) -> Tensor:
    """Softmax attention of one query per row over the first lengths[n] keys of row n.

    q [N, heads, d]; k, v [N, kv_heads, T, d] (positions contiguous per head); lengths [N] int32
    in [1, T]; k_scale, v_scale [N, kv_heads, T] when k and v are fp8. Returns [N, heads, d] in
    q's dtype. Keys at or past a row's length are never read.
    """
    N, nh, hd = q.shape
    nkv = k.shape[1]
    if nh % nkv:
        raise ValueError(f"{nh} query heads do not group over {nkv} kv heads")
    if hd & (hd - 1):
        raise ValueError(f"head_dim={hd} must be a power of two for the triton decode kernel")
    scaled = k.dtype == FP8
    if scaled and (k_scale is None or v_scale is None):
        raise ValueError("an fp8 cache needs k_scale and v_scale")
    if k.stride() != v.stride() or k.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("k and v must share strides with contiguous head_dim")
    if scaled and (k_scale.stride() != v_scale.stride() or k_scale.stride(-1) != 1):
        raise ValueError("k_scale and v_scale must share strides with contiguous positions")
    out = torch.empty_like(q) if out is None else out
    rep = nh // nkv
    ks, vs = (k_scale, v_scale) if scaled else (lengths, lengths)  # unread placeholders
    s_n, s_h = (ks.stride(0), ks.stride(1)) if scaled else (0, 0)
    _kernel()[(N * nkv,)](
        q, k, v, ks, vs, lengths, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), s_n, s_h,
        out.stride(0), out.stride(1), (1.0 / math.sqrt(hd)) * math.log2(math.e),
        NKV=nkv, REP=rep, REP_P=max(1, 1 << (rep - 1).bit_length()), HD=hd,
        BLOCK_N=config.block_n, SCALED=scaled, num_warps=config.num_warps,
        num_stages=config.num_stages)
    return out
