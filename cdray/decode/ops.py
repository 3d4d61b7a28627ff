"""Arithmetic of the decode steps: batched products over the model stack, RMSNorm, RoPE, the dropout hash."""
from __future__ import annotations

import torch
from torch import Tensor

# BLAS takes a different (matrix-vector) path for a handful of rows, which rounds differently;
# padding every product to at least this many rows keeps a row's logits bit-identical whatever
# the batch around it (checked on MKL/OpenBLAS CPUs by tests/test_decoding.py)
MIN_ROWS = 8


def bmm(x: Tensor, w: Tensor, residual: Tensor | None = None) -> Tensor:
    """x @ w, batched over the stack, plus `residual` when given (one fused call)."""
    rows = x.shape[1]
    if rows < MIN_ROWS:
        def pad(t: Tensor) -> Tensor:
            return torch.cat([t, t.new_zeros((t.shape[0], MIN_ROWS - rows, t.shape[2]))], dim=1)

        return bmm(pad(x), w, None if residual is None else pad(residual))[:, :rows]
    return torch.bmm(x, w) if residual is None else torch.baddbmm(residual, x, w)


def rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """RMSNorm in fp32, rounded back to x's dtype before the weight (as HF's Llama does)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


M32 = 0xFFFFFFFF


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash on int64 tensors holding values in [0, 2^32).

    Multipliers stay below 2^31 so no product overflows int64; the result is a pure function of
    the input, which is what lets dropout masks depend on a row's own seed only.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & M32
    return x ^ (x >> 16)
