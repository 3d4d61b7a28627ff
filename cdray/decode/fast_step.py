"""A StackedLlama's decode step for GPUs: attention by row length (FlexAttention or cdray's Triton
kernel), one CUDA graph per batch."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from cdray.decode.attention import KernelConfig, decode_attention, default_config
from cdray.decode.ops import bmm, rms, rope

# keys per attention block: a row reads the ceil((position + 1) / FLEX_KV_BLOCK) blocks of its own
# cache and nothing of its neighbours', so its bits never depend on their lengths
FLEX_KV_BLOCK = 64
Q_BLOCK = 128  # flex decoding needs the query block size to be a multiple of 16
# the flex decoding kernel's grid has one program per (batch, kv head) on CUDA's y axis
MAX_GRID_Y = 65535


def max_batch(kv_heads: int) -> int:
    """Most slots of one step: a model's (slot, kv head) pairs must fit the kernel's grid."""
    return MAX_GRID_Y // kv_heads


def _pre(x: Tensor, ln1: Tensor, wqkv: Tensor, cos: Tensor, sin: Tensor, eps: float, nh: int,
         nkv: int) -> tuple[Tensor, Tensor, Tensor]:
    """RMSNorm, the q/k/v projection and RoPE of one token per row: x [G, b, H] -> q, k, v."""
    G, b, _ = x.shape
    hd = cos.shape[-1]
    qkv = bmm(rms(x, ln1, eps), wqkv).reshape(G, b, nh + 2 * nkv, hd)
    qk = rope(qkv[:, :, :nh + nkv], cos, sin)
    return qk[:, :, :nh], qk[:, :, nh:], qkv[:, :, nh + nkv:]


def _post(att: Tensor, x: Tensor, wo: Tensor, ln2: Tensor, wgu: Tensor, wdown: Tensor,
          eps: float) -> Tensor:
    """Output projection, residual, RMSNorm and the SwiGLU MLP with its residual.

    Products go through ops.bmm, which pads to MIN_ROWS rows as the eager step does (BLAS
    takes another path for a handful of rows, which rounds differently)."""
    x = bmm(att, wo, residual=x)
    gate, up = bmm(rms(x, ln2, eps), wgu).chunk(2, dim=-1)
    return bmm(torch.nn.functional.silu(gate) * up, wdown, residual=x)


def _final(x: Tensor, norm: Tensor, lm_head: Tensor, eps: float) -> Tensor:
    return bmm(rms(x, norm, eps), lm_head).float()


@functools.cache
def step_kernels(compiled: bool) -> dict[str, Any]:
    """The step's pieces, compiled once per process (every layer has the same shapes, so the
    twelve calls of a step share one compiled graph per piece)."""
    import torch._inductor.config as inductor_config
    from torch.nn.attention.flex_attention import flex_attention

    # Inductor otherwise times several block sizes of a reduction on the device at first run and
    # keeps the fastest, and block sizes change the summation order, so a re-run could sample
    # other tokens: `deterministic` forbids that tuning. `batch_invariant` (newer torch) also
    # aims to keep a row's kernel across batch sizes; torch 2.11 lacks it, and there the compiled
    # layers rounded rows differently at batch 5 than at 24 (H200), hence compiled=False by default.
    options = {key: True for key in ("deterministic", "batch_invariant")
               if hasattr(inductor_config, key)}
    # a reduction over few rows is otherwise split across several programs (more parallelism),
    # which sums a row in another order than at a large batch
    options["split_reductions"] = False
    fns = {"pre": _pre, "post": _post, "final": _final}
    if compiled:
        fns = {name: torch.compile(fn, dynamic=False, options=options) for name, fn in fns.items()}
    # flex_attention runs a slow reference implementation unless compiled
    fns["flex"] = torch.compile(flex_attention, dynamic=False, options=options)
    return fns


def block_mask(kv_blocks: Tensor, kv_indices: Tensor, positions: Tensor, T: int, kv_block: int):
    from torch.nn.attention.flex_attention import BlockMask

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= positions[b]

    kwargs = {}
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        kwargs["compute_q_blocks"] = False  # the backward pass's index; never used here
    return BlockMask.from_kv_blocks(kv_blocks, kv_indices, BLOCK_SIZE=(Q_BLOCK, kv_block),
                                    mask_mod=mask_mod, seq_lengths=(1, T), **kwargs)


@dataclass
class _State:
    """Static buffers of one batch size: a captured graph reads its inputs from them."""

    batch: int
    ids: Tensor  # [b] token fed to each slot
    pos: Tensor  # [b] its position
    rows: Tensor  # [b] arange
    kv_blocks: Optional[Tensor]  # flex: [n, 1, 1] int32 blocks each row reads
    pos_flat: Optional[Tensor]  # flex: [n] position per row, read by the mask
    mask: Any  # flex: the block mask
    lengths: Optional[Tensor]  # triton: [G*b] int32 keys each row reads
    per_member: bool  # one attention call per stacked model (n = b), else one for all (n = G*b)
    graph: Optional[Any] = None
    out: Optional[Tensor] = None


class FastDecode:
    """The decode step (one token for every slot) of a StackedLlama without dropout.

    Per layer: RMSNorm, projection and RoPE, the cache write, attention over each row's own keys,
    and the output projection with the MLP. The stack's fast_kernel picks the attention:
    "triton" runs cdray's Triton kernels for attention (exactly each row's keys, bf16 or fp8
    cache), RMSNorm and RoPE with the cache write (_fused_step); "flex" runs FlexAttention over
    each row's filled 64-key blocks with torch ops around it. On CUDA the whole step is captured
    once per batch size as a CUDA graph and replayed, so the host launches one graph per step
    (the triton step captures a new one when the engine drops finished slots; the flex step is
    compiled per batch size and keeps its batch, `StackedLlama.fixed_batch`). compiled=True
    instead compiles the layers with Inductor: faster on an H200, but there and on an H100
    (torch 2.11) some rows were rounded differently at batch 5 than at batch 24, while the
    uncompiled steps kept every row's bits (bench/row_determinism.py; BENCHMARKS.md, decoding).
    """

    def __init__(self, stack, *, compiled: bool = False, graphs: Optional[bool] = None,
                 kv_block: int = FLEX_KV_BLOCK, kernel_config: Optional[KernelConfig] = None,
                 float_logits: bool = True):
        if stack.fast_kernel is None:
            raise ValueError("this stack decodes with the eager step (dropout, or attention)")
        if kv_block % 16 or kv_block < 16:
            raise ValueError(f"kv_block={kv_block} must be a positive multiple of 16")
        self.s, self.kv_block = stack, kv_block
        self.kernel = stack.fast_kernel
        self.kernel_config = kernel_config or default_config(stack.kv_fp8,
                                                             stack.heads // stack.kv_heads)
        if self.kernel == "triton":
            from cdray.decode.attention import unavailable_reason

            reason = unavailable_reason(stack.device)
            if reason:
                raise RuntimeError(reason)
        self.compiled = bool(compiled)
        # float_logits=False: the triton step returns logits in the model's dtype, for the fused
        # sampler, which widens them as it reads (an fp32 copy of [G, b, V] costs a step ~0.2 ms
        # on an H100 at batch 1536, and the sampler's four passes read twice the bytes)
        self.float_logits = bool(float_logits)
        self.graphs = stack.device.type == "cuda" if graphs is None else bool(graphs)
        if self.graphs and stack.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self._state: Optional[_State] = None

    def reset(self) -> None:
        """Forget buffers and graph: the cache they point into is being reallocated."""
        if self._state is not None and self._state.graph is not None:
            # the engine queues steps ahead: a replay may still be running on the graph and the
            # cache about to go
            torch.cuda.current_stream(self.s.device).synchronize()
        self._state = None

    def _prepare(self, b: int) -> _State:
        s, dev = self.s, self.s.device
        ids = torch.zeros(b, dtype=torch.long, device=dev)
        pos = torch.zeros(b, dtype=torch.long, device=dev)
        if self.kernel == "triton":
            return _State(batch=b, ids=ids, pos=pos, rows=torch.arange(b, device=dev),
                          kv_blocks=None, pos_flat=None, mask=None, per_member=False,
                          lengths=torch.ones(s.G * b, dtype=torch.int32, device=dev))
        if s.T % self.kv_block:
            raise ValueError(f"cache length {s.T} is not a multiple of kv_block={self.kv_block}")
        per_member = s.G * b * s.kv_heads > MAX_GRID_Y
        if b > max_batch(s.kv_heads):
            raise ValueError(f"batch {b} exceeds the flex step's {max_batch(s.kv_heads)} slots")
        n = b if per_member else s.G * b
        kv_blocks = torch.ones((n, 1, 1), dtype=torch.int32, device=dev)
        kv_indices = torch.arange(s.T // self.kv_block, dtype=torch.int32, device=dev)
        kv_indices = kv_indices.expand(n, 1, 1, -1).contiguous()
        pos_flat = torch.zeros(n, dtype=torch.long, device=dev)
        return _State(batch=b, ids=ids, pos=pos, rows=torch.arange(b, device=dev),
                      kv_blocks=kv_blocks, pos_flat=pos_flat,
                      mask=block_mask(kv_blocks, kv_indices, pos_flat, s.T, self.kv_block),
                      lengths=None, per_member=per_member)

    def __call__(self, ids: Tensor, positions: Tensor) -> Tensor:
        """Logits [G, b, V] (fp32, or the model's dtype from the triton step without float_logits)
        for ids, positions [b, 1], slot i being row i of the cache."""
        b = ids.shape[0]
        st = self._state
        if st is None or st.batch != b:
            st = self._state = self._prepare(b)
        st.ids.copy_(ids[:, 0])
        st.pos.copy_(positions[:, 0])
        if not self.graphs:
            return self._step(st)
        if st.graph is None:
            return self._capture(st)
        st.graph.replay()
        return st.out

    def _capture(self, st: _State) -> Tensor:
        # warm-up on a side stream (compilation, autotuning, library handles) as the CUDA graph
        # docs ask; the step is idempotent (it writes the same keys and values at the same
        # positions), so running it before the capture leaves the cache as one step would
        side = torch.cuda.Stream(device=self.s.device)
        side.wait_stream(torch.cuda.current_stream(self.s.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                out = self._step(st)
        torch.cuda.current_stream(self.s.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            st.out = self._step(st)
        st.graph = graph
        return out

    def _step(self, st: _State) -> Tensor:
        s, k_ = self.s, step_kernels(self.compiled)
        G, b, T = s.G, st.batch, s.T
        nh, nkv, hd = s.heads, s.kv_heads, s.head_dim
        pos = st.pos
        # attention inputs are updated in place: a replayed graph reads this step's positions
        if st.lengths is not None:
            st.lengths.copy_((pos + 1).to(torch.int32).repeat(G))  # both members: same rows
        else:
            reps = 1 if st.per_member else G
            st.kv_blocks.copy_((pos // self.kv_block + 1).to(torch.int32).repeat(reps)[:, None, None])
            st.pos_flat.copy_(pos.repeat(reps))
        if st.lengths is not None and not self.compiled:
            return self._fused_step(st)
        x = torch.stack([s.embed[g][st.ids] for g in range(G)])  # [G, b, H]
        freqs = pos.to(torch.float32)[:, None] * s.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        cos = emb.cos().to(s.dtype)[None, :, None]  # [1, b, 1, hd]
        sin = emb.sin().to(s.dtype)[None, :, None]
        options = {"kernel_options": {"SPLIT_KV": 1}} if s.device.type == "cuda" else {}
        for li, blk in enumerate(s.blocks):
            q, k, v = k_["pre"](x, blk["ln1"], blk["qkv"], cos, sin, s.eps, nh, nkv)
            s.write_kv(li, st.rows, pos, k.transpose(0, 1), v.transpose(0, 1))
            kc, vc = s.k_cache[li], s.v_cache[li]
            if st.lengths is not None:
                scales = ((s.k_scale[li].view(G * b, nkv, T), s.v_scale[li].view(G * b, nkv, T))
                          if s.kv_fp8 else (None, None))
                att = decode_attention(q.reshape(G * b, nh, hd), kc.view(G * b, nkv, T, hd),
                                       vc.view(G * b, nkv, T, hd), st.lengths, *scales,
                                       config=self.kernel_config)
            elif st.per_member:
                att = torch.stack([k_["flex"](q[g].reshape(b, nh, 1, hd), kc[g], vc[g],
                                              block_mask=st.mask, enable_gqa=nh != nkv, **options)
                                   for g in range(G)])
            else:
                att = k_["flex"](q.reshape(G * b, nh, 1, hd), kc.view(G * b, nkv, T, hd),
                                 vc.view(G * b, nkv, T, hd), block_mask=st.mask,
                                 enable_gqa=nh != nkv, **options)
            x = k_["post"](att.reshape(G, b, nh * hd), x, blk["o"], blk["ln2"], blk["gate_up"],
                           blk["down"], s.eps)
        return k_["final"](x, s.final_norm, s.lm_head, s.eps)

    def _fused_step(self, st: _State) -> Tensor:
        """The triton step: Triton kernels for RMSNorm, RoPE with the cache write, attention and
        the SwiGLU gate; the products stay in BLAS (ops.bmm)."""
        from cdray.decode.fused import rms_norm, rope_and_write, silu_mul

        s = self.s
        G, b, T = s.G, st.batch, s.T
        nh, nkv, hd = s.heads, s.kv_heads, s.head_dim
        x = torch.stack([s.embed[g][st.ids] for g in range(G)])  # [G, b, H]
        for li, blk in enumerate(s.blocks):
            kc, vc = s.k_cache[li], s.v_cache[li]
            ks, vs = (s.k_scale[li], s.v_scale[li]) if s.kv_fp8 else (None, None)
            qkv = bmm(rms_norm(x, blk["ln1"], s.eps), blk["qkv"])
            q = rope_and_write(qkv, st.pos, s.inv_freq, nh, nkv, kc, vc, ks, vs)
            att = decode_attention(q.view(G * b, nh, hd), kc.view(G * b, nkv, T, hd),
                                   vc.view(G * b, nkv, T, hd), st.lengths,
                                   *((ks.view(G * b, nkv, T), vs.view(G * b, nkv, T))
                                     if s.kv_fp8 else ()), config=self.kernel_config)
            x = bmm(att.view(G, b, nh * hd), blk["o"], residual=x)
            gate_up = bmm(rms_norm(x, blk["ln2"], s.eps), blk["gate_up"])
            x = bmm(silu_mul(gate_up), blk["down"], residual=x)
        logits = bmm(rms_norm(x, s.final_norm, s.eps), s.lm_head)
        return logits.float() if self.float_logits else logits
