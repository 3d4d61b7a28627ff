"""Same-shaped Llama models as one batched computation over a preallocated per-slot KV cache."""
from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from cdray.config.generation import ATTENTION
from cdray.decode.ops import M32, bmm, mix32, rms, rope

# attention reads a prefix of the cache: enough keys for the longest row, rounded up to a key
# step, and at least a floor. Keys past a row's position are masked to exact zeros, but kernels
# still sum in an order that can depend on the key count, so a row keeps its bits only across
# counts the kernels treat alike. Measured on CPU: SDPA's kernel for counts that agree mod 4
# past a warm-up region (multiples of 64 are safe), eager attention for every multiple of 4
# from 32 up (tests/test_decoding.py checks both, on two model shapes). Reading fewer keys is
# what makes a decode step cheaper: the cache is streamed from memory every step.
KEY_STEP, KEY_FLOOR = 64, 64
KEY_STEP_CPU_EAGER, KEY_FLOOR_CPU_EAGER = 8, 32
CACHE_LEN_STEP = 8  # cache lengths are rounded up to a multiple of this
# ATTENTION, how a decode step attends (dropout members always use "eager"; bench/decoding.py times them):
#   sdpa            torch's scaled_dot_product_attention, backend of torch's choosing
#   sdpa_efficient  the same, restricted to the memory-efficient kernel (math as fallback)
#   eager           matmul-softmax-matmul
#   auto            eager: on CPU it was 7% faster per decode step than SDPA (and takes the
#                   short key step); on CUDA torch picks cuDNN's flash kernel for masked
#                   one-query attention, which cost ~2.5 ms of host time per call on an H100
#                   (BENCHMARKS.md, decoding); AUTO_CUDA_KERNEL's fast step on CUDA for
#                   members without dropout
#   flex            decode steps through cdray.decode.fast_step (FlexAttention over each row's own
#                   cache blocks, a CUDA graph per batch on CUDA); prefill and dropout eager
#   triton          the same with cdray's Triton kernels (cdray.decode.kernels: attention that
#                   reads exactly each row's keys, and fused per-row pieces); on an H100 1.42x
#                   the flex step, and the only kernel that reads an fp8 cache
# KV_CACHE, how the cache is stored: "model" in the model's dtype; "fp8" as e4m3 values with a bf16
# scale per (row, kv head, position), half the bytes a decode step streams (bf16 models), read by
# the triton kernel directly and dequantized by every other path
# the decode kernel "auto" takes on CUDA (BENCHMARKS.md, decoding: GPU)
AUTO_CUDA_KERNEL = "triton"


def _sdpa_backends(kind: str):
    if kind != "sdpa_efficient":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _cache_len(max_len: int, step: int = CACHE_LEN_STEP) -> int:
    # the cache's full length is what a step reads once its longest row nears the end: a
    # multiple of 8 is a key count the kernels treat like the stepped ones (see KEY_STEP)
    return -(-max_len // step) * step


def _shape(cfg) -> tuple:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    rope_type = rope.get("rope_type", "default")
    return (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
            cfg.num_attention_heads, cfg.num_key_value_heads, head_dim, float(cfg.rms_norm_eps),
            float(theta), rope_type, cfg.hidden_act, bool(getattr(cfg, "attention_bias", False)),
            bool(getattr(cfg, "mlp_bias", False)))


def same_shape(a, b) -> bool:
    """Whether two Llama models (transformers modules or cdray.models.weights.LlamaWeights) can be
    stacked (identical shapes and hyper-parameters)."""
    return _shape(a.config) == _shape(b.config)


def _check_supported(model) -> None:
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ValueError(f"cdray's decoder runs Llama models only, got {getattr(cfg, 'model_type', None)!r}")
    s = _shape(cfg)
    if s[9] != "default" or s[10] != "silu" or s[11] or s[12]:
        raise ValueError("cdray's decoder needs default RoPE, SiLU and no biases (cdray's Llama shape)")


class StackedLlama:
    """G Llama models with identical shapes, weights stacked on a leading dim and run with bmm.

    The KV cache is per slot and preallocated ([G, B, kv_heads, T, head_dim] per layer): a row's
    token at position p lives at cache index p, so there is no padding inside the cache and a
    row's attention never looks at another row. A step attends over a masked cache prefix whose
    length is chosen so that a row's bits do not depend on how long its neighbours are (KEY_STEP).
    dropout[g] > 0 turns on attention dropout for member g (a DROP-p amateur) with masks drawn
    from a counter-based hash of (row seed, layer, head, query position, key position).
    """

    def __init__(self, models, *, dtype=torch.float32, device="cpu", dropout=None,
                 attention: str = "auto", kv_cache: str = "model"):
        models = list(models)
        for m in models:
            _check_supported(m)
        for m in models[1:]:
            if not same_shape(models[0], m):
                raise ValueError("models of a stack must have identical shapes")
        cfg = models[0].config
        (self.vocab, self.hidden, self.ffn, self.layers, self.heads, self.kv_heads, self.head_dim,
         self.eps, theta, *_rest) = _shape(cfg)
        self.G = len(models)
        self.dtype, self.device = dtype, torch.device(device)
        self.dropout = [float(p) for p in (dropout or [0.0] * self.G)]
        if attention not in ATTENTION:
            raise ValueError(f"unknown attention {attention!r} (one of {list(ATTENTION)})")
        self.attention = attention
        self.kv_fp8 = kv_cache == "fp8"
        if self.kv_fp8 and attention == "flex":
            raise ValueError("kv_cache 'fp8' needs attention 'triton' or 'auto', not 'flex'")
        if len(self.dropout) != self.G:
            raise ValueError("one dropout value per stacked model")

        def stack(*names: str, transpose: bool = False) -> Tensor:
            # a LlamaForCausalLM or a cdray.models.weights.LlamaWeights: tensors by transformers' names,
            # several concatenated along the output dim
            ws = [torch.cat([m.get_parameter(n).detach() for n in names]) for m in models]
            if transpose:
                ws = [w.t() for w in ws]
            return torch.stack(ws).to(device=self.device, dtype=dtype).contiguous()

        self.embed = stack("model.embed_tokens.weight")  # [G, V, H]
        self.final_norm = stack("model.norm.weight").unsqueeze(1)  # [G, 1, H]
        self.lm_head = stack("lm_head.weight", transpose=True)  # [G, H, V]
        self.blocks = []
        for i in range(self.layers):
            at = f"model.layers.{i}."
            self.blocks.append({
                "ln1": stack(at + "input_layernorm.weight").unsqueeze(1),
                "ln2": stack(at + "post_attention_layernorm.weight").unsqueeze(1),
                # [G, H, (heads + 2 kv_heads) * head_dim]
                "qkv": stack(*(at + f"self_attn.{p}_proj.weight" for p in "qkv"), transpose=True),
                "o": stack(at + "self_attn.o_proj.weight", transpose=True),
                # [G, H, 2F]
                "gate_up": stack(at + "mlp.gate_proj.weight", at + "mlp.up_proj.weight", transpose=True),
                "down": stack(at + "mlp.down_proj.weight", transpose=True),
            })
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32,
                                                      device=self.device) / self.head_dim))
        self.k_cache: list[Tensor] = []
        self.v_cache: list[Tensor] = []
        self.k_scale: list[Tensor] = []  # [G, B, kv_heads, T] per layer when kv_fp8
        self.v_scale: list[Tensor] = []
        self.T = 0
        self.fast_options: dict = {}  # keyword arguments of cdray.decode.fast_step.FastDecode
        self._fast = None

    @property
    def fast_kernel(self) -> str | None:
        """The attention kernel of decode steps through cdray.decode.fast_step ("flex" or "triton"),
        None when they run the eager step (see ATTENTION)."""
        if any(p > 0 for p in self.dropout):
            return None
        if self.attention in ("flex", "triton"):
            return self.attention
        if self.attention == "auto" and self.device.type == "cuda":
            return "triton" if self.kv_fp8 else AUTO_CUDA_KERNEL
        return None

    @property
    def fixed_batch(self) -> bool:
        """Whether decode steps must keep every slot: the flex step and compiled layers are
        compiled for one batch size (seconds per size). The triton step's kernels take any
        batch, so dropping finished slots only costs it a new CUDA graph (keep_slots)."""
        return self.fast_kernel == "flex" or (self.fast_kernel is not None
                                              and bool(self.fast_options.get("compiled")))

    def max_batch(self) -> int:
        """The most slots a decode step takes (the flex attention kernel's grid is bounded)."""
        if self.fast_kernel != "flex":
            return 2**62
        from cdray.decode.fast_step import max_batch

        return max_batch(self.kv_heads)

    # ------------------------------------------------------------ cache

    def _cache_step(self) -> int:
        if self.fast_kernel != "flex":
            return CACHE_LEN_STEP
        from cdray.decode.fast_step import FLEX_KV_BLOCK

        block = self.fast_options.get("kv_block", FLEX_KV_BLOCK)
        return math.lcm(CACHE_LEN_STEP, block)  # whole attention blocks

    def kv_bytes_per_row(self, max_len: int) -> int:
        T = _cache_len(max_len, self._cache_step())
        if self.kv_fp8:
            from cdray.decode.attention import SCALE_DTYPE

            per_head = self.head_dim + torch.tensor([], dtype=SCALE_DTYPE).element_size()
        else:
            per_head = self.head_dim * torch.tensor([], dtype=self.dtype).element_size()
        return 2 * self.G * self.layers * self.kv_heads * T * per_head

    def new_cache(self, batch: int, max_len: int) -> None:
        max_len = _cache_len(max_len, self._cache_step())
        if self._fast is not None:
            self._fast.reset()
        # drop the previous call's cache first: it would otherwise still be alive while the new
        # one is allocated (bench/decoding.py peaked at 72.8 GiB on an H200 where one cache of
        # batch 1536 x 448 positions is 47 GiB)
        self.k_cache, self.v_cache, self.k_scale, self.v_scale = [], [], [], []
        shape = (self.G, batch, self.kv_heads, max_len, self.head_dim)
        if self.kv_fp8:
            from cdray.decode.attention import FP8, SCALE_DTYPE

            def values():  # fp8 zeros through bytes: fill kernels may lack fp8
                return torch.zeros(shape, dtype=torch.uint8, device=self.device).view(FP8)

            self.k_cache = [values() for _ in range(self.layers)]
            self.v_cache = [values() for _ in range(self.layers)]
            self.k_scale = [torch.zeros(shape[:-1], dtype=SCALE_DTYPE, device=self.device)
                            for _ in range(self.layers)]
            self.v_scale = [torch.zeros(shape[:-1], dtype=SCALE_DTYPE, device=self.device)
                            for _ in range(self.layers)]
        else:
            self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                            for _ in range(self.layers)]
            self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                            for _ in range(self.layers)]
        self.T = max_len

    def keep_slots(self, slots: Tensor, width: int | None = None) -> None:
        """Rebuild the cache from the given slots (in that order), dropping finished rows, with
        `width` slots in all (default: as many as kept; more: empty slots after them)."""
        width = len(slots) if width is None else width

        def select(t: Tensor) -> Tensor:
            # through bytes: index kernels may lack fp8
            u = t.view(torch.uint8) if t.element_size() == 1 else t
            kept = u.index_select(1, slots)
            if width > len(slots):
                shape = list(kept.shape)
                shape[1] = width - len(slots)
                kept = torch.cat([kept, kept.new_zeros(shape)], dim=1)
            return kept.view(t.dtype)

        if self._fast is not None:
            self._fast.reset()  # its graph points into the cache being replaced
        # one layer at a time: the old cache is freed as the new one is built (the cache is
        # most of the memory it plans for)
        for caches in (self.k_cache, self.v_cache, self.k_scale, self.v_scale):
            for i, t in enumerate(caches):
                caches[i] = select(t)

    # ------------------------------------------------------------ forward

    def _dropout_keep(self, base: Tensor, layer: int, p: float) -> Tensor:
        # base [b, Q] hashes of (row seed, query position); result [b, kv, rep*Q, T]
        rep = self.heads // self.kv_heads
        heads = torch.arange(self.heads, device=base.device)
        h = mix32(base[:, None, :] ^ ((layer * 1_000_003 + heads[None, :, None] * 7919 + 1) & M32))
        keys = torch.arange(self.T, device=base.device)
        h = mix32(h[..., None] ^ ((keys * 0x9E3779B1) & M32))  # [b, heads, Q, T]
        u = h.to(torch.float32) * (1.0 / 4294967296.0)
        b, _, q, t = h.shape
        return (u >= p).reshape(b, self.kv_heads, rep * q, t)

    def _attend_dropout(self, q, kc, vc, bias, drop_base, layer, t_used) -> Tensor:
        # eager attention as HF computes it in train mode: dropout on the softmaxed weights
        G, b, nh, Q, hd = q.shape
        rep = nh // self.kv_heads
        qg = q.reshape(G, b, self.kv_heads, rep * Q, hd)
        att = torch.matmul(qg, kc.transpose(-1, -2)).float() * (1.0 / math.sqrt(hd)) + bias
        att = torch.softmax(att, dim=-1)
        for g, p in enumerate(self.dropout):
            if p > 0:
                keep = self._dropout_keep(drop_base, layer, p)[..., :t_used]
                att[g] = att[g] * keep / (1.0 - p)
        return torch.matmul(att.to(self.dtype), vc)  # [G, b, kv, rep*Q, hd]

    def write_kv(self, layer: int, row_idx: Tensor, positions: Tensor, k: Tensor, v: Tensor,
                 slots: Tensor | None = None, t_used: int | None = None):
        """Store keys and values [b, Q, G, kv_heads, hd] at cache[g, row_idx, head, positions];
        return the caches' first t_used positions of `slots` (all slots when None) in the
        model's dtype (an fp8 cache dequantized), or None when t_used is None."""
        kc, vc = self.k_cache[layer], self.v_cache[layer]
        # cache[g, slot, head, pos] <- value; advanced indices (slot, pos) move to the front
        if not self.kv_fp8:
            kc[:, row_idx, :, positions] = k
            vc[:, row_idx, :, positions] = v
        else:
            from cdray.decode.attention import dequantize, quantize

            for cache, scales, x in ((kc, self.k_scale[layer], k), (vc, self.v_scale[layer], v)):
                xq, xs = quantize(x)
                cache.view(torch.uint8)[:, row_idx, :, positions] = xq.view(torch.uint8)
                scales[:, row_idx, :, positions] = xs
        if t_used is None:
            return None
        pick = slice(None) if slots is None else slots
        if not self.kv_fp8:
            return kc[:, pick, :, :t_used], vc[:, pick, :, :t_used]

        def read(cache: Tensor, scales: Tensor) -> Tensor:
            values = cache.view(torch.uint8)[:, pick, :, :t_used].view(cache.dtype)
            return dequantize(values, scales[:, pick, :, :t_used], self.dtype)

        return read(kc, self.k_scale[layer]), read(vc, self.v_scale[layer])

    @torch.inference_mode()
    def forward(self, ids: Tensor, positions: Tensor, slots: Tensor | None = None,
                last: Tensor | None = None, seeds: Tensor | None = None,
                max_position: int | None = None) -> Tensor:
        """Logits [G, b, V] (fp32; a fast step built with float_logits=False gives the model's
        dtype) at query index `last` (default: the final one) of each row.

        ids, positions: [b, Q] tokens and their true positions; slots: [b] cache slots they
        belong to (None: all slots in order, the decode step). Keys at cache index > the query's
        position are masked, so stale entries of a reused slot are never seen.
        seeds: [b] int64 row seeds, needed only when a member has dropout.
        max_position: positions.max() when the caller knows it (reading it from a GPU waits for
        every queued step).
        """
        G, (b, Q) = self.G, ids.shape
        use_dropout = any(p > 0 for p in self.dropout)
        if self.fast_kernel and slots is None and Q == 1 and last is None:
            if self._fast is None:
                from cdray.decode.fast_step import FastDecode

                self._fast = FastDecode(self, **self.fast_options)
            return self._fast(ids, positions)
        H, nh, nkv, hd = self.hidden, self.heads, self.kv_heads, self.head_dim
        rep = nh // nkv
        x = torch.stack([self.embed[g][ids] for g in range(G)]).reshape(G, b * Q, H)
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq  # [b, Q, hd/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos = emb.cos().to(self.dtype)[None, :, None]  # [1, b, 1, Q, hd]
        sin = emb.sin().to(self.dtype)[None, :, None]
        # prefill: the fast steps' is eager (so "auto" and its kernel's name prefill alike)
        kind = "eager" if self.attention in ("auto", "flex", "triton") else self.attention
        eager = use_dropout or kind == "eager"
        # attend over a prefix of the cache long enough for every row, in key steps, so a row's
        # result does not depend on its neighbours' lengths (see KEY_STEP)
        step, floor = ((KEY_STEP_CPU_EAGER, KEY_FLOOR_CPU_EAGER) if eager and self.device.type == "cpu"
                       else (KEY_STEP, KEY_FLOOR))
        if max_position is None:
            max_position = int(positions.max())
        t_used = min(self.T, max(floor, -(-(max_position + 1) // step) * step))
        keys = torch.arange(t_used, device=ids.device)
        allowed = keys[None, None, :] <= positions[:, :, None]  # [b, Q, t]
        if eager:
            # grouped-query layout: query heads sharing a kv head sit along the query axis
            allowed_g = allowed[:, None, None].expand(b, nkv, rep, Q, t_used).reshape(b, nkv, rep * Q, t_used)
            bias = torch.zeros(allowed_g.shape, dtype=torch.float32, device=ids.device)
            bias.masked_fill_(~allowed_g, -math.inf)
        else:
            sdpa_mask = allowed[:, None].repeat(G, 1, 1, 1)  # [G*b, 1, Q, t]
        rows = torch.arange(b, device=ids.device) if slots is None else slots
        row_idx = rows[:, None].expand(b, Q)
        drop_base = None
        if use_dropout:
            if seeds is None:
                raise ValueError("a stacked model with dropout needs row seeds")
            lo, hi = seeds & M32, (seeds >> 32) & M32
            drop_base = mix32(mix32(lo ^ mix32(hi))[:, None] ^ (positions & M32))
        for li, blk in enumerate(self.blocks):
            hidden = rms(x, blk["ln1"], self.eps)
            qkv = bmm(hidden, blk["qkv"]).reshape(G, b, Q, nh + 2 * nkv, hd).transpose(2, 3)
            qk = rope(qkv[:, :, :nh + nkv], cos, sin)  # queries and keys in one pass
            q, k = qk[:, :, :nh], qk[:, :, nh:]  # [G, b, nh, Q, hd], [G, b, nkv, Q, hd]
            v = qkv[:, :, nh + nkv:]
            kc, vc = self.write_kv(li, row_idx, positions, k.permute(1, 3, 0, 2, 4),
                                   v.permute(1, 3, 0, 2, 4), slots, t_used)
            if eager:
                out = self._attend_dropout(q, kc, vc, bias, drop_base, li, t_used)
            else:
                with _sdpa_backends(kind):
                    out = torch.nn.functional.scaled_dot_product_attention(
                        q.reshape(G * b, nh, Q, hd), kc.reshape(G * b, nkv, t_used, hd),
                        vc.reshape(G * b, nkv, t_used, hd), attn_mask=sdpa_mask, enable_gqa=rep > 1)
            out = out.reshape(G, b, nh, Q, hd).transpose(2, 3).reshape(G, b * Q, nh * hd)
            x = bmm(out, blk["o"], residual=x)
            hidden = rms(x, blk["ln2"], self.eps)
            gate, up = bmm(hidden, blk["gate_up"]).chunk(2, dim=-1)
            x = bmm(torch.nn.functional.silu(gate) * up, blk["down"], residual=x)
        x = x.reshape(G, b, Q, H)
        if last is None:
            x = x[:, :, -1]
        else:
            x = x[:, torch.arange(b, device=ids.device), last]
        x = rms(x, self.final_norm, self.eps)
        return bmm(x, self.lm_head).float()
