"""cdray's decode-attention kernel (Triton): one query per row over that row's own KV cache prefix,
with the cache in the model's dtype or in fp8 with a scale per (row, kv head, position)."""
from __future__ import annotations

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


PRODUCTS = ("mma", "padded", "vector")


@dataclass(frozen=True)
class KernelConfig:
    """The launch shape. Fixed per process (never tuned per batch): a row's summation order then
    depends on its own length only, which keeps its bits whatever the batch around it."""

    block_n: int = 64  # keys per loop iteration
    num_warps: int = 4
    num_stages: int = 3
    # "mma": products on the matrix units (query heads padded to 16 rows; with one query head per
    # kv head the softmax runs on the real row only, same bits); "padded": the same with the
    # softmax over all 16 rows (the reference the one-row softmax must match bit for bit, in
    # tests and bench/decode_attention.py; never faster); "vector": fp32 products
    # on the vector units, for models with one query head per kv head (others take "mma")
    products: str = "mma"

    def __post_init__(self):
        if self.products not in PRODUCTS:
            raise ValueError(f"products={self.products!r} must be one of {PRODUCTS}")
        if self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise ValueError(f"block_n={self.block_n} must be a power of two >= 16")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps={self.num_warps} must be a power of two <= 16")
        if not 1 <= self.num_stages <= 6:
            raise ValueError(f"num_stages={self.num_stages} must be in 1..6")

    @classmethod
    def parse(cls, text: str) -> "KernelConfig":
        """'block_n,num_warps,num_stages[,products]', e.g. '64,4,3' or '64,4,2,vector'
        (bench/decoding.py --attention, bench/decode_attention.py --configs)."""
        parts = text.split(",")
        try:
            block_n, warps, stages = (int(v) for v in parts[:3])
            if len(parts) not in (3, 4):
                raise ValueError
        except ValueError:
            raise ValueError(f"kernel config {text!r} is not "
                             f"'block_n,num_warps,num_stages[,products]'") from None
        return cls(block_n, warps, stages, *parts[3:])

    def label(self) -> str:
        """The parse() form of this config."""
        tail = "" if self.products == "mma" else f",{self.products}"
        return f"{self.block_n},{self.num_warps},{self.num_stages}{tail}"


def default_config(fp8_cache: bool, rep: int) -> KernelConfig:
    """The launch shape a decode step uses unless told otherwise: fixed by the cache's dtype and
    the model's query heads per kv head (never by the batch, so rows keep their bits)."""
    # bench/decode_attention.py on an H100 at 3,072 rows (BENCHMARKS.md, seventh session): with an
    # fp8 cache and one query head per kv head, "32,4,2,vector" took 506 us against 674 us for
    # "64,4,3"; with a bf16 cache every mma shape ran at copy bandwidth and "vector" 14% slower
    if fp8_cache and rep == 1:
        return KernelConfig(32, 4, 2, "vector")
    return KernelConfig()


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


def _interpreted() -> bool:
    # Triton's CPU interpreter (the tests) multiplies bf16 matrices wrongly and casts fp32 to fp8
    # and bf16 with its own rounding (3.9): there the kernels take exact fp32 routes instead
    # (operands upcast after rounding; values pre-rounded before a cast)
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernels():
    # imported on first use: importing triton is slow, absent on CPU installs, and its
    # interpreter (tests) is chosen from TRITON_INTERPRET when triton is imported
    from cdray.decode.kernels import decode_attention_kernel, decode_attention_vector_kernel

    return decode_attention_kernel, decode_attention_vector_kernel


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
    if hd & (hd - 1) or hd < 16:
        raise ValueError(f"head_dim={hd} must be a power of two >= 16 for the triton decode kernel")
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
    args = (q, k, v, ks, vs, lengths, out, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            k.stride(2), s_n, s_h, out.stride(0), out.stride(1),
            (1.0 / math.sqrt(hd)) * math.log2(math.e))
    mma, vector = _kernels()
    if config.products == "vector" and rep == 1:
        vector[(N * nkv,)](*args, NKV=nkv, HD=hd, BLOCK_N=config.block_n, SCALED=scaled,
                           num_warps=config.num_warps, num_stages=config.num_stages)
        return out
    mma[(N * nkv,)](
        *args, NKV=nkv, REP=rep, REP_P=max(16, 1 << (rep - 1).bit_length()), HD=hd,
        BLOCK_N=config.block_n, SCALED=scaled, F32_DOT=q.dtype == torch.float32 or _interpreted(),
        FP16_DOT=scaled and q.dtype == torch.bfloat16, ONE_ROW=rep == 1 and config.products == "mma",
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out
