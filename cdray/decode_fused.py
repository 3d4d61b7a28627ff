"""Triton kernels for the decode step's small per-row pieces: RMSNorm, and RoPE with the KV-cache
write (and fp8 quantization). Each replaces a chain of elementwise launches with one, and each
program owns one row, so a row's bits never depend on the batch around it."""
from __future__ import annotations

import torch
from torch import Tensor

from cdray.decode_attention import _interpreted


def _kernels():
    from cdray.triton_kernels import rms_norm_kernel, rope_write_kernel

    return rms_norm_kernel, rope_write_kernel
    return rms_norm_kernel, rope_write_kernel


def rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """RMSNorm of x [G, b, H] with per-member weights w [G, 1, H] (the eager step's rounding)."""
    G, b, H = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    block = max(16, 1 << (H - 1).bit_length())
    _kernels()[0][(G * b,)](x, w.contiguous(), out, b, H, eps, BLOCK=block,
                            num_warps=4 if block >= 1024 else 2)
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

